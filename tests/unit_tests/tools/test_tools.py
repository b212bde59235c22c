"""Pure helpers of tool calling: conversion, tool_choice, prompt rendering and answer parsing."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_spthink.errors import InvalidRequestError
from langchain_spthink.tools.parsing import (
    ToolCallStream,
    finalize_tool_calls,
    generate_strict,
    parse_tool_calls,
)
from langchain_spthink.tools.schema import (
    ToolChoice,
    format_tool_call,
    native_tools,
    prepare_messages,
    resolve_tool_choice,
    to_openai_tools,
    tools_system_prompt,
)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Weather(BaseModel):
    """Weather at a place."""

    city: str = Field(description="the city")


class Move(TypedDict):
    """A chess move."""

    square: str


def lookup(term: str, limit: int = 3) -> str:
    """Look a term up.

    Args:
        term: What to look up.
        limit: How many hits.
    """
    return term


RAW = {
    "type": "function",
    "function": {
        "name": "mul",
        "description": "Multiply.",
        "parameters": {"type": "object", "properties": {"x": {"type": "number"}}},
    },
}


def ids() -> Any:
    counter = itertools.count()
    return lambda: f"id{next(counter)}"


# ------------------------------------------------------------------------- conversion
def test_every_kind_of_tool_becomes_an_openai_function() -> None:
    tools = to_openai_tools([add, Weather, Move, lookup, RAW, RAW["function"]])
    names = [t["function"]["name"] for t in tools]
    assert names == ["add", "Weather", "Move", "lookup", "mul", "mul"]
    assert all(t["type"] == "function" for t in tools)
    assert tools[0]["function"]["parameters"]["required"] == ["a", "b"]
    assert tools[1]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert tools[3]["function"]["parameters"]["properties"]["limit"]["type"] == "integer"


def test_a_tool_without_parameters_gets_an_empty_object_schema() -> None:
    (converted,) = to_openai_tools([{"name": "ping", "description": "Ping."}])
    assert converted["function"]["parameters"] == {"type": "object", "properties": {}}


def test_unconvertible_tools_raise_naming_the_index() -> None:
    with pytest.raises(InvalidRequestError, match=r"tools\[1\]"):
        to_openai_tools([add, 42])


# ------------------------------------------------------------------------- tool_choice
TOOLS = to_openai_tools([add, Weather])


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, ToolChoice("auto", ("add", "Weather"))),
        ("auto", ToolChoice("auto", ("add", "Weather"))),
        ("none", ToolChoice("none", ())),
        ("any", ToolChoice("required", ("add", "Weather"))),
        ("required", ToolChoice("required", ("add", "Weather"))),
        (True, ToolChoice("required", ("add", "Weather"))),
        ("Weather", ToolChoice("required", ("Weather",))),
        ({"type": "function", "function": {"name": "add"}}, ToolChoice("required", ("add",))),
        ({"name": "add"}, ToolChoice("required", ("add",))),
        ({"type": "any"}, ToolChoice("required", ("add", "Weather"))),
    ],
)
def test_tool_choice_values(choice: Any, expected: ToolChoice) -> None:
    assert resolve_tool_choice(choice, TOOLS) == expected


@pytest.mark.parametrize(
    ("choice", "message"),
    [("mul", "'mul'.*not bound"), (3, "tool_choice must be"), ({"type": "x"}, "names no tool")],
)
def test_bad_tool_choice_raises(choice: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        resolve_tool_choice(choice, TOOLS)


def test_forcing_a_call_without_tools_raises() -> None:
    with pytest.raises(InvalidRequestError, match="no tools are bound"):
        resolve_tool_choice("any", [])


# ------------------------------------------------------------------------- rendering
SMOL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
)
QWEN_LIKE = "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}{% endif %}..."


def test_native_tools_detects_templates_that_read_tools() -> None:
    assert native_tools(QWEN_LIKE)
    assert not native_tools(SMOL_TEMPLATE)
    assert native_tools(None)  # the backend renders chat itself: it gets the tools


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+3 and 1+1?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2}}},
            {"id": "c2", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}},
        ],
    },
    {"role": "tool", "content": "5", "tool_call_id": "c1", "name": "add"},
    {"role": "tool", "content": "2", "tool_call_id": "c2", "name": "add"},
]


def test_non_native_prompt_rewrites_the_history_and_describes_the_tools() -> None:
    choice = resolve_tool_choice("auto", TOOLS)
    chat, template_tools = prepare_messages(HISTORY, TOOLS, choice, native=False)
    assert template_tools is None
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    system = chat[0]["content"]
    assert system.startswith("Be brief.\n\n")
    assert json.dumps(TOOLS[0]["function"]) in system and "<tool_call>" in system
    assert chat[2]["content"] == (
        '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>\n'
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    )
    assert "tool_calls" not in chat[2]
    # Consecutive results share one user turn, each named.
    assert chat[3]["content"] == (
        '<tool_response name="add">\n5\n</tool_response>\n<tool_response name="add">\n2\n'
        "</tool_response>"
    )
    assert HISTORY[2]["tool_calls"]  # the input is not modified


def test_native_prompt_keeps_the_history_and_hands_the_tools_to_the_template() -> None:
    choice = resolve_tool_choice("Weather", TOOLS)
    chat, template_tools = prepare_messages(HISTORY, TOOLS, choice, native=True)
    assert chat == HISTORY
    assert template_tools == [TOOLS[1]]  # a forced tool: only it is offered


def test_tool_choice_none_offers_no_tools_but_still_rewrites_the_history() -> None:
    choice = resolve_tool_choice("none", TOOLS)
    chat, template_tools = prepare_messages(HISTORY, TOOLS, choice, native=False)
    assert template_tools is None
    assert chat[0]["content"] == "Be brief."
    assert chat[2]["content"].startswith("<tool_call>")


def test_extra_system_text_creates_a_system_message_when_there_is_none() -> None:
    chat, _ = prepare_messages(
        [{"role": "user", "content": "hi"}],
        None,
        ToolChoice("auto", ()),
        native=True,
        extra_system="Answer in JSON.",
    )
    assert chat == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "hi"},
    ]


def test_system_prompt_says_when_a_call_is_forced() -> None:
    assert "Now call the tool add." in tools_system_prompt(TOOLS, ToolChoice("required", ("add",)))
    assert "Now call one of the tools." in tools_system_prompt(
        TOOLS, ToolChoice("required", ("add", "Weather"))
    )
    auto = tools_system_prompt(TOOLS, ToolChoice("auto", ("add", "Weather")))
    assert "answer directly" in auto


# ------------------------------------------------------------------------- parsing
NAMES = ("add", "Weather")


def call(name: str, args: dict[str, Any]) -> str:
    return format_tool_call(name, args)


def test_plain_text_is_content() -> None:
    parsed = parse_tool_calls("The answer is 5.", NAMES, new_id=ids())
    assert parsed.content == "The answer is 5." and not parsed.tool_calls


def test_one_tagged_call_with_text_before_it() -> None:
    parsed = parse_tool_calls("Let me add.\n" + call("add", {"a": 2, "b": 3}), NAMES, new_id=ids())
    assert parsed.content == "Let me add."
    assert parsed.tool_calls == [
        {"name": "add", "args": {"a": 2, "b": 3}, "id": "id0", "type": "tool_call"}
    ]
    assert parsed.invalid_tool_calls == []


def test_several_calls_and_nested_json() -> None:
    nested = {"city": "Paris", "opts": {"units": ["C", "F"], "deep": {"x": [1, {"y": None}]}}}
    text = call("Weather", nested) + "\n" + call("add", {"a": 1, "b": 1}) + " done"
    parsed = parse_tool_calls(text, NAMES, new_id=ids())
    assert [c["name"] for c in parsed.tool_calls] == ["Weather", "add"]
    assert parsed.tool_calls[0]["args"] == nested
    assert [c["id"] for c in parsed.tool_calls] == ["id0", "id1"]
    assert parsed.content == "done"


def test_a_list_inside_one_block_and_alternative_keys() -> None:
    block = json.dumps(
        [
            {"name": "add", "arguments": {"a": 1, "b": 2}},
            {"name": "Weather", "parameters": {"city": "Rome"}},
            {"name": "add", "arguments": json.dumps({"a": 3, "b": 4})},
            {"type": "function", "function": {"name": "add", "arguments": "{}"}},
        ]
    )
    parsed = parse_tool_calls(f"<tool_call>{block}</tool_call>", NAMES, new_id=ids())
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("Weather", {"city": "Rome"}),
        ("add", {"a": 3, "b": 4}),
        ("add", {}),
    ]


def test_plain_json_answers_naming_a_bound_tool_are_calls() -> None:
    for text in (
        '{"name": "add", "arguments": {"a": 2, "b": 2}}',
        '```json\n[{"name": "add", "arguments": {"a": 2, "b": 2}}]\n```',
    ):
        parsed = parse_tool_calls(text, NAMES, new_id=ids())
        assert parsed.content == ""
        assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("add", {"a": 2, "b": 2})]


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": 4}',  # JSON, but not a call
        '{"name": "mul", "arguments": {}}',  # names no bound tool
        '{"name": "add", "arguments": {}, "note": "x"}',  # has other keys
        "[1, 2]",
    ],
)
def test_other_json_answers_stay_text(text: str) -> None:
    parsed = parse_tool_calls(text, NAMES, new_id=ids())
    assert parsed.content == text and not parsed.tool_calls and not parsed.invalid_tool_calls


def test_without_bound_names_plain_json_is_never_a_call() -> None:
    text = '{"name": "add", "arguments": {"a": 2}}'
    assert parse_tool_calls(text, (), new_id=ids()).content == text


@pytest.mark.parametrize(
    ("text", "name", "error"),
    [
        ('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>', "add", "not valid JSON"),
        ('<tool_call>{"name": "add", "arguments": {"a": 1}', "add", "not valid JSON"),
        ("<tool_call>add(1, 2)</tool_call>", None, "not valid JSON"),
        ('<tool_call>{"arguments": {"a": 1}}</tool_call>', None, 'no "name"'),
        ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', "add", "not a JSON object"),
        ('<tool_call>"add"</tool_call>', None, "must be a JSON object"),
        ("<tool_call>[]</tool_call>", None, "empty"),
        ("<tool_call>", None, "empty"),
    ],
)
def test_malformed_calls_become_invalid_calls_keeping_the_text(
    text: str, name: str | None, error: str
) -> None:
    parsed = parse_tool_calls("Sure. " + text, NAMES, new_id=ids())
    assert parsed.content == "Sure."
    assert parsed.tool_calls == []
    (bad,) = parsed.invalid_tool_calls
    assert bad["name"] == name and error in (bad["error"] or "")
    inner = text.removeprefix("<tool_call>").removesuffix("</tool_call>")
    assert bad["args"] in (inner, json.dumps([1, 2]))


def test_an_unclosed_last_call_with_complete_json_counts() -> None:
    parsed = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1}}', NAMES)
    assert [(c["name"], c["args"]) for c in parsed.tool_calls] == [("add", {"a": 1})]


def test_a_valid_and_an_invalid_call_side_by_side() -> None:
    text = "<tool_call>oops</tool_call>" + call("add", {"a": 1})
    parsed = parse_tool_calls(text, NAMES, new_id=ids())
    assert [c["id"] for c in parsed.invalid_tool_calls] == ["id0"]
    assert [c["id"] for c in parsed.tool_calls] == ["id1"]


def test_partial_tag_at_the_end_is_text() -> None:
    assert parse_tool_calls("x <tool_ca", NAMES).content == "x <tool_ca"


ANSWERS = [
    "Hello world.",
    "Let me add.\n" + call("add", {"a": 2, "b": 3}) + "\nThat is it.",
    call("Weather", {"city": "Oslo"}) + call("add", {"a": 0, "b": 0}),
    '{"name": "add", "arguments": {"a": 7, "b": 8}}',
    '{"result": [1, 2, 3]}',
    "  spaced   text  \n",
    '<tool_call>{"name": "add", "arguments": {"a": 1',
    "<tool_call>nonsense</tool_call> and after",
]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ANSWERS), st.lists(st.integers(1, 12), min_size=1, max_size=40))
def test_streaming_in_any_pieces_equals_parsing_the_whole(text: str, cuts: list[int]) -> None:
    whole = parse_tool_calls(text, NAMES, new_id=ids())
    stream = ToolCallStream(NAMES, ids())
    pieces, at = [], 0
    for n in itertools.cycle(cuts):
        if at >= len(text):
            break
        pieces += stream.feed(text[at : at + n])
        at += n
    pieces += stream.flush()
    assert "".join(p[1] for p in pieces if p[0] == "text") == whole.content
    calls = [p[1] for p in pieces if p[0] == "call"]
    assert [c for c in calls if c["type"] == "tool_call"] == whole.tool_calls
    assert [c for c in calls if c["type"] == "invalid_tool_call"] == whole.invalid_tool_calls


def test_text_streams_out_before_a_call_and_the_call_is_held_until_closed() -> None:
    stream = ToolCallStream(NAMES, ids())
    assert stream.feed("I will add") == [("text", "I will add")]
    assert stream.feed(" now. <tool") == [("text", " now.")]
    assert stream.feed('_call>{"name": "add", "argu') == []
    assert stream.feed('ments": {}}</tool_call>') == [
        ("call", {"name": "add", "args": {}, "id": "id0", "type": "tool_call"})
    ]
    assert stream.flush() == []


# ------------------------------------------------------------- strict final tool calls
def chunk(**kw: Any) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=kw.pop("content", ""), **kw))


def test_streamed_chunks_are_repaired_by_langchain_but_not_in_the_final_reply() -> None:
    parts = [
        chunk(content="Sure."),
        chunk(tool_call_chunks=[{"name": "add", "args": '{"a": 1', "id": "c0", "index": 0}]),
        chunk(tool_call_chunks=[{"name": "add", "args": '{"b": 2}', "id": "c1", "index": 1}]),
        chunk(tool_call_chunks=[{"name": None, "args": '{"b": 2}', "id": "c2", "index": 2}]),
    ]
    lenient = parts[0].message + parts[1].message + parts[2].message
    assert lenient.tool_calls[0]["args"] == {"a": 1}  # LangChain's partial-JSON repair
    result = generate_strict(parts)
    message = result.generations[0].message
    assert message.content == "Sure."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("add", {"b": 2})]
    assert [(c["id"], c["args"]) for c in message.invalid_tool_calls] == [
        ("c0", '{"a": 1'),
        ("c2", '{"b": 2}'),
    ]
    assert "not valid JSON" in (message.invalid_tool_calls[0]["error"] or "")
    assert 'no "name"' in (message.invalid_tool_calls[1]["error"] or "")


def test_finalize_without_tool_chunks_is_langchains_conversion() -> None:
    message = finalize_tool_calls(AIMessageChunk(content="hi"))
    assert type(message).__name__ == "AIMessage" and message.content == "hi"


def test_generate_strict_needs_chunks() -> None:
    with pytest.raises(ValueError, match="No generations"):
        generate_strict([])


def test_whitespace_around_calls() -> None:
    calls = call("add", {"a": 1}) + "\n" + call("add", {"a": 2})
    text = "Let me add.\n" + calls + "\nThat is it.\n"
    assert parse_tool_calls(text, NAMES).content == "Let me add.\nThat is it."
    assert parse_tool_calls(call("add", {}) + "\n  Done. ", NAMES).content == "Done."
    # Without calls the answer is untouched.
    assert parse_tool_calls("  spaced   text  \n", NAMES).content == "  spaced   text  \n"
    assert parse_tool_calls(' {"result": 1} ', NAMES).content == ' {"result": 1} '
