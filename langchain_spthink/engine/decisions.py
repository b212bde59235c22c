"""The decisions of the control loop (ALGORITHM.md), as pure functions of text and counters.

Nothing here touches a session, the output or a clock: every function maps its arguments to a
value, so each rule of the algorithm is unit-tested directly and the loop
(:mod:`langchain_spthink.engine.loop`) only sequences them.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from langchain_spthink.engine.cues import classify, contains_any

if TYPE_CHECKING:
    from langchain_spthink.engine.config import SpeculativeThinkingConfig

__all__ = [
    "BEGIN_SHARE",
    "PROBE_EVERY",
    "Recap",
    "begin_budget",
    "carry_text",
    "ids_covering",
    "keep_large",
    "label",
    "next_proposal_length",
    "marker_end",
    "step_seed",
    "trigger_end",
    "wants_verify",
]

BEGIN_SHARE = 2
"""The large model's opening takes at most 1/BEGIN_SHARE of a request's ``max_tokens``."""


def begin_budget(begin_tokens: int, max_tokens: int) -> int:
    """Length of the large model's opening: ``begin_tokens``, capped at half of ``max_tokens``.

    The paper's opening is 100 tokens whatever the budget; with a short budget (e.g. 20) that
    would leave the small model nothing to write, so the opening never takes more than half.
    0 (no opening) when ``max_tokens < 2``.
    """
    return min(begin_tokens, max_tokens // BEGIN_SHARE)


def label(text: str, cfg: SpeculativeThinkingConfig) -> int:
    """The cue label of a step (-1, 0 or +1) under the config's cue words (ALGORITHM.md)."""
    return classify(
        text,
        positive=cfg.positive_words,
        negative=cfg.negative_words,
        verify=cfg.verify_words,
        word_boundary=cfg.word_boundary,
    )


def wants_verify(text: str, cfg: SpeculativeThinkingConfig) -> bool:
    """Whether the large model continues for ``verify_tokens`` after the kept step ``text``."""
    return bool(cfg.verify_tokens) and contains_any(
        text, cfg.verify_words, word_boundary=cfg.word_boundary
    )


def keep_large(small: int | None, large: int, *, choose_large: bool, not_reasoning: bool) -> bool:
    """Whether a delegated boundary keeps the large model's step (step 3 of ALGORITHM.md).

    Args:
        small: Label of the small draft; ``None`` when none was drafted (kept large).
        large: Label of the large model's step.
        choose_large: The config's ``choose_large``.
        not_reasoning: The config's ``not_reasoning``.

    Returns:
        True to keep the large step: with ``choose_large``; without a draft; for a neutral draft
        outside ``not_reasoning`` (a policy other than the cue words delegated it, so its call
        decides, not the labels); or when the labels disagree (``s < 0 <= l`` or ``s > 0 > l``).
    """
    if choose_large or small is None or (small == 0 and not not_reasoning):
        return True
    return (small < 0 <= large) or (small > 0 > large)


@dataclass(frozen=True)
class Recap:
    """The recap schedule: after ``after`` negative steps the large model recaps ``budget`` tokens.

    Invariant: ``budget <= recap_tokens_max`` and ``after <= recap_after_max`` of the config the
    schedule started from (:meth:`first`), since :meth:`next` only grows them up to the caps.
    """

    budget: int
    after: int

    @classmethod
    def first(cls, cfg: SpeculativeThinkingConfig) -> Recap:
        """The schedule of a new request: ``recap_tokens`` after ``recap_after_negatives``."""
        return cls(cfg.recap_tokens, cfg.recap_after_negatives)

    def due(self, negatives: int) -> bool:
        """Whether ``negatives`` negative steps call for a recap now."""
        return negatives >= self.after

    def next(self, cfg: SpeculativeThinkingConfig) -> Recap:
        """The schedule after one recap: both grow by their step, capped."""
        return Recap(
            min(self.budget + cfg.recap_tokens_step, cfg.recap_tokens_max),
            min(self.after + cfg.recap_after_step, cfg.recap_after_max),
        )


