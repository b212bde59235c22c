"""The LangGraph ReAct agent and delegation streaming, on scripted models (known outputs)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph

from langchain_spthink import ChatSpeculativeThinking, DelegationEvent
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.errors import InvalidRequestError
from langchain_spthink_integrations.langgraph import (
    GraphStreamItem,
    astream_with_delegations,
    create_spthink_agent,
    model_calls_this_turn,
    stream_with_delegations,
)
from langchain_spthink_integrations.math_tools import make_calculator_tool


def call(expression: str, id: str) -> dict[str, Any]:
    return {"name": "calculator", "args": {"expression": expression}, "id": id, "type": "tool_call"}


class ToolScript(BaseChatModel):
    """Answers with the next scripted message; records what each call saw."""

    responses: list[AIMessage]
    calls: list[dict[str, Any]] = []

    @property
    def _llm_type(self) -> str:
        return "tool-script"

    def bind_tools(self, tools: Any, *, tool_choice: str | None = None, **kw: Any) -> Any:
        names = [t.name for t in tools]
        return self.bind(bound_tools=names, tool_choice=tool_choice, **kw)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls.append(
            {
                "messages": list(messages),
                "tools": kwargs.get("bound_tools"),
                "tool_choice": kwargs.get("tool_choice"),
            }
        )
        scripted = self.responses[min(len(self.calls), len(self.responses)) - 1]
        # a fresh message per call, as a real model makes (the state merges messages by id)
        message = scripted.model_copy(deep=True, update={"id": f"ai-{len(self.calls)}"})
        return ChatResult(generations=[ChatGeneration(message=message)])


def script(*responses: AIMessage) -> ToolScript:
    return ToolScript(responses=list(responses), calls=[])


QUESTION = "Janet has 16 eggs, eats 3 and bakes with 4. How many are left?"


def test_full_loop_forced_call_then_answer() -> None:
    model = script(
        AIMessage(content="", tool_calls=[call("16 - 3 - 4", "c1")]),
        AIMessage(content="She has 9 eggs left."),
    )
    agent = create_spthink_agent(
        model, [make_calculator_tool()], system_prompt="Use the calculator.", max_steps=4
    )
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    kinds = [type(m).__name__ for m in state["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    tool_msg = state["messages"][2]
    assert isinstance(tool_msg, ToolMessage)
    assert tool_msg.content == "9" and tool_msg.tool_call_id == "c1"  # the tool really ran
    assert state["messages"][-1].content == "She has 9 eggs left."
    assert [c["tool_choice"] for c in model.calls] == ["any", "auto"]
    assert all(c["tools"] == ["calculator"] for c in model.calls)
    for c in model.calls:  # the system prompt goes first on every call, not into the state
        assert isinstance(c["messages"][0], SystemMessage)
        assert c["messages"][0].content == "Use the calculator."
    assert not any(isinstance(m, SystemMessage) for m in state["messages"])
    # the second call saw the tool's result
    assert model.calls[1]["messages"][-1].content == "9"


@pytest.mark.parametrize("max_steps", [2, 3, 5])
def test_step_limit_ends_with_an_answer(max_steps: int) -> None:
    # a model that never stops calling tools
    model = script(AIMessage(content="again", tool_calls=[call("1 + 1", "c")]))
    agent = create_spthink_agent(model, [make_calculator_tool()], max_steps=max_steps)
    state = agent.invoke({"messages": [("user", QUESTION)]})
    assert len(model.calls) == max_steps
    assert model_calls_this_turn(state["messages"]) == max_steps
    tools_run = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert len(tools_run) == max_steps - 1 and all(m.content == "2" for m in tools_run)
    # the last call had no tools bound; its stray tool call was dropped
    assert model.calls[-1]["tools"] is None
    assert all(c["tools"] == ["calculator"] for c in model.calls[:-1])
    last = state["messages"][-1]
    assert isinstance(last, AIMessage) and last.content == "again" and not last.tool_calls


def test_first_tool_choice_none_lets_the_model_answer_at_once() -> None:
    model = script(AIMessage(content="9"))
    agent = create_spthink_agent(model, [make_calculator_tool()], first_tool_choice=None)
    state = agent.invoke({"messages": [("user", QUESTION)]})
    assert len(state["messages"]) == 2 and model.calls[0]["tool_choice"] is None


def test_named_tool_choice_and_function_tools() -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    model = script(
        AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "x"}]),
        AIMessage(content="5"),
    )
    agent = create_spthink_agent(model, [add, make_calculator_tool()], first_tool_choice="add")
    state = agent.invoke({"messages": [("user", "2+3?")]})
    assert state["messages"][2].content == "5"
    assert model.calls[0]["tool_choice"] == "add"
    assert model.calls[0]["tools"] == ["add", "calculator"]


def test_malformed_call_is_reported_back_and_retried() -> None:
    bad = AIMessage(
        content="",
        invalid_tool_calls=[
            {"name": "calculator", "args": "{oops", "id": "bad1", "error": "invalid JSON"}
        ],
    )
    model = script(bad, AIMessage(content="", tool_calls=[call("2*3", "c2")]), AIMessage("6"))
    agent = create_spthink_agent(model, [make_calculator_tool()], max_steps=4)
    state = agent.invoke({"messages": [("user", "2*3?")]})
    feedback = state["messages"][2]
    assert isinstance(feedback, ToolMessage) and feedback.status == "error"
    assert feedback.tool_call_id == "bad1" and "invalid JSON" in str(feedback.content)
    assert state["messages"][4].content == "6" and state["messages"][-1].content == "6"
    assert len(model.calls) == 3


def test_tool_errors_go_back_to_the_model() -> None:
    @tool
    def broken(x: str) -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    model = script(
        AIMessage(content="", tool_calls=[{"name": "broken", "args": {"x": "a"}, "id": "b"}]),
        AIMessage(content="sorry"),
    )
    state = create_spthink_agent(model, [broken]).invoke({"messages": [("user", "go")]})
    err = state["messages"][2]
    assert isinstance(err, ToolMessage) and err.status == "error"
    assert "disk on fire" in str(err.content)
    strict = create_spthink_agent(script(*model.responses), [broken], handle_tool_errors=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        strict.invoke({"messages": [("user", "go")]})


def test_unknown_tool_name_is_an_error_result() -> None:
    model = script(
        AIMessage(content="", tool_calls=[{"name": "nope", "args": {}, "id": "n"}]),
        AIMessage(content="ok"),
    )
    state = create_spthink_agent(model, [make_calculator_tool()]).invoke(
        {"messages": [("user", "x")]}
    )
    assert isinstance(state["messages"][2], ToolMessage)
    assert state["messages"][2].status == "error" and "nope" in str(state["messages"][2].content)


def test_limit_is_per_turn_with_a_checkpointer() -> None:
    model = script(AIMessage(content="again", tool_calls=[call("1 + 1", "c")]))
    agent = create_spthink_agent(
        model, [make_calculator_tool()], max_steps=2, checkpointer=InMemorySaver()
    )
    cfg = {"configurable": {"thread_id": "t"}}
    agent.invoke({"messages": [("user", "first")]}, cfg)
    state = agent.invoke({"messages": [("user", "second")]}, cfg)
    assert len(model.calls) == 4  # 2 per turn
    assert [c["tool_choice"] for c in model.calls] == ["any", None, "any", None]
    assert len(state["messages"]) == 8


async def test_async_loop() -> None:
    model = script(AIMessage(content="", tool_calls=[call("12 * 24 - 250", "c1")]), AIMessage("38"))
    agent = create_spthink_agent(model, [make_calculator_tool()])
    state = await agent.ainvoke({"messages": [("user", "cookies?")]})
    assert [m.content for m in state["messages"][2:]] == ["38", "38"]


def test_model_calls_this_turn() -> None:
    msgs = [HumanMessage("a"), AIMessage("b"), HumanMessage("c"), AIMessage("d")]
    assert model_calls_this_turn(msgs) == 1
    assert model_calls_this_turn([*msgs, ToolMessage("r", tool_call_id="x"), AIMessage("e")]) == 2
    assert model_calls_this_turn([]) == 0


def test_rejects_bad_arguments() -> None:
    calc = make_calculator_tool()
    with pytest.raises(InvalidRequestError, match="at least one tool"):
        create_spthink_agent(script(AIMessage("x")), [])
    with pytest.raises(InvalidRequestError, match="max_steps must be at least 2"):
        create_spthink_agent(script(AIMessage("x")), [calc], max_steps=1)
    with pytest.raises(InvalidRequestError, match=r"first_tool_choice='add'.*calculator"):
        create_spthink_agent(script(AIMessage("x")), [calc], first_tool_choice="add")
    with pytest.raises(InvalidRequestError, match="same name"):
        create_spthink_agent(script(AIMessage("x")), [calc, make_calculator_tool()])
    with pytest.raises(InvalidRequestError, match="does not support bind_tools"):
        create_spthink_agent(GenericFakeChatModel(messages=iter([])), [calc])
    with pytest.raises(InvalidRequestError, match="BaseTool or a function"):
        create_spthink_agent(script(AIMessage("x")), [42])  # type: ignore[list-item]


# ------------------------------------------------------------- delegation streaming
DELEG_SMALL = ["First step here.\n\n", "Wait, maybe not.\n\n", "So the answer is 4."]
DELEG_LARGE = ["First step here.\n\n", "Let me verify: yes it is 4.\n\n", "Final answer: 4."]


def speculative() -> ChatSpeculativeThinking:
    return ChatSpeculativeThinking(
        small_model=ScriptedBackend(DELEG_SMALL, name="small-fake"),
        large_model=ScriptedBackend(DELEG_LARGE, name="large-fake"),
        temperature=0,
    )


def one_node_graph(model: ChatSpeculativeThinking) -> Any:
    def node(state: MessagesState) -> dict[str, Any]:
        get_stream_writer()({"note": "before"})  # someone else's custom write passes through
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("llm", node)
    graph.add_edge(START, "llm")
    return graph.compile()


def check_items(items: list[GraphStreamItem]) -> None:
    kinds = [i.kind for i in items]
    assert kinds[0] == "custom" and items[0].data == {"note": "before"}
    delegations = [i for i in items if i.kind == "delegation"]
    assert delegations and all(isinstance(i.data, DelegationEvent) for i in delegations)
    assert all(i.event is i.data for i in delegations) and items[0].event is None
    # "Wait" is a backtracking cue: the large model rewrote that step
    assert delegations[0].data.kind == "reflection"
    assert delegations[0].data.large_text.startswith("Let me verify")
    # every delegation is streamed before the node's update, which carries the final answer
    update = kinds.index("updates")
    assert update == len(items) - 1  # the update comes last, after every delegation
    answer = items[update].data["llm"]["messages"][0].content
    for d in delegations:
        assert d.data.large_text in answer
    assert all(i.namespace == () for i in items)


def test_stream_with_delegations_typed_and_in_order() -> None:
    items = list(
        stream_with_delegations(one_node_graph(speculative()), {"messages": [("user", "hi")]})
    )
    check_items(items)


async def test_astream_with_delegations() -> None:
    graph = one_node_graph(speculative())
    items = [i async for i in astream_with_delegations(graph, {"messages": [("user", "hi")]})]
    check_items(items)


def test_stream_modes() -> None:
    graph = one_node_graph(speculative())
    items = list(
        stream_with_delegations(graph, {"messages": [("user", "hi")]}, stream_mode=["values"])
    )
    assert {i.kind for i in items} == {"values", "custom", "delegation"}
    with pytest.raises(InvalidRequestError, match="unknown stream mode"):
        list(stream_with_delegations(graph, {"messages": []}, stream_mode="tokens"))


# ------------------------------------- the agent over ChatSpeculativeThinking (our parser)
class TurnScripted(ScriptedBackend):
    """A scripted model whose script depends on how many tool results the prompt holds."""

    def __init__(self, turns: list[list[str]], **kw: Any) -> None:
        super().__init__(turns[0], **kw)
        self.turns = turns
        for turn in turns:  # register every piece before a constraint snapshots the vocabulary
            for paragraph in turn:
                self.encode(paragraph)

    def chat_prompt_ids(self, messages: Any, **kw: Any) -> list[int]:
        ids = super().chat_prompt_ids(messages, **kw)
        # tool results: "tool" messages (tools passed to the template), or <tool_response
        # name="calculator"> blocks in a user turn (the system prompt's format line has
        # name="<tool name>", which this does not count)
        done = sum(m["role"] == "tool" for m in messages)
        done += len(re.findall(r'<tool_response name="(?!<)', self.last_prompt))
        self.script = self.turns[min(done, len(self.turns) - 1)]
        return ids


CALL = (
    '<tool_call>{"name": "calculator", "arguments": {"expression": "(16 - 3 - 4) * 2"}}</tool_call>'
)
SMALL_TURNS = [
    [CALL],
    ["The calculator says 18.\n\n", "Wait, is it dollars?\n\n", "So the answer is 18."],
]
LARGE_TURNS = [
    [CALL],
    ["The calculator says 18.\n\n", "So 9 eggs at $2 make $18.\n\n", "Answer: 18."],
]


def speculative_agent(**kw: Any) -> tuple[Any, TurnScripted, TurnScripted]:
    small = TurnScripted(SMALL_TURNS, name="small-fake")
    large = TurnScripted(LARGE_TURNS, name="large-fake")
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    agent = create_spthink_agent(
        model, [make_calculator_tool()], system_prompt="Use the calculator.", **kw
    )
    return agent, small, large


def test_agent_over_speculative_thinking_parses_runs_and_answers() -> None:
    agent, small, _ = speculative_agent(max_steps=3)
    items = list(
        stream_with_delegations(
            agent, {"messages": [("user", QUESTION)]}, stream_mode=["updates", "values"]
        )
    )
    state = [i for i in items if i.kind == "values"][-1].data
    msgs = state["messages"]
    assert [type(m).__name__ for m in msgs] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    ai, tool_msg, final = msgs[1], msgs[2], msgs[3]
    # our parser turned the <tool_call> text into a structured call
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [
        ("calculator", {"expression": "(16 - 3 - 4) * 2"})
    ]
    assert ai.content == "" and not ai.invalid_tool_calls
    assert tool_msg.content == "18" and tool_msg.tool_call_id == ai.tool_calls[0]["id"]
    # the second call saw the tool result in its prompt, and its "Wait" step was delegated
    assert "tool: 18" in small.last_prompt
    # the large model's step is up to draft_tokens (20) long: here the rest of its script
    large_step = LARGE_TURNS[1][1] + LARGE_TURNS[1][2]
    assert final.content == SMALL_TURNS[1][0] + large_step and not final.tool_calls
    delegations = [i.data for i in items if i.kind == "delegation"]
    assert [d.kind for d in delegations] == ["reflection"]
    assert delegations[0].large_text == large_step
    # the delegation streamed before the update carrying the final answer
    kinds = [i.kind for i in items]
    last_agent_update = max(
        n for n, i in enumerate(items) if i.kind == "updates" and "agent" in i.data
    )
    assert kinds.index("delegation") < last_agent_update


def test_agent_over_speculative_thinking_stops_at_the_limit() -> None:
    # a model that always calls the tool: the final, tool-free call still writes the call as
    # text (nothing parses it without tools), and the run ends there
    small = TurnScripted([[CALL]], name="small-fake")
    large = TurnScripted([[CALL]], name="large-fake")
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    agent = create_spthink_agent(model, [make_calculator_tool()], max_steps=3)
    msgs = agent.invoke({"messages": [("user", QUESTION)]})["messages"]
    assert [type(m).__name__ for m in msgs] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert [m.content for m in msgs if isinstance(m, ToolMessage)] == ["18", "18"]
    assert not msgs[-1].tool_calls and model_calls_this_turn(msgs) == 3


def test_model_given_as_chat_model_arguments() -> None:
    spec = {
        "small_model": TurnScripted(SMALL_TURNS, name="small-fake"),
        "large_model": TurnScripted(LARGE_TURNS, name="large-fake"),
        "temperature": 0,
    }
    agent = create_spthink_agent(spec, [make_calculator_tool()], max_steps=2)
    msgs = agent.invoke({"messages": [("user", QUESTION)]})["messages"]
    assert msgs[2].content == "18" and msgs[-1].content.startswith("The calculator says 18.")


def test_budget_events_stream_typed_through_a_graph() -> None:
    from langchain_spthink import BudgetEvent
    from langchain_spthink_integrations.langgraph import stream_with_delegations

    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(["A.\n\n", "B b b.\n\n", "C c.\n\n"], name="s"),
        large_model=ScriptedBackend(["X.\n\n", "Y y y.\n\n", "Z.\n\n"], name="L"),
        temperature=0,
        preset="instruct",
        config={"begin": False, "draft_tokens": 3, "max_large_tokens": 3},
    )

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState).add_node("m", node).add_edge(START, "m").compile()
    items = list(stream_with_delegations(graph, {"messages": [("user", "go")]}))
    (budget,) = [i for i in items if i.kind == "budget"]
    assert isinstance(budget.event, BudgetEvent) and budget.event.limit == 3
