"""Draft-verified large steps: the large model checks the small model's proposed tokens.

Where both models share a tokenizer, a large-model write (reflection step, verify continuation,
recap, opening) need not decode one token per forward pass: the small model proposes a few
tokens, the large model scores them in one forward (:meth:`LocalSession.verify
<langchain_spthink.backends._common.LocalSession.verify>`) and keeps the longest prefix it agrees
with plus one token of its own. At a delegated boundary the first proposal is the small draft
just judged. Greedy: the ids are exactly those plain decoding writes (up to the numerics of a
k-token forward); sampling: each id is distributed as plain sampling would draw it
(:func:`~langchain_spthink.engine.sampling.verify_proposal`).

Invariants of :func:`verified_stream`:

* It yields the large model's ids one at a time like :meth:`Session.stream`; when the consumer
  stops (closes it), the large session is cropped to the ids yielded so far, so the session holds
  exactly what the consumer saw, as after a plain stream.
* The small session is a scratch pad for proposals: the caller syncs it to prompt + output and
  marks it as holding a draft, so the next :meth:`~langchain_spthink.engine.state.RunBase._sync`
  re-synchronises it (cropping, never re-forwarding the shared prefix).
* The small model's failure is not the large model's: it is re-raised as :class:`ProposerFault`,
  which the write re-raises as the small model's own error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from langchain_spthink.backends.base import VerifyingSession, close_stream
from langchain_spthink.engine.decisions import PROBE_EVERY, next_proposal_length
from langchain_spthink.engine.handoff import resync

if TYPE_CHECKING:
    from langchain_spthink.backends.base import Backend
    from langchain_spthink.engine.config import SpeculativeThinkingConfig
    from langchain_spthink.engine.steps import _Track

__all__ = ["Proposer", "ProposerFault", "verification_plan", "verified_stream"]


class ProposerFault(Exception):
    """The small model failed while proposing tokens for the large model to verify."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def verification_plan(
    cfg: SpeculativeThinkingConfig,
    small: Backend | None,
    large: Backend | None,
    share_ids: bool,
    large_session: object | None,
) -> tuple[bool, str]:
    """Whether a request's large-model steps are verified, and why (or why not).

    Args:
        cfg: The config (``verified_large``).
        small: The small model, if the request has one.
        large: The large model, if the request has one.
        share_ids: The models share a tokenizer (the output is handed off as ids).
        large_session: The request's large-model session (it must be able to verify).

    Returns:
        ``(verified, reason)``.
    """
    if small is None or large is None or large_session is None:
        return False, "one model writes alone"
    if not cfg.verified_large:
        return False, "verified_large is off in the config"
    if not share_ids:
        return False, f"{small.name} and {large.name} have different tokenizers"
    if not isinstance(large_session, VerifyingSession):
        if getattr(large, "is_remote", False):
            # vLLM scores given tokens only through prompt logprobs, which bypass its prefix
            # cache and recompute the whole prompt: slower than decoding the step.
            return False, (
                f"{large.name} is a remote server: scoring given tokens there recomputes the "
                "whole prompt (prompt logprobs bypass the prefix cache), so it decodes them"
            )
        return False, f"{large.name} cannot score given tokens: one forward pass per token"
    return True, f"{large.name} verifies tokens proposed by {small.name}"


@dataclass
class Proposer:
    """The small model proposing tokens for a request's verified large-model steps.

    Attributes:
        track: The small model's track; its session holds prompt + output when a step starts.
        start: ``proposal_tokens`` of the config: the first proposal length of a request.
        clock: The engine's clock.
        length: The current proposal length (it adapts; the request carries it from step to
            step); 0: plain passes until the next probe.
        idle: Plain passes since the proposals stopped.
        seconds: Time spent proposing so far (added to the small model's usage too).
    """

    track: _Track
    start: int
    clock: Callable[[], float]
    length: int = 0
    idle: int = 0
    seconds: float = 0.0

    def next_length(self, proposed: int, accepted: int) -> None:
        """Adapt the proposal length after a pass (see :func:`next_proposal_length`)."""
        self.length = next_proposal_length(self.length, proposed, accepted, self.start)
        if self.length == 0 and proposed == 0:
            self.idle += 1
            if self.idle >= PROBE_EVERY:
                self.length, self.idle = 1, 0

    def propose(self, base: int, written: Sequence[int], n: int) -> list[int]:
        """Up to ``n`` ids the small model writes after its first ``base`` ids + ``written``."""
        track = self.track
        session = track.session
        resync(session, base, written)
        n = min(n, track.backend.context_length - len(session.ids))
        if n <= 0:
            return []
        started = self.clock()
        out: list[int] = []
        stream = session.stream(n)
        try:
            for token in stream:
                out.append(token)
                if token in track.backend.eos_ids:
                    break
        except Exception as exc:
            raise ProposerFault(exc) from exc
        finally:
            close_stream(stream)
            seconds = self.clock() - started
            self.seconds += seconds
            track.usage.seconds += seconds
            track.usage.decode_passes += len(out)
        return out


def verified_stream(
    large: _Track, proposer: Proposer, budget: int, first: Sequence[int] = ()
) -> Iterator[int]:
    """The large model's next ids (up to ``budget``), written by verifying proposals.

    Args:
        large: The large model's track; its session holds prompt + output (+ a draft).
        proposer: The small model, its session holding its prompt + the same output.
        budget: Most ids to yield.
        first: The first proposal (the small draft of this boundary), if any.

    Yields:
        Ids of the large model, each already in its session.

    Raises:
        ProposerFault: The small model failed while proposing.
    """
    session = large.session
    if not isinstance(session, VerifyingSession):
        raise TypeError(f"{large.backend.name}'s session cannot verify proposals")
    base, small_base = len(session.ids), len(proposer.track.session.ids)
    eos = large.backend.eos_ids
    written: list[int] = []  # ids the large model wrote in this step, all yielded
    proposal = list(first)
    try:
        while len(written) < budget:
            room = budget - len(written)
            if not proposal and proposer.length:
                proposal = proposer.propose(small_base, written, min(proposer.length, room - 1))
            proposal = proposal[: room - 1]
            new = session.verify(proposal)
            accepted = _agreeing(proposal, new)
            large.usage.decode_passes += 1
            large.usage.proposed_tokens += len(proposal)
            large.usage.accepted_tokens += accepted
            proposer.next_length(len(proposal), accepted)
            proposal = []
            for token in new:
                written.append(token)
                yield token
                if token in eos:
                    return
    finally:
        if len(session.ids) > base + len(written):
            session.truncate(base + len(written))


def _agreeing(proposal: Sequence[int], new: Sequence[int]) -> int:
    """Leading ids of ``proposal`` that ``new`` repeats: the accepted ones.

    A replacement for a rejected id always differs from it.
    """
    n = 0
    for a, b in zip(proposal, new, strict=False):
        if a != b:
            break
        n += 1
    return n