def trigger_end(text: str, triggers: Sequence[str], start: int = 0) -> int | None:
    """End offset of the first trigger found in ``text`` at or after ``start`` (or ``None``).

    "First" is by end offset: of two overlapping triggers the one that is complete sooner wins.
    """
    found = [e + len(t) for t in triggers if (e := text.find(t, start)) >= 0]
    return min(found) if found else None


def carry_text(text: str, triggers: Sequence[str]) -> str:
    """The part of a round's ``text`` after the last trigger in it (all of it without one).

    The small model's next write scans it with its own text, so a trigger split between a kept
    step and the small model's first token is a boundary too.
    """
    ends = [text.rfind(t) + len(t) for t in triggers if t in text]
    return text[max(ends) :] if ends else text


def ids_covering(ends: Sequence[int], end: int, default: int | None = None) -> int:
    """How many ids of a step it takes to write its text up to offset ``end``.

    Args:
        ends: ``len(text)`` after each id of the step (non-decreasing).
        end: A text offset within the step.
        default: Index of the last id to keep when no id reaches ``end``; ``None`` raises.

    Returns:
        The smallest ``n`` with ``ends[n - 1] >= end`` (``default + 1`` when there is none).
    """
    for i, e in enumerate(ends):
        if e >= end:
            return i + 1
    if default is None:
        raise ValueError(f"no id of the step reaches offset {end}")
    return default + 1


def marker_end(before: str, text: str, marker: str) -> int | None:
    """End offset in ``text`` of an answer marker written by ``text`` after ``before``.

    The marker may start in the last ``len(marker) - 1`` characters of ``before``; it must end
    inside ``text``. Returns ``None`` when ``text`` completes no marker.
    """
    tail = before[max(0, len(before) - len(marker) + 1) :] if len(marker) > 1 else ""
    found = (tail + text).find(marker)
    return None if found < 0 else found + len(marker) - len(tail)


_ROLE_OFFSET = {"small": 0, "large": 1}


def step_seed(request_seed: int | None, role: Literal["small", "large"], step: int) -> int | None:
    """The seed of one sampled step of one model, derived from the request's seed.

    Step 0 of each model keeps the seeds sessions always opened with (``seed`` for the small
    model, ``seed + 1`` for the large one), so a request of one step samples as before; every
    later step gets its own seed (a CRC-32 of request seed, role and step, 31 bits), so no two
    steps of a request replay the same random stream, and one request seed reproduces a run.

    Args:
        request_seed: The request's seed; ``None`` (unseeded) stays ``None``.
        role: Which model samples.
        step: Index of the step among that model's sampled steps of the request (from 0).

    Returns:
        The step's seed, or ``None`` for an unseeded request.
    """
    if request_seed is None:
        return None
    if step == 0:
        return request_seed + _ROLE_OFFSET[role]
    return zlib.crc32(f"{request_seed}:{role}:{step}".encode()) & 0x7FFFFFFF


PROBE_EVERY = 8
"""Plain passes of a verified request whose proposals stopped (length 0) before it tries again."""


def next_proposal_length(length: int, proposed: int, accepted: int, start: int) -> int:
    """How many tokens the small model proposes next in a verified request.

    Grows by 2 after a fully accepted proposal (up to ``2 * start``); after a rejection it becomes
    one more than the tokens accepted, and at least 1 less than before, so a pair that keeps
    disagreeing reaches 0: plain passes (no proposal, no small-model cost), with a probe of
    length 1 every :data:`PROBE_EVERY` passes (the caller's count). A pass without proposal
    changes nothing.

    Args:
        length: The current proposal length.
        proposed: Tokens in the last proposal.
        accepted: How many of them the large model accepted.
        start: ``proposal_tokens`` of the config (the first length).
    """
    if proposed == 0:
        return length
    if accepted >= proposed:
        return min(2 * start, length + 2)
    return max(0, min(length - 1, accepted + 1))
