"""The state of one request and the primitives the control loop is written in.

:class:`RunBase` owns a request's shared output, one :class:`~.steps._Track` (session + usage)
per model and the counters of ALGORITHM.md. Its primitives write, commit and insert text and keep
each session in step with the output; :class:`langchain_spthink.engine.loop._Run` composes them
into the algorithm. A write returns a :class:`~.steps._Step` that says why it stopped and, when
that ends the current phase, its :data:`~.steps.Halt` (the request's end, or a spent budget):
ordinary outcomes are values. The one exception is :class:`~.steps._LargeFault`, a failure of
the large model. :class:`~.steps.Request` is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol

from langchain_spthink.backends.base import Backend, close_stream, reseed
from langchain_spthink.engine.decisions import (
    Recap,
    ids_covering,
    marker_end,
    step_seed,
    trigger_end,
)
from langchain_spthink.engine.detok import IncrementalDetokenizer
from langchain_spthink.engine.events import Author, Event, ModelUsage
from langchain_spthink.engine.handoff import resync
from langchain_spthink.engine.output import OutputEnd, SharedOutput
from langchain_spthink.engine.policies import DelegationPolicy, resolve_policy
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.engine.steps import (
    Halt,
    Mode,
    Request,
    Role,
    _LargeFault,
    _PendingStep,
    _Step,
    _Track,
)
from langchain_spthink.engine.verified import (
    Proposer,
    ProposerFault,
    verification_plan,
    verified_stream,
)

__all__ = ["EngineParts", "Mode", "Request", "Role", "RunBase"]

if TYPE_CHECKING:
    from langchain_spthink.engine.config import SpeculativeThinkingConfig
    from langchain_spthink.engine.sampling import TokenConstraint


class EngineParts(Protocol):
    """What a run reads from its engine (:class:`~langchain_spthink.engine.api.SpeculativeEngine`).

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


