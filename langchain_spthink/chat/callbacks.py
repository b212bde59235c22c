"""Delegation and fallback events as LangChain custom events, and typed handlers for them.

:class:`~langchain_spthink.chat.model.ChatSpeculativeThinking` dispatches every
:class:`~langchain_spthink.engine.events.DelegationEvent` as the custom event
``spthink_delegation`` and every :class:`~langchain_spthink.engine.events.FallbackEvent` as
``spthink_fallback``; the event data is the dataclass as a plain dict (``dataclasses.asdict``), so
it serialises and shows up as is in ``astream_events`` (``on_custom_event``) and LangGraph's
``stream_mode="custom"``.

Subclass :class:`SpeculativeThinkingCallbackHandler` (or the async variant) and override
:meth:`~SpeculativeThinkingCallbackHandler.on_delegation` /
:meth:`~SpeculativeThinkingCallbackHandler.on_fallback` to receive the typed events instead of
parsing dicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

from langchain_spthink.engine.events import BudgetEvent, DelegationEvent, FallbackEvent

__all__ = [
    "BUDGET_EVENT",
    "DELEGATION_EVENT",
    "FALLBACK_EVENT",
    "AsyncSpeculativeThinkingCallbackHandler",
    "SpeculativeThinkingCallbackHandler",
    "event_from_custom",
]

DELEGATION_EVENT = "spthink_delegation"
"""Name of the custom event carrying a :class:`~langchain_spthink.engine.events.DelegationEvent`."""

FALLBACK_EVENT = "spthink_fallback"
"""Name of the custom event carrying a :class:`~langchain_spthink.engine.events.FallbackEvent`."""

BUDGET_EVENT = "spthink_budget"
"""Name of the custom event carrying a :class:`~langchain_spthink.engine.events.BudgetEvent`."""

_EVENTS: dict[str, tuple[type[DelegationEvent | FallbackEvent | BudgetEvent], str]] = {
    DELEGATION_EVENT: (DelegationEvent, "on_delegation"),
    FALLBACK_EVENT: (FallbackEvent, "on_fallback"),
    BUDGET_EVENT: (BudgetEvent, "on_budget"),
}
"""Each ``spthink_*`` custom event's type and the typed hook both handlers route it to."""


def event_from_custom(name: str, data: Any) -> DelegationEvent | FallbackEvent | BudgetEvent | None:
    """Rebuild the typed event of a ``spthink_*`` custom event.

    Args:
        name: The custom event's name.
        data: Its data (a dict of the event's fields, or the event itself).

    Returns:
        The event, or ``None`` when ``name`` is not one of this library's events.
    """
    entry = _EVENTS.get(name)
    if entry is None:
        return None
    cls = entry[0]
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def _typed_hook(handler: object, name: str, data: Any) -> tuple[Callable[..., Any], Any] | None:
    """The handler's hook for a custom event and the typed event, or ``None`` if not ours."""
    event = event_from_custom(name, data)
    if event is None:
        return None
    return getattr(handler, _EVENTS[name][1]), event


class SpeculativeThinkingCallbackHandler(BaseCallbackHandler):
    """Callback handler with typed hooks for delegation, fallback and budget events.

    Every hook gets the event as the engine produced it and the chat model call's ``run_id``,
    ``tags`` and ``metadata``; ``**kwargs`` is reserved for future use.

    Example:
        .. code-block:: python

            class Printer(SpeculativeThinkingCallbackHandler):
                def on_delegation(self, event, **kwargs):
                    print(event.kind, repr(event.large_text))

            model.invoke("2+2?", config={"callbacks": [Printer()]})
    """

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Route ``spthink_*`` custom events to the typed hooks below."""
        routed = _typed_hook(self, name, data)
        if routed is not None:
            hook, event = routed
            hook(event, run_id=run_id, tags=tags, metadata=metadata)

    def on_delegation(
        self,
        event: DelegationEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when the large model wrote a step."""

    def on_fallback(
        self,
        event: FallbackEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when a request left speculative mode because the large model failed."""

    def on_budget(
        self,
        event: BudgetEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called once when a per-request budget ran out.

        The event says which budget (``max_large_tokens`` / ``max_reasoning_tokens``), its
        limit, what was spent and where.
        """


class AsyncSpeculativeThinkingCallbackHandler(AsyncCallbackHandler):
    """Async variant of :class:`SpeculativeThinkingCallbackHandler` (same hooks, awaited)."""

    async def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Route ``spthink_*`` custom events to the typed hooks below."""
        routed = _typed_hook(self, name, data)
        if routed is not None:
            hook, event = routed
            await hook(event, run_id=run_id, tags=tags, metadata=metadata)

    async def on_delegation(
        self,
        event: DelegationEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when the large model wrote a step (see the sync handler)."""

    async def on_fallback(
        self,
        event: FallbackEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when a request left speculative mode (see the sync handler)."""

    async def on_budget(
        self,
        event: BudgetEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called once when a per-request budget ran out (see the sync handler)."""
