"""One request from chat messages to message chunks: the single path behind every entry point.

:func:`reply_items` renders each model's prompt, runs the engine and turns its events into
:class:`~langchain_core.outputs.ChatGenerationChunk` s (reasoning split off, usage and metadata on
the last chunk) interleaved with :class:`~langchain_spthink.chat.runs.CustomEvent` s placed after
the text they refer to. With tools, the answer goes through
:class:`~langchain_spthink.tools.parsing.ToolCallStream` (tool calls become ``tool_call_chunks``);
a forced tool call or a JSON response format decodes the answer under a grammar (the engine's
``Request.constraint``, from where the answer starts: after ``</think>`` for reasoning prompts).
``_stream`` runs it in the caller's thread, ``_astream`` in a worker thread
(:mod:`langchain_spthink.chat.async_bridge`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk

from langchain_spthink.backends.base import Backend
from langchain_spthink.chat.callbacks import BUDGET_EVENT, DELEGATION_EVENT, FALLBACK_EVENT
from langchain_spthink.chat.messages import to_chat_dicts
from langchain_spthink.chat.reasoning import Part, ReasoningSplitter
from langchain_spthink.chat.request import REASONING_CLOSE, build_request, roles_of
from langchain_spthink.chat.runs import CustomEvent
from langchain_spthink.chat.settings import CallSettings
from langchain_spthink.engine.events import (
    BudgetEvent,
    DelegationEvent,
    Event,
    FallbackEvent,
    FinishEvent,
    TextEvent,
)
from langchain_spthink.engine.loop import Role
from langchain_spthink.tools.constraints import grammar_factory
from langchain_spthink.tools.parsing import AnswerParser
from langchain_spthink.tools.schema import native_tools, prepare_messages

__all__ = ["Item", "ModelNames", "reply_items"]

Item = ChatGenerationChunk | CustomEvent
"""What a request yields: a chunk for the caller, or a custom event to dispatch."""

_FINISH_REASONS = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "context": "length",
    "timeout": "timeout",
}


@dataclass(frozen=True)
class ModelNames:
    """The two models' names, as metadata reports them."""

    small: str
    large: str

    def reported(self, mode: str) -> str:
        """``model_name`` in ``mode``: ``small+large`` when speculative, else the one model."""
        if mode == "small":
            return self.small
        if mode == "large":
            return self.large
        return f"{self.small}+{self.large}"


class _Emitter:
    """Turns reasoning/content pieces into chunks and orders custom events after their text.

    One piece is held back so that the final usage and metadata ride on the last text chunk
    (no empty chunks); custom events queue behind the held piece so they are dispatched after
    the text they refer to. The first chunk carries the input tokens, the last the rest.
    """

    def __init__(self, input_tokens: int) -> None:
        self.input_tokens = input_tokens
        # (part, text or tool-call chunk, is_first)
        self.pending: tuple[Part | Literal["tool"], Any, bool] | None = None
        self.queued: list[CustomEvent] = []
        self.started = False
        self.content_seen = False

    @staticmethod
    def _message(part: Part | Literal["tool"], payload: Any, **extra: Any) -> AIMessageChunk:
        if part == "content":
            return AIMessageChunk(content=payload, **extra)
        if part == "tool":
            return AIMessageChunk(content="", tool_call_chunks=[payload], **extra)
        return AIMessageChunk(content="", additional_kwargs={"reasoning_content": payload}, **extra)

    def _take_pending(self) -> tuple[Part | Literal["tool"], Any, bool] | None:
        pending, self.pending = self.pending, None
        return pending

    def _release_queued(self) -> Iterator[CustomEvent]:
        queued, self.queued = self.queued, []
        yield from queued

    def piece(self, part: Part | Literal["tool"], text: Any) -> Iterator[Item]:
        """Add a piece of reasoning, content or a tool-call chunk; yield what it lets go."""
        if not text:
            return
        self.content_seen |= part != "reasoning"
        held = self._take_pending()
        if held is not None:
            held_part, held_text, first = held
            extra: dict[str, Any] = {"usage_metadata": self._with_input()} if first else {}
            yield ChatGenerationChunk(message=self._message(held_part, held_text, **extra))
        yield from self._release_queued()
        self.pending = (part, text, not self.started)
        self.started = True

    def custom(self, item: CustomEvent) -> Iterator[Item]:
        """Queue a custom event behind the held piece (or let it go when nothing is held)."""
        if self.pending is None:
            yield item
        else:
            self.queued.append(item)

    def finish(self, usage: UsageMetadata, metadata: dict[str, Any]) -> Iterator[Item]:
        """Yield the last chunk, carrying ``usage`` and ``metadata``, then the queued events."""
        part, text, first = self._take_pending() or ("content", "", not self.started)
        if first:
            usage = self._with_input(usage)
        message = self._message(
            part,
            text,
            usage_metadata=usage,
            response_metadata=metadata,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=message)
        yield from self._release_queued()

    def _with_input(self, usage: UsageMetadata | None = None) -> UsageMetadata:
        """Usage for the first chunk: the input tokens, plus ``usage``'s output when given."""
        output = usage["output_tokens"] if usage is not None else 0
        first = UsageMetadata(
            input_tokens=self.input_tokens,
            output_tokens=output,
            total_tokens=self.input_tokens + output,
        )
        if usage is not None:
            first["output_token_details"] = usage.get("output_token_details", {})
        return first


