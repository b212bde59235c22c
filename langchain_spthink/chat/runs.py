"""The chat model's run: learning its id where LangChain hides it, and dispatching custom events.

LangChain's ``run_manager.on_custom_event`` is a no-op, so delegation / fallback events are
dispatched through a callback manager built from the run's handlers with the run's id (see
``docs/DESIGN.md``, "LangChain surface"), and written to LangGraph's stream writer inside a graph.
Where LangChain calls ``_stream`` without a run manager, a :class:`RunCapture` added to the call's
callbacks supplies the run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    BaseCallbackHandler,
    CallbackManager,
)
from langchain_core.callbacks.manager import BaseRunManager
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config

__all__ = ["RUN_KEY", "CustomEvent", "CustomEventRoute", "RunCapture", "with_run_capture"]

RUN_KEY = "_spthink_run"
"""Private keyword argument that carries a call's :class:`RunCapture` down to ``_stream``."""

_M = TypeVar("_M", CallbackManager, AsyncCallbackManager)


class RunCapture(BaseCallbackHandler):
    """Learns the chat model's run id where LangChain does not pass a run manager to ``_stream``.

    ``BaseChatModel.stream`` / ``astream`` (and the implicit streaming of ``invoke`` under
    ``astream_events``) call ``_stream`` without the run manager, so the public entry points add
    this handler to the call's callbacks and pass it to ``_stream`` as a private keyword.
    """

    run_inline = True

    def __init__(self, config: RunnableConfig) -> None:
        self.config = config
        self.run_id: UUID | None = None
        self.tags: list[str] = []
        self.metadata: dict[str, Any] = {}
        # Stop the request when the public stream is closed, even where LangChain leaves the
        # inner ``_stream`` / ``_astream`` generator for the garbage collector to finalise.
        self.closers: list[Callable[[], None]] = []
        self.async_closers: list[Callable[[], Awaitable[None]]] = []

    def close_runs(self) -> None:
        """Stop every request started under this call."""
        for close in self.closers:
            close()

    async def aclose_runs(self) -> None:
        """Stop every request started under this call and wait until their caches are freed."""
        for close in self.async_closers:
            await close()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the run."""
        if self.run_id is None:
            self.run_id = run_id
            self.tags = list(tags or [])
            self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        # Stable (and unchanged since the class was ``chat_models._RunCapture``): it ends up in
        # LangChain's cache key of a call.
        return "_RunCapture()"


def with_run_capture(
    config: RunnableConfig | None, kwargs: dict[str, Any]
) -> tuple[RunnableConfig, dict[str, Any]]:
    """Add a :class:`RunCapture` to a call's callbacks and keyword arguments (once per call).

    Args:
        config: The call's config.
        kwargs: The call's keyword arguments.

    Returns:
        The config and keyword arguments to hand on to ``BaseChatModel``.
    """
    ensured = ensure_config(config)
    if RUN_KEY in kwargs:
        return ensured, kwargs
    capture = RunCapture(ensured)
    callbacks = ensured.get("callbacks")
    merged: Any
    if callbacks is None:
        merged = [capture]
    elif isinstance(callbacks, list):
        merged = [*callbacks, capture]
    else:
        merged = callbacks.copy()
        merged.add_handler(capture, inherit=False)
    return cast(RunnableConfig, {**ensured, "callbacks": merged}), {**kwargs, RUN_KEY: capture}


def run_capture(kwargs: Mapping[str, Any]) -> RunCapture | None:
    """The call's :class:`RunCapture`, if the public entry point added one."""
    capture = kwargs.get(RUN_KEY)
    return capture if isinstance(capture, RunCapture) else None


@dataclass(frozen=True)
class CustomEvent:
    """A custom event to dispatch, in order with the chunks."""

    name: str
    data: dict[str, Any]


def _langgraph_writer() -> Callable[[Any], None] | None:
    """LangGraph's stream writer when running inside a graph node, else ``None``."""
    try:
        from langgraph.config import get_stream_writer
    except ImportError:
        return None
    try:
        return get_stream_writer()
    except Exception:  # noqa: BLE001 - outside a graph: RuntimeError / KeyError
        return None


def _run_handlers(
    manager_cls: type[_M],
    run_manager: BaseRunManager | None,
    capture: RunCapture | None,
    model: BaseChatModel,
) -> tuple[_M, UUID] | None:
    """A callback manager with the run's handlers, and the run id to dispatch under."""
    if run_manager is not None:
        manager = manager_cls(
            handlers=list(run_manager.handlers),
            inheritable_handlers=list(run_manager.inheritable_handlers),
            parent_run_id=run_manager.parent_run_id,
            tags=run_manager.tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
        return manager, run_manager.run_id
    if capture is None or capture.run_id is None:
        return None
    cfg = capture.config
    manager = manager_cls.configure(
        cfg.get("callbacks"),
        model.callbacks,
        model.verbose,
        cfg.get("tags"),
        model.tags,
        cfg.get("metadata"),
        model.metadata,
    )
    manager.handlers = [h for h in manager.handlers if not isinstance(h, RunCapture)]
    manager.tags, manager.metadata = capture.tags, capture.metadata
    return manager, capture.run_id


class CustomEventRoute(Generic[_M]):
    """Where one call's custom events go: the chat model run's handlers and LangGraph's writer.

    Args:
        manager_cls: ``CallbackManager`` for the sync path, ``AsyncCallbackManager`` for async.
        run_manager: The run manager LangChain passed, if any.
        kwargs: The call's keyword arguments (for the :class:`RunCapture` when there is none).
        model: The chat model (its own callbacks, tags and metadata).
    """

    def __init__(
        self,
        manager_cls: type[_M],
        run_manager: BaseRunManager | None,
        kwargs: Mapping[str, Any],
        model: BaseChatModel,
    ) -> None:
        self._handlers: tuple[_M, UUID] | None = _run_handlers(
            manager_cls, run_manager, run_capture(kwargs), model
        )
        self._writer = _langgraph_writer()

    def _write(self, item: CustomEvent) -> None:
        if self._writer is not None:
            self._writer({"name": item.name, "data": item.data})

    def send(self: CustomEventRoute[CallbackManager], item: CustomEvent) -> None:
        """Dispatch a custom event (sync path)."""
        if self._handlers is not None:
            manager, run_id = self._handlers
            manager.on_custom_event(item.name, item.data, run_id=run_id)
        self._write(item)

    async def asend(self: CustomEventRoute[AsyncCallbackManager], item: CustomEvent) -> None:
        """Dispatch a custom event (async path)."""
        if self._handlers is not None:
            manager, run_id = self._handlers
            await manager.on_custom_event(item.name, item.data, run_id=run_id)
        self._write(item)
