"""Tool calling, structured output and constrained answers through the chat model (scripted).

Scripted models write known text, so every expectation below is written down by hand: what the
script says, what the grammar forces when the script strays, and where each part must land.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_spthink import ChatSpeculativeThinking, SpeculativeThinkingConfig
from langchain_spthink.backends.remote import RemoteBackend
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.callbacks import SpeculativeThinkingCallbackHandler
from langchain_spthink.engine.events import DelegationEvent
from langchain_spthink.errors import InvalidRequestError


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def weather(city: str) -> str:
    """Weather in a city."""
    return "sunny"


class Person(BaseModel):
    """A person."""

    name: str = Field(max_length=10)
    age: int = Field(ge=0, le=150)


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


CALL = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'


def solo(script: list[str], **kw: Any) -> tuple[ChatSpeculativeThinking, ScriptedBackend]:
    backend = ScriptedBackend(script, name="fake")
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 120)
    return ChatSpeculativeThinking(small_model=backend, large_model=backend, mode="small", **kw), (
        backend
    )


def streamed(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def calls(message: AIMessage) -> list[tuple[str, dict[str, Any]]]:
    return [(c["name"], c["args"]) for c in message.tool_calls]


# ------------------------------------------------------------------------- auto
def test_a_scripted_call_comes_back_as_tool_calls_in_invoke_and_stream() -> None:
    model, _ = solo([f"I will add them. {CALL}"])
    bound = model.bind_tools([add])
    result = bound.invoke("2+3?")
    assert result.content == "I will add them."
    assert calls(result) == [("add", {"a": 2, "b": 3})]
    assert result.tool_calls[0]["id"].startswith("call_")
    assert result.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream("2+3?"))
    assert all(not c.tool_call_chunks for c in chunks if c.content)  # text chunks come first
    full = streamed(chunks)
    assert full.content == result.content and calls(full) == calls(result)
    assert [c["index"] for c in full.tool_call_chunks] == [0]


async def test_async_paths_give_the_same_tool_calls() -> None:
    model, _ = solo([f"Two calls. {CALL}\n{CALL.replace('2', '7')}"])
    bound = model.bind_tools([add])
    result = await bound.ainvoke("?")
    assert calls(result) == [("add", {"a": 2, "b": 3}), ("add", {"a": 7, "b": 3})]
    chunks = [c async for c in bound.astream("?")]
    assert calls(streamed(chunks)) == calls(result)
    assert [c["index"] for c in streamed(chunks).tool_call_chunks] == [0, 1]


def test_malformed_call_text_becomes_an_invalid_tool_call_and_nothing_is_lost() -> None:
    broken = '<tool_call>{"name": "add", "arguments": {"a": 2, "b":</tool_call>'
    model, _ = solo([f"Trying. {broken} Sorry."])
    result = model.bind_tools([add]).invoke("2+3?")
    assert result.content == "Trying. Sorry."
    assert result.tool_calls == []
    (bad,) = result.invalid_tool_calls
    assert bad["name"] == "add" and bad["args"] == '{"name": "add", "arguments": {"a": 2, "b":'
    assert "not valid JSON" in (bad["error"] or "")
    assert result.response_metadata["finish_reason"] == "stop"


def test_without_tools_or_with_tool_choice_none_the_text_is_not_parsed() -> None:
    model, _ = solo([f"Text {CALL}"])
    assert model.invoke("?").content == f"Text {CALL}"
    none = model.bind_tools([add], tool_choice="none").invoke("?")
    assert none.content == f"Text {CALL}" and none.tool_calls == []


def test_tools_reach_a_backend_that_renders_chat_itself() -> None:
    model, backend = solo(["Fine."])
    model.bind_tools([add, weather]).invoke("?")
    assert backend.last_prompt.startswith("tools: add, weather")


# ------------------------------------------------------------------------- forced
def test_a_forced_call_is_decoded_under_the_grammar_even_when_the_script_is_prose() -> None:
    model, _ = solo(["Well, five I suppose."])
    result = model.bind_tools([add, weather], tool_choice="add").invoke("2+3?")
    assert result.content == "" and result.invalid_tool_calls == []
    ((name, args),) = calls(result)
    assert name == "add" and set(args) == {"a", "b"}
    assert all(isinstance(v, int) for v in args.values())
    result = model.bind_tools([add, weather], tool_choice="weather").invoke("?")
    assert [n for n, _ in calls(result)] == ["weather"]


def test_a_forced_call_keeps_what_the_script_writes_when_it_fits() -> None:
    model, _ = solo([CALL])
    result = model.bind_tools([add, weather], tool_choice="any").invoke("2+3?")
    assert calls(result) == [("add", {"a": 2, "b": 3})]
    assert result.response_metadata["spthink"]["stop_reason"] == "eos"


def test_a_forced_call_with_a_remote_writer_is_refused_clearly() -> None:
    remote = RemoteBackend(
        "http://127.0.0.1:9/v1", "m", tokenizer=ScriptedBackend(["x"]), max_retries=0
    )
    model = ChatSpeculativeThinking(small_model=remote, large_model=remote, mode="large")
    with pytest.raises(InvalidRequestError, match="needs a local model"):
        model.bind_tools([add], tool_choice="any").invoke("?")


def test_bad_tool_choice_fails_at_bind_time() -> None:
    model, _ = solo(["x"])
    with pytest.raises(InvalidRequestError, match="not bound"):
        model.bind_tools([add], tool_choice="mul")


# ------------------------------------------------------------------ structured output
@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize("schema", [Person, PersonDict, Person.model_json_schema()])
def test_structured_output_round_trip(method: str, schema: Any) -> None:
    name = "Person" if schema is not PersonDict else "PersonDict"
    script = (
        f'<tool_call>{{"name": "{name}", "arguments": {{"name": "Ann", "age": 31}}}}</tool_call>'
        if method == "function_calling"
        else '{"name": "Ann", "age": 31}'
    )
    model, _ = solo([script])
    result = model.with_structured_output(schema, method=method).invoke("Who?")  # type: ignore[arg-type]
    if schema is Person:
        assert result == Person(name="Ann", age=31)
    else:
        assert result == {"name": "Ann", "age": 31}


def test_structured_output_forces_the_schema_on_a_prose_script() -> None:
    model, _ = solo(["I cannot say who that is."])
    for method in ("function_calling", "json_schema", "json_mode"):
        result = model.with_structured_output(Person, method=method).invoke("Who?")  # type: ignore[arg-type]
        assert isinstance(result, Person)


def test_include_raw_reports_the_parsing_error_of_a_truncated_answer() -> None:
    model, _ = solo(['{"name": "Ann", "age": 31}'], max_tokens=3)
    out = model.with_structured_output(Person, method="json_schema", include_raw=True).invoke("?")
    assert isinstance(out["raw"], AIMessage)
    assert out["raw"].response_metadata["finish_reason"] == "length"
    assert out["parsed"] is None and out["parsing_error"] is not None
    ok, _ = solo(['<tool_call>{"name": "Person", "arguments": {"name": "Ann", "age": 31}}'])
    out = ok.with_structured_output(Person, include_raw=True).invoke("?")
    assert out["parsed"] == Person(name="Ann", age=31) and out["parsing_error"] is None
    assert calls(out["raw"]) == [("Person", {"name": "Ann", "age": 31})]


def test_json_mode_without_a_schema_gives_a_dict() -> None:
    model, _ = solo(['{"anything": [1, 2]}'])
    assert model.with_structured_output(None, method="json_mode").invoke("?") == {
        "anything": [1, 2]
    }


def test_structured_output_argument_errors() -> None:
    model, _ = solo(["x"])
    with pytest.raises(InvalidRequestError, match="needs a schema"):
        model.with_structured_output(None)
    with pytest.raises(InvalidRequestError, match="method must be"):
        model.with_structured_output(Person, method="xml")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="unknown argument"):
        model.with_structured_output(Person, colour="red")
    with pytest.raises(InvalidRequestError, match="response_format"):
        model.invoke("?", response_format={"type": "yaml"})


def test_json_schema_answers_carry_the_schema_in_the_system_prompt() -> None:
    model, backend = solo(['{"name": "Ann", "age": 31}'])
    model.with_structured_output(Person, method="json_schema").invoke("Who?")
    assert backend.last_prompt.startswith("system: Answer with one JSON object")
    assert '"age"' in backend.last_prompt


# --------------------------------------------------------------- the next turn's prompt
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)


def test_tool_results_go_back_into_a_template_without_tool_support() -> None:
    model, backend = solo(["It is 5."], small_chat_template=CHATML)
    history = [
        HumanMessage("2+3?"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        ToolMessage("5", tool_call_id="c1"),
    ]
    assert model.bind_tools([add]).invoke(history).content == "It is 5."
    session = backend.sessions[-1]
    prompt = backend.decode(session.ids[: session.prompt_len])
    assert prompt.startswith("<|im_start|>system\nYou can call the following tools.")
    assert (
        "<|im_start|>user\n2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response name="add">\n5\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant"  # (Jinja drops the template's final newline)
    ) in prompt


# --------------------------------------------------- speculative thinking in tool use
THINK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: <think>\n"
)


class Recorder(SpeculativeThinkingCallbackHandler):
    def __init__(self) -> None:
        self.delegations: list[DelegationEvent] = []

    def on_delegation(self, event: DelegationEvent, **kwargs: Any) -> None:
        self.delegations.append(event)


def thinking_pair(answer: str) -> ChatSpeculativeThinking:
    """A reasoning pair: the prompt opens <think>; the small draft after the first paragraph
    backtracks ("Wait"), so the large model writes that step (char tokenizers: ids hand off)."""
    small = ScriptedBackend(
        [
            "I need 2+3.\n\n",
            "Wait, is it <tool_call>not this</tool_call>?\n\n",
            "</think>" + answer,
        ],
        tokenizer="char",
        name="small",
    )
    large = ScriptedBackend(
        ["I need 2+3.\n\n", "Yes, use the add tool.\n\n", "</think>" + answer],
        tokenizer="char",
        name="large",
    )
    return ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        small_chat_template=THINK_TEMPLATE,
        large_chat_template=THINK_TEMPLATE,
        config=SpeculativeThinkingConfig(draft_tokens=40),
        temperature=0,
        max_tokens=400,
    )


@pytest.mark.parametrize("tool_choice", ["auto", "add"])
def test_delegations_happen_in_the_reasoning_and_the_call_comes_from_the_answer(
    tool_choice: str,
) -> None:
    model = thinking_pair(CALL)
    recorder = Recorder()
    bound = model.bind_tools([add], tool_choice=tool_choice)
    result = bound.invoke("2+3?", config={"callbacks": [recorder]})
    assert calls(result) == [("add", {"a": 2, "b": 3})] and result.invalid_tool_calls == []
    assert result.content == ""
    reasoning = result.additional_kwargs["reasoning_content"]
    assert reasoning == "I need 2+3.\n\nYes, use the add tool."
    assert [d.kind for d in recorder.delegations] == ["reflection"]
    assert recorder.delegations[0].small_draft.startswith("Wait, is it <tool_call>")
    meta = result.response_metadata["spthink"]
    assert meta["delegations"] and meta["large_tokens"] > 0
    full = streamed(list(bound.stream("2+3?")))
    assert calls(full) == calls(result) and full.additional_kwargs["reasoning_content"] == reasoning


def test_the_grammar_starts_after_the_reasoning() -> None:
    # The script's answer is prose: forced, the grammar turns it into a call; the reasoning
    # (with its delegation) is untouched.
    model = thinking_pair("Just add them.")
    result = model.bind_tools([add], tool_choice="any").invoke("2+3?")
    assert result.additional_kwargs["reasoning_content"] == "I need 2+3.\n\nYes, use the add tool."
    ((name, args),) = calls(result)
    assert name == "add" and set(args) == {"a", "b"}
    assert result.response_metadata["spthink"]["delegations"]


def test_a_structured_answer_after_speculative_reasoning() -> None:
    model = thinking_pair('{"name": "Ann", "age": 31}')
    out = model.with_structured_output(Person, method="json_schema", include_raw=True).invoke("?")
    assert out["parsed"] == Person(name="Ann", age=31)
    assert out["raw"].content == '{"name": "Ann", "age": 31}'
    assert json.loads(out["raw"].content) == {"name": "Ann", "age": 31}
