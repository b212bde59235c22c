"""The speculative-thinking control loop (ALGORITHM.md) as a generator of typed events.

The engine speaks token ids; backends own tokenizers and caches. One request of a
:class:`~langchain_spthink.engine.api.SpeculativeEngine` is one :class:`_Run`: a shared output
(text, plus ids when both models share a tokenizer), one session per model, and the counters of
the algorithm (state and primitives, and :class:`Request`, in
:mod:`langchain_spthink.engine.state`). The loop reads top to bottom like ALGORITHM.md: the
decisions are pure functions (:mod:`~langchain_spthink.engine.decisions`), concurrent drafts
(:mod:`~langchain_spthink.engine.concurrent`) and the answer phase
(:mod:`~langchain_spthink.engine.answer`) are modules it calls. Each step returns why it
stopped; a :data:`~langchain_spthink.engine.steps.Halt` (the request's end or a spent budget) is
handed up as a value, and only a failure of the large model is an exception. Nothing here knows
about LangChain or threads.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from langchain_spthink.engine.answer import close_reasoning, write_answer
from langchain_spthink.engine.concurrent import finish_large_step, start_large_step
from langchain_spthink.engine.decisions import (
    BEGIN_SHARE,
    begin_budget,
    carry_text,
    ids_covering,
    keep_large,
    label,
    trigger_end,
    wants_verify,
)
from langchain_spthink.engine.events import (
    BudgetEvent,
    DelegationEvent,
    DelegationKind,
    Event,
    FallbackEvent,
    StopReason,
)
from langchain_spthink.engine.judge import decide
from langchain_spthink.engine.policies import Decision
from langchain_spthink.engine.report import finish_event
from langchain_spthink.engine.state import Request, RunBase
from langchain_spthink.engine.steps import (
    Halt,
    Mode,
    Role,
    _LargeFault,
    _PendingStep,
    _Step,
    _Track,
    ends_request,
)
from langchain_spthink.errors import LargeModelError

__all__ = ["BEGIN_SHARE", "Mode", "Request", "Role", "begin_budget"]

Round = tuple[bool, str]
"""Where the small model goes on after a boundary: (a boundary again right away, carried text)."""


class _Run(RunBase):
    """The steps of ALGORITHM.md over one request's state."""

    def events(self) -> Iterator[Event]:
        try:
            reason = yield from self._phases()
        except _LargeFault as fault:
            raise LargeModelError(f"the large model failed: {fault.cause}") from fault.cause
        yield from self.out.drain(final=True)
        yield finish_event(self, reason)

    def _phases(self) -> Generator[Event, None, StopReason]:
        """The reasoning (speculative, or one model alone), then the answer; how it ended."""
        halt: Halt | None
        if self.mode == "speculative":
            halt = yield from self._speculative()
            writer = self.tracks["small"]  # the small model goes on alone after it
        else:
            halt, writer = None, self.tracks[self.mode]
        if halt is None:
            halt = yield from self._solo(writer)
        if halt == "reasoning_budget":
            halt = yield from close_reasoning(self)
        if halt is None:
            halt = yield from write_answer(self)
        assert ends_request(halt), halt  # the budgets halt phases above, never the answer
        return halt

    def _solo(self, track: _Track) -> Generator[Event, None, Halt | None]:
        """One model writes the reasoning until the answer marker (``None``) or a halt."""
        while not self.answer_switch:
            step = yield from self._write(track, self.request.max_tokens, live=True)
            if step.halt is not None:
                return step.halt
        return None

    def _speculative(self) -> Generator[Event, None, Halt | None]:
        """Speculative reasoning, then ``None`` when the small model goes on alone.

        It does after a large-model fault (the fallback), once ``max_large_tokens`` is spent, and
        at the answer marker; a halt that ends the request or the thinking budget is returned.
        """
        try:
            halt = yield from self._steps()
        except _LargeFault as fault:
            if self.cfg.fallback == "raise" or "small" not in self.tracks:
                raise
            self.mode = "small"
            cause = fault.cause
            yield FallbackEvent(
                reason=str(cause) or type(cause).__name__,
                error_type="timeout" if isinstance(cause, TimeoutError) else type(cause).__name__,
                new_mode="small",
                position=len(self.out.text),
            )
            return None
        if halt == "large_budget":
            yield from self._large_spent()
            return None
        return halt

    def _steps(self) -> Generator[Event, None, Halt | None]:
        """ALGORITHM.md steps 1-4: the opening, then small writes to a trigger, then step 3."""
        if self.cfg.begin:  # 1. the large model writes the opening
            opening = begin_budget(self.cfg.begin_tokens, self.request.max_tokens)
            if opening and not self.answer_switch:
                halt = yield from self._large_live("begin", opening, "begin")
                if halt is not None:
                    return halt
        at_boundary, carry = False, self._carry(0)
        while not self.answer_switch:  # 4. repeat until a halt or the answer marker
            if not at_boundary:  # 2. the small model writes until a trigger
                step = yield from self._write(self.tracks["small"], 1 << 30, live=True, carry=carry)
                if step.halt is not None:
                    return step.halt
            if self.answer_switch:
                break
            nxt = yield from self._boundary()  # 3. at a trigger
            if isinstance(nxt, str):
                return nxt
            at_boundary, carry = nxt
        return None

    def _boundary(self) -> Generator[Event, None, Round | Halt]:
        """Step 3 at a trigger, timed (boundary latency). See :meth:`_boundary_step`."""
        started = self.clock()
        try:
            return (yield from self._boundary_step())
        finally:
            self.boundaries += 1
            self.boundary_seconds += self.clock() - started

    def _boundary_step(self) -> Generator[Event, None, Round | Halt]:
        """Step 3 at a trigger: a recap, or a look-ahead draft the policy judges.

        A neutral draft is kept (:meth:`_keep_neutral`); otherwise the large model writes the
        step too (:meth:`_delegate`), concurrently with the draft when it can.
        """
        cfg, small = self.cfg, self.tracks["small"]
        halt = self._budget_stop(small) or self._large_budget_stop()
        if halt is not None:
            return halt
        start = len(self.out.text)
        if self.recap.due(self.negatives):
            return (yield from self._recap(start))
        if cfg.think_word:
            ended = yield from self._insert(cfg.think_word)
            if ended is not None:
                return ended
        position = len(self.out.text)
        draft: _Step | None = None
        decision = Decision(True, "not_reasoning: every step")
        # With not_reasoning + choose_large the small draft cannot change the outcome: skip it.
        pending: _PendingStep | None = None
        if not (cfg.not_reasoning and cfg.choose_large):
            started = start_large_step(self, cfg.draft_tokens)
            if isinstance(started, str):
                return started
            pending = started
            try:
                draft = yield from self._write(small, cfg.draft_tokens, live=False)
                if draft.halt is None and not cfg.not_reasoning:
                    decision = decide(self, draft.text)
            except BaseException:
                self._drop(pending)
                raise
            if draft.halt is not None:
                self._drop(pending)
                return draft.halt
            if not decision.delegate:
                if pending is not None:
                    self._drop(pending)
                    self.discarded_steps += 1
                return (yield from self._keep_neutral(draft, start))
        return (yield from self._delegate(start, position, draft, decision, pending))

    def _delegate(
        self,
        start: int,
        position: int,
        draft: _Step | None,
        decision: Decision,
        pending: _PendingStep | None,
    ) -> Generator[Event, None, Round | Halt]:
        """The large model writes the step too; the keep-large rule picks one; maybe verify."""
        cfg = self.cfg
        s = label(draft.text, cfg) if draft is not None else None
        if pending is not None:
            large = finish_large_step(self, pending)
            assert draft is not None
            if large.halt is None:
                elapsed = self.clock() - pending.started
                self.saved += max(0.0, draft.seconds + large.seconds - elapsed)
        else:
            first = draft.ids if draft is not None else ()
            large = yield from self._write(
                self.tracks["large"], cfg.draft_tokens, live=False, first=first
            )
        if large.halt is not None:
            return large.halt
        l_label = label(large.text, cfg)
        large_kept = keep_large(
            s, l_label, choose_large=cfg.choose_large, not_reasoning=cfg.not_reasoning
        )
        kept_role: Role = "large" if large_kept or draft is None else "small"
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
            reason=decision.reason,
            score=decision.score,
        )
        kept = large if kept_role == "large" or draft is None else draft
        if kept is draft and self.verified:
            self._hold(self.tracks["small"], draft)  # its session proposed since the draft
        kept = yield from self._commit(self.tracks[kept_role], kept)
        yield delegation
        if kept.halt is not None:
            return kept.halt
        if label(kept.text, cfg) < 0:
            self.negatives += 1
        if self.answer_switch:
            return False, ""
        if wants_verify(kept.text, cfg):
            halt = yield from self._large_live(
                "verify", cfg.verify_tokens, "verify word in the step"
            )
            if halt is not None:
                return halt
        return False, self._carry(start)

    def _recap(self, start: int) -> Generator[Event, None, Round | Halt]:
        """Enough negative steps: the recap prompt, the large model recaps, the schedule grows."""
        ended = yield from self._insert(self.cfg.recap_prompt)
        if ended is not None:
            return ended
        reason = f"{self.negatives} negative steps >= {self.recap.after}"
        halt = yield from self._large_live("recap", self.recap.budget, reason)
        if halt is not None:
            return halt
        self.negatives = 0
        self.recap = self.recap.next(self.cfg)
        return False, self._carry(start)

    def _keep_neutral(self, draft: _Step, start: int) -> Generator[Event, None, Round | Halt]:
        """Keep a neutral draft; a trigger inside it is the next boundary, as it would have been."""
        small = self.tracks["small"]
        region = self._carry(start)  # the think word, if any
        cut = trigger_end(region + draft.text, self.cfg.triggers)
        if cut is not None:
            n = ids_covering(draft.ends, cut - len(region))
            small.session.truncate(draft.start + n)
            draft = draft.cut(n)
        draft = yield from self._commit(small, draft)
        if draft.halt is not None:
            return draft.halt
        return (True, "") if cut is not None else (False, self._carry(start))

    def _drop(self, pending: _PendingStep | None) -> None:
        """Discard a concurrent large step nobody will see (its tokens are counted at the end)."""
        if pending is not None:
            pending.discard()
            self.discarded.append(pending)

    def _carry(self, start: int) -> str:
        """Output text of the current round: since ``start``, after the last trigger in it."""
        return carry_text(self.out.text[start:], self.cfg.triggers)

    def _large_live(
        self, kind: DelegationKind, budget: int, reason: str
    ) -> Generator[Event, None, Halt | None]:
        """The large model writes into the output (begin, verify, recap): one delegation."""
        large = self.tracks["large"]
        halt = self._budget_stop(large)
        if halt is not None:
            return halt
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
                large_label=label(text, self.cfg),
                small_tokens=0,
                large_tokens=large.usage.kept_tokens - kept_before,
                seconds=self.clock() - started,
                reason=reason,
            )

        try:
            step = yield from self._write(large, budget, live=True)
        except _LargeFault:
            if large.usage.kept_tokens > kept_before:
                yield event()
            raise
        # Reported when it ended the request or wrote something before a budget stopped it.
        if step.halt is None or ends_request(step.halt) or large.usage.kept_tokens > kept_before:
            yield event()
        return step.halt

    # ------------------------------------------------------------ budgets
    def _large_spent(self) -> Iterator[Event]:
        """``max_large_tokens`` is spent: say so once and go on in small mode."""
        limit = self.cfg.max_large_tokens
        assert limit is not None
        self.large_exhausted = True
        self.mode = "small"
        yield BudgetEvent(
            budget="max_large_tokens",
            limit=limit,
            spent=self.tracks["large"].usage.generated_tokens,
            position=len(self.out.text),
        )
