"""The state of one request and the primitives the control loop is written in.

:class:`Request` is one request in token ids. :class:`RunBase` owns a request's shared output,
one :class:`_Track` (session + usage) per model and the counters of ALGORITHM.md. Its primitives
write, commit and insert text and run a large step in the background;
:class:`langchain_spthink.engine.loop._Run` composes them into the algorithm.
Control flow out of a step is by exception: :class:`_Finished` ends the request,
:class:`_LargeFault` is a large-model failure, :class:`_LargeBudget` / :class:`_CloseReasoning`
are exhausted budgets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from langchain_spthink.backends.base import Backend, Session, close_stream, reseed
from langchain_spthink.engine.decisions import (
    Recap,
    ids_covering,
    marker_end,
    step_seed,
    trigger_end,
)
from langchain_spthink.engine.detok import IncrementalDetokenizer
from langchain_spthink.engine.events import Author, Event, ModelUsage, StopReason
from langchain_spthink.engine.handoff import resync
from langchain_spthink.engine.output import SharedOutput
from langchain_spthink.engine.policies import DelegationPolicy, policy_from_config
from langchain_spthink.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from langchain_spthink.backends.base import ConstraintFactory
    from langchain_spthink.engine.config import SpeculativeThinkingConfig
    from langchain_spthink.engine.sampling import TokenConstraint

Role = Literal["small", "large"]
Mode = Literal["speculative", "small", "large"]


@dataclass(frozen=True)
class Request:
    """One generation request, in token ids.

    Attributes:
        small_prompt: The prompt in the small model's tokenizer and chat template.
        large_prompt: The prompt in the large model's tokenizer and chat template.
        max_tokens: Budget of generated output tokens (the prompt does not count).
        sampling: Sampling of both models; ``None``: the config's
            (:meth:`~langchain_spthink.engine.config.SpeculativeThinkingConfig.sampling`,
            unseeded). Each sampled step gets its own seed derived from ``sampling.seed``
            (:func:`~langchain_spthink.engine.decisions.step_seed`: the first step of the small
            model samples with ``seed``, of the large model with ``seed + 1``).
        stop: Stop strings; the output ends before the first one.
        mode: ``speculative``, or one model alone (``small`` / ``large``).
        constraint: Builds the constraint the answer is decoded under (for the model that
            writes it); ``None``: unconstrained.
        answer_marker: Text after which the answer starts (e.g. ``"</think>"``); ``None``: the
            whole output is the answer. The reasoning before it runs speculatively; with a
            constraint, one model (small, or large in large mode) writes the answer under it.
        policy: The delegation policy of this request (``None``: the engine's).
    """

    small_prompt: Sequence[int]
    large_prompt: Sequence[int]
    max_tokens: int = 512
    sampling: SamplingParams | None = None
    stop: tuple[str, ...] = ()
    mode: Mode = "speculative"
    constraint: ConstraintFactory | None = None
    answer_marker: str | None = None
    policy: DelegationPolicy | None = None


class EngineParts(Protocol):
    """What a run reads from its engine (:class:`~langchain_spthink.engine.loop.SpeculativeEngine`).

    A protocol, so this module does not import the control loop that imports it.
    """

    small: Backend | None
    large: Backend | None
    config: SpeculativeThinkingConfig
    policy: DelegationPolicy | None
    clock: Callable[[], float]
    share_ids: bool
    executor: Executor | None
    concurrent_drafts: bool


class _Finished(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


class _LargeFault(Exception):
    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


class _LargeBudget(Exception):
    """``max_large_tokens`` is spent: the request goes on in small mode."""


class _CloseReasoning(Exception):
    """``max_reasoning_tokens`` is spent: the reasoning is closed and the answer follows."""


@dataclass
class _Track:
    role: Role
    backend: Backend
    session: Session
    prompt_len: int
    usage: ModelUsage
    sampling: SamplingParams
    synced: int = 0  # version of the shared output the session's ids reflect
    steps: int = 0  # sampled steps started (each takes the seed step_seed(seed, role, steps))
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

    def cut(self, n: int) -> _Step:
        """The first ``n`` ids of this step (n >= 1)."""
        return _Step(self.ids[:n], self.text[: self.ends[n - 1]], self.ends[:n], self.start)


class RunBase:
    """One request's state and primitives (see the module docstring)."""

    def __init__(self, engine: EngineParts, request: Request) -> None:
        self.engine = engine
        self.cfg = cfg = engine.config
        self.request = request
        self.policy: DelegationPolicy = request.policy or engine.policy or policy_from_config(cfg)
        self.clock = engine.clock
        self.mode: Mode = request.mode
        self.started = self.clock()
        self.deadline = self.started + cfg.time_out if cfg.time_out else None
        self.out = SharedOutput(
            request.stop,
            share_ids=engine.share_ids,
            end_texts={
                "small": getattr(engine.small, "stop_texts", ()),
                "large": getattr(engine.large, "stop_texts", ()),
            },
        )
        self.saved = 0.0
        self.boundaries = 0
        self.boundary_seconds = 0.0  # wall time spent at boundaries (drafts, judge, large steps)
        self.concurrent_steps = 0
        self.discarded_steps = 0
        self.discarded: list[_PendingStep] = []  # concurrent large steps thrown away
        self.kept_tokens = 0
        self.delegations = 0
        self.negatives = 0
        self.recap = Recap.first(cfg)
        self.max_trigger = max(len(t) for t in cfg.triggers)
        # Phases: reasoning until the answer marker (or the thinking budget); `answer_switch`
        # asks the loop to hand the rest to one (possibly constrained) writer, `answering` is set
        # while that writer runs.
        self.in_reasoning = True
        self.reasoning_tokens: int | None = None
        self.answer_switch = request.constraint is not None and request.answer_marker is None
        self.answering = False
        self.large_exhausted = False
        self.reasoning_exhausted = False
        self.tracks: dict[Role, _Track] = {}
        self.sampling = cfg.sampling() if request.sampling is None else request.sampling
        try:
            if request.mode != "large" and engine.small is not None:
                self.tracks["small"] = self._open("small", engine.small, request.small_prompt)
            if request.mode != "small" and engine.large is not None:
                self.tracks["large"] = self._open("large", engine.large, request.large_prompt)
        except BaseException:
            self.close()
            raise

    def _open(self, role: Role, backend: Backend, prompt: Sequence[int]) -> _Track:
        base = self.sampling
        seed = step_seed(base.seed, role, 0)
        sampling = SamplingParams(base.temperature, base.top_p, base.top_k, seed)
        session = backend.new_session(prompt, sampling)
        usage = ModelUsage(prompt_tokens=len(prompt))
        return _Track(role, backend, session, len(prompt), usage, sampling)

    def close(self) -> None:
        """Close every model's session."""
        for track in self.tracks.values():
            track.session.close()

    def budgets(self) -> dict[str, int | bool]:
        """Limits, spending and exhaustion of the configured budgets (for the finish event)."""
        cfg, report = self.cfg, dict[str, int | bool]()
        if cfg.max_large_tokens is not None:
            large = self.tracks.get("large")
            report["max_large_tokens"] = cfg.max_large_tokens
            report["large_tokens"] = large.usage.generated_tokens if large else 0
            report["large_exhausted"] = self.large_exhausted
        if cfg.max_reasoning_tokens is not None:
            report["max_reasoning_tokens"] = cfg.max_reasoning_tokens
            spent = self.kept_tokens if self.reasoning_tokens is None else self.reasoning_tokens
            report["reasoning_tokens"] = spent
            report["reasoning_exhausted"] = self.reasoning_exhausted
        return report

    # ------------------------------------------------------------ primitives
    def _step_seed(self, track: _Track) -> int | None:
        """Count a sampled step of ``track``; its seed, or ``None`` to keep the session's.

        Step 0 samples with the seed the session opened with; greedy and unseeded requests
        keep theirs (greedy draws nothing, unseeded ones draw fresh).
        """
        step = track.steps
        track.steps += 1
        if step == 0 or self.sampling.greedy:
            return None
        return step_seed(self.sampling.seed, track.role, step)

    def _sync(self, track: _Track) -> None:
        if track.synced == self.out.version:
            return
        target = self.out.ids if self.out.ids is not None else track.backend.encode(self.out.text)
        resync(track.session, track.prompt_len, target)
        track.synced = self.out.version

    def _append(self, author: Author, text: str, ids: Sequence[int]) -> Iterator[Event]:
        before = len(self.out.text)
        ended = self.out.append(author, text, ids)
        marker = self.request.answer_marker
        if self.in_reasoning and marker:
            if self.out.text.find(marker, max(0, before - len(marker) + 1)) >= 0:
                self._end_reasoning()
                self.answer_switch = self.answer_switch or self.request.constraint is not None
        yield from self.out.drain(final=False)
        if ended is not None:
            raise _Finished(ended)

    def _end_reasoning(self) -> None:
        self.in_reasoning = False
        self.reasoning_tokens = self.kept_tokens

    def _insert(self, text: str) -> Iterator[Event]:
        encode = next(iter(self.tracks.values())).backend.encode  # ids are shared: any model
        ids = encode(text) if self.out.ids is not None else []
        yield from self._append("inserted", text, ids)

    def _cut_at_marker(self, track: _Track, step: _Step) -> _Step:
        """A step that writes the answer marker, cut after the token that completes it.

        Only with a constraint: the answer after the marker belongs to the constrained writer.
        """
        marker = self.request.answer_marker
        if not (self.in_reasoning and marker and self.request.constraint and step.ids):
            return step
        end = marker_end(self.out.text, step.text, marker)
        if end is None:
            return step
        n = ids_covering(step.ends, end, default=len(step.ids) - 1)
        track.session.truncate(step.start + n)
        return step.cut(n)

    def _commit(self, track: _Track, step: _Step) -> Generator[Event, None, _Step]:
        step = self._cut_at_marker(track, step)
        track.usage.kept_tokens += len(step.ids)
        self.kept_tokens += len(step.ids)
        yield from self._append(track.role, step.text, step.ids)
        track.synced = self.out.version
        return step

    def _write(
        self,
        track: _Track,
        max_new: int,
        *,
        live: bool,
        stop_at_trigger: bool | None = None,
        carry: str = "",
        constraint: TokenConstraint | None = None,
    ) -> Generator[Event, None, _Step]:
        """Let one model write up to ``max_new`` tokens.

        ``live`` steps go into the output token by token (and stop on a trigger when
        ``stop_at_trigger``, default: live small writes in speculative mode); other steps are
        drafts returned uncommitted. ``carry`` is text of the current round already in the output.
        A live step also stops when the answer marker asks for the answer writer. Raises
        ``_Finished`` for a live step that ends the request, ``_LargeFault`` for failures of the
        large model, ``_LargeBudget`` / ``_CloseReasoning`` when a budget is spent.
        """
        if stop_at_trigger is None:
            stop_at_trigger = live and self.mode == "speculative" and track.role == "small"
        self._check_budget(track)
        self._sync(track)
        if not live:
            track.synced = -1  # a draft is not in the output until committed
        session = track.session
        budget = self._room(track, max_new)
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
        seed = self._step_seed(track)
        if seed is not None:
            reseed(session, seed)
        stream = (
            session.stream(budget)
            if constraint is None
            else session.stream(budget, constraint=constraint)
        )
        try:
            for token in stream:
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
                    if self.answer_switch and not self.answering:
                        step.trigger = True
                        break
                if constraint is not None and constraint.done:
                    break
                if stop_at_trigger and delta:
                    scan_from = max(0, len(round_text) - self.max_trigger + 1)
                    round_text += delta
                    if trigger_end(round_text, self.cfg.triggers, scan_from) is not None:
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
            close_stream(stream)
            step.seconds = self.clock() - started
            track.usage.seconds += step.seconds
        if tail:
            step.text += tail
            if step.ends:
                step.ends[-1] = len(step.text)
            if live:
                yield from self._append(track.role, tail, [])
                track.synced = self.out.version
        if live and (step.eos or (constraint is not None and constraint.done)):
            raise _Finished("eos")
        if live and not step.trigger:
            self._check_budget(track)
        return step

    def _room(self, track: _Track, max_new: int) -> int:
        """Tokens ``track`` may write now: ``max_new`` capped by every budget that applies."""
        cfg = self.cfg
        room = min(
            max_new,
            self.request.max_tokens - self.kept_tokens,
            track.backend.context_length - len(track.session.ids),
        )
        if self.in_reasoning and cfg.max_reasoning_tokens is not None:
            room = min(room, cfg.max_reasoning_tokens - self.kept_tokens)
        if (
            track.role == "large"
            and self.mode == "speculative"
            and cfg.max_large_tokens is not None
        ):
            room = min(room, cfg.max_large_tokens - track.usage.generated_tokens)
        return room

    def _check_budget(self, track: _Track) -> None:
        cfg = self.cfg
        if self.deadline is not None and self.clock() > self.deadline:
            raise _Finished("timeout")
        if self.kept_tokens >= self.request.max_tokens:
            raise _Finished("length")
        if len(track.session.ids) >= track.backend.context_length:
            raise _Finished("context")
        if (
            self.in_reasoning
            and cfg.max_reasoning_tokens is not None
            and self.kept_tokens >= cfg.max_reasoning_tokens
        ):
            raise _CloseReasoning
        if track.role == "large":
            self._check_large_budget()

    def _count_discarded(self) -> None:
        """Add the tokens of finished, discarded concurrent steps to the large model's usage.

        They were generated (and paid for) even though nobody saw them; steps still stopping
        when the request ends are not counted.
        """
        large = self.tracks.get("large")
        for pending in self.discarded:
            future = pending.future
            if large is None or not future.done() or future.exception() is not None:
                continue
            ids, forwarded, _ = future.result()
            large.usage.generated_tokens += len(ids)
            large.forked_forwarded += forwarded
        self.discarded.clear()

    def _check_large_budget(self) -> None:
        limit, large = self.cfg.max_large_tokens, self.tracks.get("large")
        if self.mode == "speculative" and limit is not None and large is not None:
            if large.usage.generated_tokens >= limit:
                raise _LargeBudget