_DRAFT_POOL: ThreadPoolExecutor | None = None
_DRAFT_POOL_LOCK = threading.Lock()


def draft_executor() -> ThreadPoolExecutor:
    """The process-wide pool that runs remote large-model steps during small drafts."""
    global _DRAFT_POOL
    with _DRAFT_POOL_LOCK:
        if _DRAFT_POOL is None:
            _DRAFT_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spthink-draft")
        return _DRAFT_POOL


def reply_items(
    call: CallSettings,
    messages: list[BaseMessage],
    *,
    load: Callable[[Role], Backend],
    templates: Mapping[Role, str | None],
    handoff: Literal["auto", "ids", "text"],
    names: ModelNames,
    executor: Executor | None = None,
) -> Generator[Item, None, None]:
    """Run one request: chunks in order, with custom events placed after their text.

    Args:
        call: The call's effective settings.
        messages: The conversation.
        load: Returns the backend of a role (loaded only for the roles the mode uses).
        templates: Chat templates that replace a model's own (``None``: its own).
        handoff: The token hand-off between the two models in speculative mode.
        names: Model names for the metadata.
        executor: Runs a remote large model's step while the small model drafts (concurrent
            drafts); default: the process-wide :func:`draft_executor` (threads). The greenlet
            path passes a :class:`~langchain_spthink.greenlet_bridge.LoopExecutor` (a task on
            the loop per step, no thread).

    Yields:
        Chunks, the last one with usage and metadata, and the custom events in between.
    """
    answer = call.answer
    grammar = answer.grammar

    def prepare(
        dicts: Sequence[dict[str, Any]], backend: Backend, template: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """Tools through the model's template if it knows them, else in the system text."""
        own = template if template is not None else getattr(backend, "chat_template", None)
        return prepare_messages(
            dicts, answer.tools, answer.choice, native=native_tools(own), extra_system=answer.system
        )

    prepared = build_request(
        to_chat_dicts(messages),
        {role: load(role) for role in roles_of(call.mode)},
        call.config,
        mode=call.mode,
        max_tokens=call.max_tokens,
        seed=call.seed,
        stop=call.stop,
        fit_context=call.max_tokens_is_default,
        templates=templates,
        prepare=prepare,
        # The reasoning stays free; the answer after it is decoded under the grammar, steered by
        # the engine (GrammarConstraint.limit) to complete within the tokens left for it.
        constraint=grammar_factory(grammar) if grammar is not None else None,
        policy=call.policy,
        handoff=handoff,
        # used only for remote large models (concurrent drafts)
        executor=draft_executor() if executor is None else executor,
    )
    splitter = ReasoningSplitter(in_reasoning=prepared.in_reasoning, close_tag=REASONING_CLOSE)
    events = cast(Generator[Event, None, None], prepared.engine.generate(prepared.request))
    try:
        yield from _items_of_events(
            events,
            splitter=splitter,
            emitter=_Emitter(len(prepared.prompts[prepared.primary])),
            primary=prepared.writer,
            call=call,
            names=names,
        )
    finally:
        events.close()


def _items_of_events(
    events: Iterator[Event],
    *,
    splitter: ReasoningSplitter,
    emitter: _Emitter,
    primary: Backend,
    call: CallSettings,
    names: ModelNames,
) -> Iterator[Item]:
    """The engine's events as chunks and custom events (see :class:`_Emitter`)."""
    # The delegations and fallbacks so far, by custom-event name (listed in the metadata).
    recorded: dict[str, list[dict[str, Any]]] = {
        DELEGATION_EVENT: [],
        FALLBACK_EVENT: [],
        BUDGET_EVENT: [],
    }
    answer = AnswerParser(call.answer.choice.names if call.answer.parse_tools else None)
    for event in events:
        if isinstance(event, TextEvent):
            for part, text in splitter.feed(event.text):
                for kind, piece in answer.feed(part, text):
                    yield from emitter.piece(kind, piece)
        elif isinstance(event, (DelegationEvent, FallbackEvent, BudgetEvent)):
            name = (
                DELEGATION_EVENT
                if isinstance(event, DelegationEvent)
                else FALLBACK_EVENT
                if isinstance(event, FallbackEvent)
                else BUDGET_EVENT
            )
            data = asdict(event)
            recorded[name].append(data)
            yield from emitter.custom(CustomEvent(name, dict(data)))
        elif isinstance(event, FinishEvent):
            for part, text in splitter.flush():
                for kind, piece in answer.feed(part, text):
                    yield from emitter.piece(kind, piece)
            for kind, piece in answer.flush():
                yield from emitter.piece(kind, piece)
            usage = UsageMetadata(
                input_tokens=0,
                output_tokens=event.output_tokens,
                total_tokens=event.output_tokens,
                output_token_details={
                    "reasoning": _reasoning_tokens(primary, splitter, event, emitter.content_seen)
                },
            )
            metadata = _finish_metadata(call, event, names, recorded)
            if answer.valid_calls and metadata["finish_reason"] == "stop":
                metadata["finish_reason"] = "tool_calls"
            yield from emitter.finish(usage, metadata)


def _finish_metadata(
    call: CallSettings,
    finish: FinishEvent,
    names: ModelNames,
    recorded: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    return {
        "model_name": names.reported(call.mode),
        "model_provider": "spthink",
        "finish_reason": _FINISH_REASONS.get(finish.stop_reason, finish.stop_reason),
        "spthink": {
            "mode": call.mode,
            "final_mode": finish.mode,
            "stop_reason": finish.stop_reason,
            "small_model": names.small,
            "large_model": names.large,
            "small_tokens": finish.small.kept_tokens,
            "large_tokens": finish.large.kept_tokens,
            "large_share": finish.large_share,
            "small_usage": asdict(finish.small),
            "large_usage": asdict(finish.large),
            "large_decoding": finish.large_decoding,
            "large_decoding_reason": finish.large_decoding_reason,
            "acceptance_rate": finish.large.acceptance_rate,
            "delegations": recorded[DELEGATION_EVENT],
            "fallbacks": recorded[FALLBACK_EVENT],
            "budget_events": recorded[BUDGET_EVENT],
            "budgets": dict(finish.budgets),
            "policy": call.policy_name,
            "seconds": finish.seconds,
            "extra": dict(finish.extra),
        },
    }


def _reasoning_tokens(
    primary: Backend, splitter: ReasoningSplitter, finish: FinishEvent, content_seen: bool
) -> int:
    """Output tokens in the think part (in the primary model's tokenizer, capped)."""
    total = finish.output_tokens
    raw = splitter.reasoning_raw
    if not raw:
        return 0
    if not content_seen:
        return total
    try:
        counted = len(primary.encode(raw))
    except Exception:  # noqa: BLE001 - fall back to a proportional estimate
        counted = round(total * len(raw) / max(1, len(splitter.raw)))
    return max(0, min(total, counted))
