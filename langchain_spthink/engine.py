"""The speculative-thinking control loop (ALGORITHM.md) as a generator of typed events.

The engine speaks token ids; backends own tokenizers and caches. One request is one
:class:`_Run`: a shared output (text, plus ids when both models share a tokenizer), one session per
model, and the counters of the algorithm. Nothing here knows about LangChain or threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Literal

from langchain_spthink.backends.base import Backend, Session
from langchain_spthink.config import SpeculativeThinkingConfig
from langchain_spthink.cues import classify, contains_any
from langchain_spthink.detok import IncrementalDetokenizer
from langchain_spthink.errors import HandoffError, InvalidRequestError, LargeModelError
from langchain_spthink.events import (
    Author,
    DelegationEvent,
    DelegationKind,
    Event,
    FallbackEvent,
    FinishEvent,
    ModelUsage,
    StopReason,
)
from langchain_spthink.handoff import resync
from langchain_spthink.output import SharedOutput
from langchain_spthink.sampling import SamplingParams

__all__ = ["Mode", "Request", "SpeculativeEngine"]

Mode = Literal["speculative", "small", "large"]
Role = Literal["small", "large"]


@dataclass(frozen=True)
class Request:
    """One generation request, in token ids.

    Attributes:
        small_prompt: The prompt in the small model's tokenizer and chat template.
        large_prompt: The prompt in the large model's tokenizer and chat template.
        max_tokens: Budget of generated output tokens (the prompt does not count).
        sampling: Sampling of both models (the large model's seed is ``seed + 1``).
        stop: Stop strings; the output ends before the first one.
        mode: ``speculative``, or one model alone (``small`` / ``large``).
    """

    small_prompt: Sequence[int]
    large_prompt: Sequence[int]
    max_tokens: int = 512
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    mode: Mode = "speculative"


class _Finished(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


class _LargeFault(Exception):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


@dataclass
class _Track:
    role: Role
    backend: Backend
    session: Session
    prompt_len: int
    usage: ModelUsage
    sampling: SamplingParams
    synced: int = 0  # version of the shared output the session's ids reflect
    forked_forwarded: int = 0  # positions forwarded by throw-away sessions (concurrent steps)


@dataclass
class _PendingStep:
    """A large-model step running in the executor on a throw-away session."""

    future: Future[tuple[list[int], int, float]]
    stop: threading.Event
    started: float

    def discard(self) -> None:
        self.stop.set()  # the worker closes its stream at the next token


@dataclass
class _Step:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)  # len(text) after each id
    start: int = 0  # session length before the step
    eos: bool = False
    trigger: bool = False
    seconds: float = 0.0


class SpeculativeEngine:
    """Runs speculative thinking over two backends.

    Args:
        small: The small (speculative) model; may be ``None`` for large-only use.
        large: The large (target) model; may be ``None`` for small-only use.
        config: The algorithm's knobs.
        handoff: ``ids`` (same tokenizer), ``text`` (re-tokenize), or ``auto`` (ids iff the
            tokenizers are equal).
        clock: Monotonic clock (injectable for tests).
        executor: Runs the large model's step at a boundary while the small model drafts
            (concurrent drafts); ``None`` runs them one after the other.
        concurrent_drafts: Use ``executor`` for large steps; default: when the large backend
            is remote (``is_remote``), whose steps are network-bound and open cheap sessions.
    """

    def __init__(
        self,
        small: Backend | None,
        large: Backend | None,
        config: SpeculativeThinkingConfig | None = None,
        *,
        handoff: Literal["auto", "ids", "text"] = "auto",
        clock: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
        concurrent_drafts: bool | None = None,
    ) -> None:
        self.small = small
        self.large = large
        self.config = config or SpeculativeThinkingConfig()
        self.clock = clock
        self.executor = executor
        if concurrent_drafts is None:
            concurrent_drafts = bool(getattr(large, "is_remote", False))
        self.concurrent_drafts = concurrent_drafts and executor is not None
        if small is None and large is None:
            raise InvalidRequestError("an engine needs at least one model")
        same = (
            small is not None
            and large is not None
            and small.tokenizer_fingerprint == large.tokenizer_fingerprint
        )
        if handoff == "ids" and small is not None and large is not None and not same:
            raise HandoffError(
                f"handoff='ids' needs one tokenizer, but {small.name} and {large.name} differ"
            )
        self.share_ids = same if handoff == "auto" else handoff == "ids"

    def generate(self, request: Request) -> Iterator[Event]:
        """Run one request, yielding text, delegation and fallback events, then a finish event."""
        if request.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be positive, got {request.max_tokens}")
        if any(not s for s in request.stop):
            raise InvalidRequestError("stop strings must not be empty")
        if request.mode != "small" and self.large is None:
            raise InvalidRequestError(f"mode {request.mode!r} needs a large model")
        if request.mode != "large" and self.small is None:
            raise InvalidRequestError(f"mode {request.mode!r} needs a small model")
        run = _Run(self, request)
        try:
            yield from run.events()
        finally:
            run.close()


class _Run:
    """The state of one request; its methods are the steps of ALGORITHM.md."""

    def __init__(self, engine: SpeculativeEngine, request: Request) -> None:
        self.engine = engine
        self.cfg = engine.config
        self.saved = 0.0
        self.concurrent_steps = 0
        self.discarded_steps = 0
        self.clock = engine.clock
        self.request = request
        self.mode: Mode = request.mode
        self.started = self.clock()
        self.deadline = self.started + self.cfg.time_out if self.cfg.time_out else None
        self.out = SharedOutput(request.stop, share_ids=engine.share_ids)
        self.kept_tokens = 0
        self.delegations = 0
        self.negatives = 0
        self.recap_budget = self.cfg.recap_tokens
        self.recap_after = self.cfg.recap_after_negatives
        self.max_trigger = max(len(t) for t in self.cfg.triggers)
        self.tracks: dict[Role, _Track] = {}
        seed = request.sampling.seed
        try:
            if request.mode != "large" and engine.small is not None:
                self.tracks["small"] = self._open("small", engine.small, request.small_prompt, seed)
            if request.mode != "small" and engine.large is not None:
                large_seed = None if seed is None else seed + 1
                self.tracks["large"] = self._open(
                    "large", engine.large, request.large_prompt, large_seed
                )
        except BaseException:
            self.close()
            raise

    def _open(
        self, role: Role, backend: Backend, prompt: Sequence[int], seed: int | None
    ) -> _Track:
        sampling = SamplingParams(
            self.request.sampling.temperature,
            self.request.sampling.top_p,
            self.request.sampling.top_k,
            seed,
        )
        session = backend.new_session(prompt, sampling)
        usage = ModelUsage(prompt_tokens=len(prompt))
        return _Track(role, backend, session, len(prompt), usage, sampling)

    def close(self) -> None:
        for track in self.tracks.values():
            track.session.close()

    # ----------------------------------------------------------------- the loop
    def events(self) -> Iterator[Event]:
        reason: StopReason
        try:
            if self.mode == "speculative":
                yield from self._speculative()
            else:
                yield from self._solo(self.tracks[self.mode])
            reason = "eos"  # pragma: no cover - loops only leave by _Finished
        except _Finished as fin:
            reason = fin.reason
        except _LargeFault as fault:
            raise LargeModelError(f"the large model failed: {fault.cause}") from fault.cause
        yield from self.out.drain(final=True)
        for track in self.tracks.values():
            track.usage.forwarded_tokens = track.session.forwarded + track.forked_forwarded
        empty = ModelUsage()
        yield FinishEvent(
            stop_reason=reason,
            text=self.out.text,
            small=self.tracks["small"].usage if "small" in self.tracks else empty,
            large=self.tracks["large"].usage if "large" in self.tracks else ModelUsage(),
            delegations=self.delegations,
            seconds=self.clock() - self.started,
            mode=self.mode,
            extra=(
                {
                    "concurrent_seconds_saved": self.saved,
                    "concurrent_steps": float(self.concurrent_steps),
                    "concurrent_steps_discarded": float(self.discarded_steps),
                }
                if self.engine.concurrent_drafts
                else {}
            ),
        )

    def _solo(self, track: _Track) -> Iterator[Event]:
        while True:
            yield from self._write(track, self.request.max_tokens, live=True)

    def _speculative(self) -> Iterator[Event]:
        cfg = self.cfg
        try:
            if cfg.begin:
                yield from self._large_live("begin", cfg.begin_tokens)
            at_boundary, carry = False, ""
            while True:
                if not at_boundary:
                    yield from self._write(self.tracks["small"], 1 << 30, live=True, carry=carry)
                at_boundary, carry = yield from self._boundary()
        except _LargeFault as fault:
            if cfg.fallback == "raise" or "small" not in self.tracks:
                raise
            self.mode = "small"
            cause = fault.cause
            yield FallbackEvent(
                reason=str(cause) or type(cause).__name__,
                error_type="timeout" if isinstance(cause, TimeoutError) else type(cause).__name__,
                new_mode="small",
                position=len(self.out.text),
            )
            yield from self._solo(self.tracks["small"])

    def _boundary(self) -> Generator[Event, None, tuple[bool, str]]:
        """Step 3 at a trigger. Returns (boundary again right away, carried-over small text)."""
        cfg, small = self.cfg, self.tracks["small"]
        self._check_budget(small)
        if self.negatives >= self.recap_after:
            yield from self._insert(cfg.recap_prompt)
            yield from self._large_live("recap", self.recap_budget)
            self.negatives = 0
            self.recap_budget = min(self.recap_budget + cfg.recap_tokens_step, cfg.recap_tokens_max)
            self.recap_after = min(self.recap_after + cfg.recap_after_step, cfg.recap_after_max)
            return False, ""
        if cfg.think_word:
            yield from self._insert(cfg.think_word)
        position = len(self.out.text)
        draft: _Step | None = None
        s: int | None = None
        # With not_reasoning + choose_large the small draft cannot change the outcome: skip it.
        pending: _PendingStep | None = None
        if not (cfg.not_reasoning and cfg.choose_large):
            pending = self._start_large(cfg.draft_tokens)
            try:
                draft = yield from self._write(small, cfg.draft_tokens, live=False)
            except BaseException:
                if pending is not None:
                    pending.discard()
                raise
            s = self._classify(draft.text)
            if s == 0 and not cfg.not_reasoning:
                if pending is not None:
                    pending.discard()
                    self.discarded_steps += 1
                return (yield from self._keep_neutral(draft))
        if pending is not None:
            large = self._finish_large(pending, cfg.draft_tokens)
            assert draft is not None
            self.saved += max(0.0, draft.seconds + large.seconds - (self.clock() - pending.started))
        else:
            large = yield from self._write(self.tracks["large"], cfg.draft_tokens, live=False)
        l_label = self._classify(large.text)
        keep_large = (
            cfg.choose_large
            or draft is None
            or (s is not None and ((s < 0 <= l_label) or (s > 0 > l_label)))
        )
        kept_step = large if keep_large or draft is None else draft
        kept_role: Role = "large" if keep_large else "small"
        self.delegations += 1
        delegation = DelegationEvent(
            kind="reflection",
            position=position,
            small_draft=draft.text if draft else None,
            large_text=large.text,
            kept=kept_role,
            small_label=s,
            large_label=l_label,
            small_tokens=len(draft.ids) if draft else 0,
            large_tokens=len(large.ids),
            seconds=large.seconds,
        )
        try:
            yield from self._commit(self.tracks[kept_role], kept_step)
        except _Finished:
            yield delegation
            raise
        yield delegation
        if kept_step.eos:
            raise _Finished("eos")
        if self._classify(kept_step.text) < 0:
            self.negatives += 1
        if cfg.verify_tokens and contains_any(
            kept_step.text, cfg.verify_words, word_boundary=cfg.word_boundary
        ):
            yield from self._large_live("verify", cfg.verify_tokens)
        return False, ""

    def _keep_neutral(self, draft: _Step) -> Generator[Event, None, tuple[bool, str]]:
        """Keep a neutral draft; a trigger inside it is the next boundary, as it would have been."""
        small = self.tracks["small"]
        cut = self._trigger_end(draft.text)
        if cut is not None:
            n = next(i for i, end in enumerate(draft.ends) if end >= cut) + 1
            small.session.truncate(draft.start + n)
            draft = _Step(
                draft.ids[:n], draft.text[: draft.ends[n - 1]], draft.ends[:n], draft.start
            )
        yield from self._commit(small, draft)
        if draft.eos:
            raise _Finished("eos")
        return (True, "") if cut is not None else (False, draft.text)

    def _large_live(self, kind: DelegationKind, budget: int) -> Iterator[Event]:
        large = self.tracks["large"]
        self._check_budget(large)
        position, kept_before, started = len(self.out.text), large.usage.kept_tokens, self.clock()

        def event() -> DelegationEvent:
            self.delegations += 1
            text = self.out.text[position:]
            return DelegationEvent(
                kind=kind,
                position=position,
                small_draft=None,
                large_text=text,
                kept="large",
                small_label=None,
                large_label=self._classify(text),
                small_tokens=0,
                large_tokens=large.usage.kept_tokens - kept_before,
                seconds=self.clock() - started,
            )

        try:
            yield from self._write(large, budget, live=True, stop_at_trigger=False)
        except (_Finished, _LargeFault) as exc:
            if isinstance(exc, _Finished) or large.usage.kept_tokens > kept_before:
                yield event()
            raise
        yield event()

    # ------------------------------------------------------------ concurrent drafts
    def _start_large(self, max_new: int) -> _PendingStep | None:
        """Start the large model's step of this boundary in the executor (or return None).

        The step runs on a throw-away session opened from a snapshot of the large model's ids
        (synced to the output now: the small draft does not change the output), so the real
        session is untouched until the step is kept.
        """
        engine = self.engine
        if not engine.concurrent_drafts or engine.executor is None or self.mode != "speculative":
            return None
        track = self.tracks["large"]
        self._check_budget(track)
        self._sync(track)
        track.synced = -1  # a draft is not in the output until committed
        snapshot = list(track.session.ids)
        room = track.backend.context_length - len(snapshot)
        budget = min(max_new, self.request.max_tokens - self.kept_tokens, room)
        stop, eos, clock = threading.Event(), track.backend.eos_ids, self.clock

        def work() -> tuple[list[int], int, float]:
            started = clock()
            fork = track.backend.new_session(snapshot, track.sampling)
            ids: list[int] = []
            stream = fork.stream(budget)
            try:
                for token in stream:
                    if stop.is_set():
                        break
                    ids.append(token)
                    if token in eos:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # a remote backend closes its HTTP stream here
                fork.close()
            return ids, fork.forwarded, clock() - started

        self.concurrent_steps += 1
        return _PendingStep(engine.executor.submit(work), stop, self.clock())

    def _finish_large(self, pending: _PendingStep, max_new: int) -> _Step:
        """Wait for a started large step and replay it into the real session as a draft."""
        cfg, track = self.cfg, self.tracks["large"]
        limits = []
        if cfg.large_step_timeout:
            limits.append(pending.started + cfg.large_step_timeout)
        if self.deadline is not None:
            limits.append(self.deadline)
        wait = max(0.0, min(limits) - self.clock()) if limits else None
        try:
            ids, forwarded, seconds = pending.future.result(timeout=wait)
        except FutureTimeout:
            pending.discard()
            if self.deadline is not None and self.clock() > self.deadline:
                raise _Finished("timeout") from None
            cause = TimeoutError(f"large-model step exceeded {cfg.large_step_timeout} s")
            raise _LargeFault(cause) from None
        except Exception as exc:
            raise _LargeFault(exc) from exc
        session = track.session
        step = _Step(start=len(session.ids), seconds=seconds)
        detok = IncrementalDetokenizer(track.backend.decode, session.ids[-6:])
        track.forked_forwarded += forwarded
        track.usage.seconds += seconds
        for token in ids:
            session.extend([token])
            track.usage.generated_tokens += 1
            if token in track.backend.eos_ids:
                step.eos = True
                break
            step.ids.append(token)
            step.text += detok.push(token)
            step.ends.append(len(step.text))
        tail = detok.flush()
        if tail:
            step.text += tail
            if step.ends:
                step.ends[-1] = len(step.text)
        return step

    # ------------------------------------------------------------ primitives
    def _classify(self, text: str) -> int:
        cfg = self.cfg
        return classify(
            text,
            positive=cfg.positive_words,
            negative=cfg.negative_words,
            verify=cfg.verify_words,
            word_boundary=cfg.word_boundary,
        )

    def _trigger_end(self, text: str, start: int = 0) -> int | None:
        ends = [text.find(t, start) for t in self.cfg.triggers]
        found = [e + len(t) for e, t in zip(ends, self.cfg.triggers, strict=True) if e >= 0]
        return min(found) if found else None

    def _sync(self, track: _Track) -> None:
        if track.synced == self.out.version:
            return
        target = self.out.ids if self.out.ids is not None else track.backend.encode(self.out.text)
        resync(track.session, track.prompt_len, target)
        track.synced = self.out.version

    def _append(self, author: Author, text: str, ids: Sequence[int]) -> Iterator[Event]:
        stopped = self.out.append(author, text, ids)
        yield from self.out.drain(final=False)
        if stopped:
            raise _Finished("stop")

    def _insert(self, text: str) -> Iterator[Event]:
        ids = self.tracks["small"].backend.encode(text) if self.out.ids is not None else []
        yield from self._append("inserted", text, ids)

    def _commit(self, track: _Track, step: _Step) -> Iterator[Event]:
        track.usage.kept_tokens += len(step.ids)
        self.kept_tokens += len(step.ids)
        yield from self._append(track.role, step.text, step.ids)
        track.synced = self.out.version

    def _write(
        self,
        track: _Track,
        max_new: int,
        *,
        live: bool,
        stop_at_trigger: bool | None = None,
        carry: str = "",
    ) -> Generator[Event, None, _Step]:
        """Let one model write up to ``max_new`` tokens.

        ``live`` steps go into the output token by token (and stop on a trigger when
        ``stop_at_trigger``, default: live small writes in speculative mode); other steps are
        drafts returned uncommitted. ``carry`` is text of the current round already in the output.
        Raises ``_Finished`` for a live step that ends the request, ``_LargeFault`` for failures
        of the large model.
        """
        if stop_at_trigger is None:
            stop_at_trigger = live and self.mode == "speculative" and track.role == "small"
        self._check_budget(track)
        self._sync(track)
        if not live:
            track.synced = -1  # a draft is not in the output until committed
        session = track.session
        room = track.backend.context_length - len(session.ids)
        budget = min(max_new, self.request.max_tokens - self.kept_tokens, room)
        step = _Step(start=len(session.ids))
        detok = IncrementalDetokenizer(track.backend.decode, session.ids[-6:])
        is_large = track.role == "large"
        started = self.clock()
        step_deadline = (
            started + self.cfg.large_step_timeout
            if is_large and self.cfg.large_step_timeout and self.mode == "speculative"
            else None
        )
        round_text = carry
        try:
            for token in session.stream(budget):
                track.usage.generated_tokens += 1
                if token in track.backend.eos_ids:
                    step.eos = True
                    break
                step.ids.append(token)
                delta = detok.push(token)
                step.text += delta
                step.ends.append(len(step.text))
                if live:
                    track.usage.kept_tokens += 1
                    self.kept_tokens += 1
                    yield from self._append(track.role, delta, [token])
                    track.synced = self.out.version
                if stop_at_trigger and delta:
                    scan_from = max(0, len(round_text) - self.max_trigger + 1)
                    round_text += delta
                    if self._trigger_end(round_text, scan_from) is not None:
                        step.trigger = True
                        break
                now = self.clock()
                if step_deadline is not None and now > step_deadline:
                    raise TimeoutError(f"large-model step exceeded {self.cfg.large_step_timeout} s")
                if self.deadline is not None and now > self.deadline:
                    raise _Finished("timeout")
            tail = detok.flush()
        except (_Finished, GeneratorExit):
            raise
        except Exception as exc:
            if is_large:
                raise _LargeFault(exc) from exc
            raise
        finally:
            step.seconds = self.clock() - started
            track.usage.seconds += step.seconds
        if tail:
            step.text += tail
            if step.ends:
                step.ends[-1] = len(step.text)
            if live:
                yield from self._append(track.role, tail, [])
                track.synced = self.out.version
        if live and step.eos:
            raise _Finished("eos")
        if live and not step.trigger:
            self._check_budget(track)
        return step

    def _check_budget(self, track: _Track) -> None:
        if self.deadline is not None and self.clock() > self.deadline:
            raise _Finished("timeout")
        if self.kept_tokens >= self.request.max_tokens:
            raise _Finished("length")
        if len(track.session.ids) >= track.backend.context_length:
            raise _Finished("context")