class RunBase:
    """One request's state and primitives (see the module docstring)."""

    def __init__(self, engine: EngineParts, request: Request) -> None:
        self.engine = engine
        self.cfg = cfg = engine.config
        self.request = request
        self.policy: DelegationPolicy = resolve_policy(cfg, request.policy or engine.policy)
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
        large = self.tracks.get("large")
        self.verified, self.verified_reason = verification_plan(
            cfg,
            engine.small if "small" in self.tracks else None,
            engine.large if large is not None else None,
            engine.share_ids,
            large.session if large is not None else None,
        )
        # The small model proposing for the large model; its length adapts over the request.
        self.proposer = (
            Proposer(self.tracks["small"], cfg.proposal_tokens, self.clock, cfg.proposal_tokens)
            if self.verified
            else None
        )

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

    # `_Track.synced` is set here only: it is the output version the session's ids reflect, or
    # -1 while the session holds an uncommitted draft (then the next `_sync` re-synchronises).
    def _sync(self, track: _Track) -> None:
        """Make ``track``'s session hold prompt + output (a no-op when it already does)."""
        if track.synced == self.out.version:
            return
        target = self.out.ids if self.out.ids is not None else track.backend.encode(self.out.text)
        resync(track.session, track.prompt_len, target)
        self._mark_synced(track)

    def _mark_synced(self, track: _Track) -> None:
        """``track``'s session holds prompt + output as it stands now."""
        track.synced = self.out.version

    def _hold(self, track: _Track, step: _Step) -> None:
        """Make ``track``'s session hold prompt + output + ``step`` again (before committing it)."""
        assert self.out.ids is not None  # only verified requests need it: they share ids
        resync(track.session, track.prompt_len, [*self.out.ids, *step.ids])
        self._mark_draft(track)

    def _mark_draft(self, track: _Track) -> None:
        """``track``'s session holds a draft that is not in the output (until committed)."""
        track.synced = -1

    def _append(
        self, author: Author, text: str, ids: Sequence[int]
    ) -> Generator[Event, None, OutputEnd | None]:
        """Append to the output and stream what is safe; returns why the output ended, if it did."""
        before = len(self.out.text)
        ended = self.out.append(author, text, ids)
        marker = self.request.answer_marker
        if self.in_reasoning and marker:
            if self.out.text.find(marker, max(0, before - len(marker) + 1)) >= 0:
                self._end_reasoning()
                self.answer_switch = self.answer_switch or self.request.constraint is not None
        yield from self.out.drain(final=False)
        return ended

    def _end_reasoning(self) -> None:
        self.in_reasoning = False
        self.reasoning_tokens = self.kept_tokens

    def _insert(self, text: str) -> Generator[Event, None, OutputEnd | None]:
        """Insert text written by no model (recap prompt, think word, reasoning close)."""
        encode = next(iter(self.tracks.values())).backend.encode  # ids are shared: any model
        ids = encode(text) if self.out.ids is not None else []
        return (yield from self._append("inserted", text, ids))

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
        """Put a drafted step into the output; its ``halt`` is set when it ends the request."""
        step = self._cut_at_marker(track, step)
        track.usage.kept_tokens += len(step.ids)
        self.kept_tokens += len(step.ids)
        ended = yield from self._append(track.role, step.text, step.ids)
        if ended is not None:
            step.stop = step.halt = ended
        elif step.eos:
            step.stop = step.halt = "eos"
        else:
            self._mark_synced(track)
        return step

    def _write(
        self,
        track: _Track,
        max_new: int,
        *,
        live: bool,
        carry: str = "",
        constraint: TokenConstraint | None = None,
        first: Sequence[int] = (),
    ) -> Generator[Event, None, _Step]:
        """Let one model write up to ``max_new`` tokens.

        ``live`` steps go into the output token by token; other steps are drafts returned
        uncommitted. The small model's live reasoning steps in speculative mode stop at a
        trigger (``carry``: text of the current round already in the output); a live step also
        stops when the answer marker asks for the answer writer. A large-model step of a
        verified request checks the small model's proposals (:mod:`.verified`), ``first`` (the
        draft of this boundary) first.

        Returns:
            The step, with why it stopped (``stop``) and, when that ends the phase, ``halt``: a
            budget spent before or after it, the deadline, and for a live step EOS, a stop
            string or a complete constraint. A draft's EOS is only ``stop``/``eos``.

        Raises:
            _LargeFault: The large model failed or ran over ``large_step_timeout``.
        """
        # Only the speculative reasoning looks for triggers (not the answer, nor the large model).
        stop_at_trigger = (
            live and self.mode == "speculative" and track.role == "small" and not self.answering
        )
        halt = self._budget_stop(track)
        if halt is not None:
            return _Step(start=len(track.session.ids), stop=halt, halt=halt)
        self._sync(track)
        if not live:
            self._mark_draft(track)
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
        proposer = self._proposer(track, constraint)
        stream: Iterator[int]
        if proposer is not None:
            stream = verified_stream(track, proposer, budget, first)
        elif constraint is None:
            stream = session.stream(budget)
        else:
            stream = session.stream(budget, constraint=constraint)
        try:
            for token in stream:
                track.usage.generated_tokens += 1
                if proposer is None:
                    track.usage.decode_passes += 1
                if token in track.backend.eos_ids:
                    step.eos, step.stop = True, "eos"
                    break
                step.ids.append(token)
                delta = detok.push(token)
                step.text += delta
                step.ends.append(len(step.text))
                if live:
                    track.usage.kept_tokens += 1
                    self.kept_tokens += 1
                    ended = yield from self._append(track.role, delta, [token])
                    if ended is not None:
                        step.stop = step.halt = ended
                        break
                    self._mark_synced(track)
                    if self.answer_switch and not self.answering:
                        step.stop = "marker"
                        break
                if constraint is not None and constraint.done:
                    step.stop = "done"
                    break
                if stop_at_trigger and delta:
                    scan_from = max(0, len(round_text) - self.max_trigger + 1)
                    round_text += delta
                    if trigger_end(round_text, self.cfg.triggers, scan_from) is not None:
                        step.stop = "trigger"
                        break
                now = self.clock()
                if step_deadline is not None and now > step_deadline:
                    raise TimeoutError(f"large-model step exceeded {self.cfg.large_step_timeout} s")
                if self.deadline is not None and now > self.deadline:
                    step.stop = step.halt = "timeout"
                    break
            tail = detok.flush() if step.halt is None else ""  # an ended output takes no more
        except GeneratorExit:
            raise
        except ProposerFault as fault:
            raise fault.cause from fault  # the small model's failure, not the large model's
        except Exception as exc:
            if is_large:
                raise _LargeFault(exc) from exc
            raise
        finally:
            close_stream(stream)
            step.seconds = self.clock() - started
            track.usage.seconds += step.seconds
        if step.halt is not None:
            return step
        if tail:
            step.text += tail
            if step.ends:
                step.ends[-1] = len(step.text)
            if live:
                ended = yield from self._append(track.role, tail, [])
                if ended is not None:
                    step.stop = step.halt = ended
                    return step
                self._mark_synced(track)
        if live and (step.eos or (constraint is not None and constraint.done)):
            step.halt = "eos"
        elif live and step.stop not in ("trigger", "marker"):
            halt = self._budget_stop(track)
            if halt is not None:
                step.stop = step.halt = halt
        return step

    def _proposer(self, track: _Track, constraint: TokenConstraint | None) -> Proposer | None:
        """The small model as proposer of a verified large step; ``None``: plain decoding.

        Only speculative, unconstrained large-model steps of a verified request (whose large
        session can verify: :func:`~.verified.verification_plan`); the small session is synced
        to the output and marked as a scratch pad for proposals.
        """
        if not (self.verified and track.role == "large" and self.mode == "speculative"):
            return None
        if constraint is not None:
            return None
        small = self.tracks["small"]
        self._sync(small)
        self._mark_draft(small)
        return self.proposer

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

    def _budget_stop(self, track: _Track) -> Halt | None:
        """What stops ``track`` from writing now (first of: the deadline, the budgets), if any."""
        cfg = self.cfg
        if self.deadline is not None and self.clock() > self.deadline:
            return "timeout"
        if self.kept_tokens >= self.request.max_tokens:
            return "length"
        if len(track.session.ids) >= track.backend.context_length:
            return "context"
        if (
            self.in_reasoning
            and cfg.max_reasoning_tokens is not None
            and self.kept_tokens >= cfg.max_reasoning_tokens
        ):
            return "reasoning_budget"
        return self._large_budget_stop() if track.role == "large" else None

    def _large_budget_stop(self) -> Halt | None:
        """``large_budget`` once the large model has generated ``max_large_tokens``."""
        limit, large = self.cfg.max_large_tokens, self.tracks.get("large")
        if self.mode == "speculative" and limit is not None and large is not None:
            if large.usage.generated_tokens >= limit:
                return "large_budget"
        return None
