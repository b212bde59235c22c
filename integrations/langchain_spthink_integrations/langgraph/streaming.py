"""Stream a LangGraph graph together with the large model's steps (``stream_mode="custom"``).

Inside a graph node, ``ChatSpeculativeThinking`` writes every delegation and fallback to
LangGraph's stream writer as ``{"name": "spthink_delegation" | "spthink_fallback", "data": {...}}``
(besides dispatching them to callbacks). :func:`stream_with_delegations` asks the graph for those
custom parts next to the stream modes you want and turns them back into typed
:class:`~langchain_spthink.DelegationEvent` / :class:`~langchain_spthink.FallbackEvent` objects,
in the order they happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.pregel import Pregel
from langgraph.types import StreamMode

from langchain_spthink.chat.callbacks import event_from_custom
from langchain_spthink.engine.events import BudgetEvent, DelegationEvent, FallbackEvent
from langchain_spthink.errors import InvalidRequestError

__all__ = ["GraphStreamItem", "astream_with_delegations", "stream_with_delegations"]

_MODES = frozenset({"values", "updates", "messages", "checkpoints", "tasks", "debug"})


@dataclass(frozen=True)
class GraphStreamItem:
    """One item of :func:`stream_with_delegations`.

    Attributes:
        kind: ``"delegation"`` (``data`` is a ``DelegationEvent``), ``"fallback"``
            (a ``FallbackEvent``), ``"budget"`` (a ``BudgetEvent``), ``"custom"`` (anything
            else a node wrote to the stream writer, as written), or the LangGraph stream mode
            of ``data`` (``"updates"``, ``"values"``, ``"messages"``, ...), with ``data`` as
            LangGraph streams it.
        data: The payload.
        namespace: The subgraph the item comes from (``()`` for the graph itself).
    """

    kind: str
    data: Any
    namespace: tuple[str, ...] = ()

    @property
    def event(self) -> DelegationEvent | FallbackEvent | BudgetEvent | None:
        """The delegation, fallback or budget event, when this item is one."""
        typed = (DelegationEvent, FallbackEvent, BudgetEvent)
        return self.data if isinstance(self.data, typed) else None


def _modes(stream_mode: str | Sequence[str]) -> list[StreamMode]:
    modes = [stream_mode] if isinstance(stream_mode, str) else list(stream_mode)
    unknown = [m for m in modes if m not in _MODES and m != "custom"]
    if unknown:
        raise InvalidRequestError(
            f"unknown stream mode(s) {unknown}: use any of {sorted(_MODES | {'custom'})}"
        )
    return cast(list[StreamMode], [*dict.fromkeys([*modes, "custom"])])  # custom once, in order


def _item(part: Mapping[str, Any]) -> GraphStreamItem:
    namespace = tuple(part.get("ns") or ())
    kind, data = str(part["type"]), part["data"]
    if kind == "custom":
        event = None
        if isinstance(data, Mapping) and isinstance(data.get("name"), str):
            event = event_from_custom(data["name"], data.get("data"))
        if isinstance(event, DelegationEvent):
            return GraphStreamItem("delegation", event, namespace)
        if isinstance(event, FallbackEvent):
            return GraphStreamItem("fallback", event, namespace)
        if isinstance(event, BudgetEvent):
            return GraphStreamItem("budget", event, namespace)
    return GraphStreamItem(kind, data, namespace)


def stream_with_delegations(
    graph: Pregel[Any, Any, Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    stream_mode: str | Sequence[str] = "updates",
    subgraphs: bool = False,
    context: Any = None,
) -> Iterator[GraphStreamItem]:
    """Stream a graph's updates (or other modes) and the large model's steps, in order.

    Args:
        graph: A compiled LangGraph graph (e.g. from :func:`create_spthink_agent`).
        input: The graph's input, e.g. ``{"messages": [("user", "...")]}``.
        config: The run's config (``thread_id``, callbacks, ...).
        stream_mode: LangGraph stream mode(s) to stream besides ``"custom"`` (always added).
        subgraphs: Also stream from subgraphs (their items carry a ``namespace``).
        context: The graph's static context (LangGraph ``context=``), if it has one.

    Yields:
        :class:`GraphStreamItem` objects.

    Raises:
        InvalidRequestError: An unknown stream mode.

    Example:
        .. code-block:: python

            for item in stream_with_delegations(agent, {"messages": [("user", q)]}):
                if item.kind == "delegation":
                    print("large model:", item.data.large_text)
                elif item.kind == "updates":
                    print(list(item.data))  # the node(s) that just ran
    """
    modes = _modes(stream_mode)
    for part in graph.stream(
        input, config, stream_mode=modes, subgraphs=subgraphs, context=context, version="v2"
    ):
        yield _item(part)


async def astream_with_delegations(
    graph: Pregel[Any, Any, Any, Any],
    input: Any,
    config: RunnableConfig | None = None,
    *,
    stream_mode: str | Sequence[str] = "updates",
    subgraphs: bool = False,
    context: Any = None,
) -> AsyncIterator[GraphStreamItem]:
    """Async variant of :func:`stream_with_delegations` (same arguments and items)."""
    modes = _modes(stream_mode)
    async for part in graph.astream(
        input, config, stream_mode=modes, subgraphs=subgraphs, context=context, version="v2"
    ):
        yield _item(part)
