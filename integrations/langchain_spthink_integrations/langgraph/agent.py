r"""A ReAct agent (model -> tools -> model ...) as a small LangGraph graph, with a hard step limit.

Why not ``langgraph.prebuilt.create_react_agent``: it is deprecated in langgraph 1.x (for
``langchain.agents.create_agent``, another package), its only step limit is the graph's
``recursion_limit`` (hitting it raises ``GraphRecursionError`` and loses the answer), and it uses
one ``tool_choice`` for every call. A small model needs the opposite: a forced tool call first
(constrained decoding then makes even a 135M model write a valid call), free choice afterwards,
and a last call without tools so that the run always ends with an answer.

The graph (``MessagesState``; a *step* is one model call, counted since the last human message,
so the limit holds per user turn, also with a checkpointer)::

    START -> agent --(tool calls, step < max_steps)--> tools -> agent
               |  \-(malformed calls, step < max_steps)--> retry (error ToolMessages) -> agent
               \--(an answer, or step == max_steps)--> END
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode

from langchain_spthink.errors import InvalidRequestError

__all__ = ["DEFAULT_MAX_STEPS", "create_spthink_agent", "model_calls_this_turn"]

DEFAULT_MAX_STEPS = 4
"""Default model calls per user turn: up to three tool rounds, then an answer."""

ModelSpec = BaseChatModel | Mapping[str, Any] | None
ToolLike = BaseTool | Callable[..., Any]


def model_calls_this_turn(messages: Sequence[AnyMessage]) -> int:
    """Number of AI messages after the last human message (the model calls of this turn)."""
    count = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        if isinstance(message, AIMessage):
            count += 1
    return count


def _resolve_model(model: ModelSpec) -> BaseChatModel:
    if isinstance(model, BaseChatModel):
        return model
    from langchain_spthink import ChatSpeculativeThinking

    return ChatSpeculativeThinking(**dict(model or {}))


def _as_tool(tool: ToolLike) -> BaseTool:
    if isinstance(tool, BaseTool):
        return tool
    if callable(tool):
        return StructuredTool.from_function(tool)
    raise InvalidRequestError(f"a tool must be a BaseTool or a function, not {type(tool).__name__}")


def _check_choice(name: str, choice: str | None, tool_names: set[str]) -> None:
    if choice in (None, "auto", "any", "required") or choice in tool_names:
        return
    raise InvalidRequestError(
        f"{name}={choice!r}: use None, 'auto', 'any', 'required' or a tool name "
        f"({', '.join(sorted(tool_names))})"
    )


def _retry_messages(message: AIMessage) -> list[ToolMessage]:
    """Error results for malformed tool calls, so the model sees what was wrong and retries."""
    out = []
    for i, bad in enumerate(message.invalid_tool_calls):
        name = bad.get("name") or "unknown"
        out.append(
            ToolMessage(
                content=(
                    f"error: the call to {name!r} could not be parsed ({bad.get('error')}). "
                    "Write one valid tool call with JSON arguments."
                ),
                tool_call_id=bad.get("id") or f"invalid_{i}",
                name=name,
                status="error",
            )
        )
    return out


def create_spthink_agent(
    model: ModelSpec,
    tools: Sequence[ToolLike],
    *,
    system_prompt: str | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    first_tool_choice: str | None = "any",
    tool_choice: str | None = "auto",
    handle_tool_errors: bool = True,
    checkpointer: Any = None,
    name: str = "spthink_agent",
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build a ReAct agent over a chat model (by default ``ChatSpeculativeThinking``).

    The step limit is enforced by the graph itself: at most ``max_steps`` model calls per user
    turn; the last one is made without tools, so the turn ends with the model's answer (tool
    calls it still writes there are dropped from the message), never with an error.

    Args:
        model: A chat model with ``bind_tools``; or a mapping of ``ChatSpeculativeThinking``
            arguments (``{"preset": "instruct", "max_tokens": 256}``); ``None`` for the embedded
            default pair.
        tools: LangChain tools or typed functions.
        system_prompt: Prepended to every model call (not stored in the state).
        max_steps: Model calls per user turn, at least 2 (one with tools, one to answer).
        first_tool_choice: ``tool_choice`` of the turn's first call: ``"any"`` (default) forces
            a call to some tool, a tool name forces that tool, ``None`` / ``"auto"`` lets the
            model choose. Forcing the first call is what makes small models use the tools.
        tool_choice: ``tool_choice`` of the later calls (except the last, which has no tools).
        handle_tool_errors: A tool that raises returns the error to the model as its result
            (``True``) instead of failing the run.
        checkpointer: A LangGraph checkpointer, for conversations (``thread_id`` in the config).
        name: The graph's name.

    Returns:
        The compiled graph: ``invoke({"messages": [("user", "...")]})`` returns the state with
        every message; stream it with
        :func:`langchain_spthink_integrations.langgraph.stream_with_delegations` to see the large
        model's steps as they happen.

    Raises:
        InvalidRequestError: No tools, ``max_steps < 2``, an unknown ``tool_choice``, or a model
            without ``bind_tools``.
    """
    if not tools:
        raise InvalidRequestError("create_spthink_agent needs at least one tool")
    if max_steps < 2:
        raise InvalidRequestError(f"max_steps must be at least 2 (tools, then answer): {max_steps}")
    chat = _resolve_model(model)
    tool_list = [_as_tool(t) for t in tools]
    names = {t.name for t in tool_list}
    if len(names) != len(tool_list):
        raise InvalidRequestError("two tools have the same name")
    _check_choice("first_tool_choice", first_tool_choice, names)
    _check_choice("tool_choice", tool_choice, names)

    def bind(choice: str | None) -> Runnable[LanguageModelInput, AIMessage]:
        try:
            if choice is None:
                return chat.bind_tools(tool_list)
            return chat.bind_tools(tool_list, tool_choice=choice)
        except NotImplementedError:
            raise InvalidRequestError(
                f"{type(chat).__name__} does not support bind_tools"
            ) from None

    first, later = bind(first_tool_choice), bind(tool_choice)

    def pick(messages: Sequence[AnyMessage]) -> tuple[Runnable[Any, Any], int]:
        step = model_calls_this_turn(messages) + 1  # the call about to be made, 1-based
        if step >= max_steps:
            return chat, step
        return (first if step == 1 else later), step

    def prompt(messages: Sequence[AnyMessage]) -> list[AnyMessage]:
        if system_prompt is None:
            return list(messages)
        return [SystemMessage(content=system_prompt), *messages]

    def finish(response: Any, step: int) -> dict[str, list[AnyMessage]]:
        if not isinstance(response, AIMessage):
            raise InvalidRequestError(f"the model returned {type(response).__name__}, not AI")
        if step >= max_steps and (response.tool_calls or response.invalid_tool_calls):
            # the last call answers: drop calls nobody will run, so the transcript stays valid
            response = response.model_copy(update={"tool_calls": [], "invalid_tool_calls": []})
        return {"messages": [response]}

    def call_model(state: MessagesState, config: RunnableConfig) -> dict[str, list[AnyMessage]]:
        runnable, step = pick(state["messages"])
        return finish(runnable.invoke(prompt(state["messages"]), config), step)

    async def acall_model(
        state: MessagesState, config: RunnableConfig
    ) -> dict[str, list[AnyMessage]]:
        runnable, step = pick(state["messages"])
        return finish(await runnable.ainvoke(prompt(state["messages"]), config), step)

    def route(state: MessagesState) -> Literal["tools", "retry", "__end__"]:
        last = state["messages"][-1]
        if not isinstance(last, AIMessage) or model_calls_this_turn(state["messages"]) >= max_steps:
            return "__end__"  # == END
        if last.tool_calls:
            return "tools"
        if last.invalid_tool_calls:
            return "retry"
        return "__end__"

    def retry(state: MessagesState) -> dict[str, list[AnyMessage]]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)  # route() sends only AI messages with bad calls here
        return {"messages": list(_retry_messages(last))}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", RunnableLambda(call_model, afunc=acall_model, name="agent"))
    graph.add_node("tools", ToolNode(tool_list, handle_tool_errors=handle_tool_errors))
    graph.add_node("retry", retry)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", "retry", END])
    graph.add_edge("tools", "agent")
    graph.add_edge("retry", "agent")
    return graph.compile(checkpointer=checkpointer, name=name)
