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
from collections.abc import Mapping
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

_TYPES: dict[str, type[DelegationEvent] | type[FallbackEvent] | type[BudgetEvent]] = {
    DELEGATION_EVENT: DelegationEvent,
    FALLBACK_EVENT: FallbackEvent,
    BUDGET_EVENT: BudgetEvent,
}


def event_from_custom(name: str, data: Any) -> DelegationEvent | FallbackEvent | BudgetEvent | None:
    """Rebuild the typed event of a ``spthink_*`` custom event.

    Args:
        name: The custom event's name.
        data: Its data (a dict of the event's fields, or the event itself).

    Returns:
        The event, or ``None`` when ``name`` is not one of this library's events.
    """
    cls = _TYPES.get(name)
    if cls is None:
        return None
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class SpeculativeThinkingCallbackHandler(BaseCallbackHandler):
    """Callback handler with typed hooks for delegation and fallback events.

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
        event = event_from_custom(name, data)
        if isinstance(event, DelegationEvent):
            self.on_delegation(event, run_id=run_id, tags=tags, metadata=metadata)
        elif isinstance(event, FallbackEvent):
            self.on_fallback(event, run_id=run_id, tags=tags, metadata=metadata)
        elif isinstance(event, BudgetEvent):
            self.on_budget(event, run_id=run_id, tags=tags, metadata=metadata)

    def on_delegation(
        self,
        event: DelegationEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when the large model wrote a step.

        Args:
            event: The delegation, as the engine produced it.
            run_id: Run id of the chat model call.
            tags: The run's tags.
            metadata: The run's metadata.
            **kwargs: Reserved for future use.
        """

    def on_fallback(
        self,
        event: FallbackEvent,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Called when a request left speculative mode because the large model failed.

        Args:
            event: The fallback, as the engine produced it.
            run_id: Run id of the chat model call.
            tags: The run's tags.
            metadata: The run's metadata.
            **kwargs: Reserved for future use.
        """

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

        Args:
            event: Which budget (``max_large_tokens`` / ``max_reasoning_tokens``), its limit,
                what was spent and where.
            run_id: Run id of the chat model call.
            tags: The run's tags.
            metadata: The run's metadata.
            **kwargs: Reserved for future use.
        """


class AsyncSpeculativeThinkingCallbackHandler(AsyncCallbackHandler):
    """Async variant of :class:`SpeculativeThinkingCallbackHandler`."""

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
        event = event_from_custom(name, data)
        if isinstance(event, DelegationEvent):
            await self.on_delegation(event, run_id=run_id, tags=tags, metadata=metadata)
        elif isinstance(event, FallbackEvent):
            await self.on_fallback(event, run_id=run_id, tags=tags, metadata=metadata)
        elif isinstance(event, BudgetEvent):
            await self.on_budget(event, run_id=run_id, tags=tags, metadata=metadata)

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
