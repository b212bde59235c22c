"""Reflection-cue word lists and the paper's step classifier (pure functions).

``classify`` reproduces the reference behaviour exactly: case-insensitive *substring* counting
("another" matches inside "anotherly", "yes" inside "eyes"). A word-boundary matcher is offered
as an option for users who prefer it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "VERIFY_WORDS",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "count_words",
    "classify",
    "contains_any",
]

VERIFY_WORDS: tuple[str, ...] = ("verify", "think again", "recap", "check")
NEGATIVE_WORDS: tuple[str, ...] = ("wait", "alternatively", "hold on", "another")
POSITIVE_WORDS: tuple[str, ...] = ("yeah", "yes", "final answer", "confident")


@lru_cache(maxsize=64)
def _boundary_pattern(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(word.lower()) + r"(?!\w)")


def count_words(text: str, words: Sequence[str], *, word_boundary: bool = False) -> int:
    """Count total case-insensitive occurrences of ``words`` in ``text``.

    Args:
        text: The text to search.
        words: Cue words or phrases.
        word_boundary: Count whole words only instead of raw substrings.

    Returns:
        The summed number of (non-overlapping, per word) occurrences.
    """
    lowered = text.lower()
    if word_boundary:
        return sum(len(_boundary_pattern(w).findall(lowered)) for w in words if w)
    return sum(lowered.count(w.lower()) for w in words if w)


def contains_any(text: str, words: Sequence[str], *, word_boundary: bool = False) -> bool:
    """Whether ``text`` contains at least one of ``words`` (case-insensitive)."""
    return count_words(text, words, word_boundary=word_boundary) > 0


def classify(
    text: str,
    *,
    positive: Sequence[str] = POSITIVE_WORDS,
    negative: Sequence[str] = NEGATIVE_WORDS,
    verify: Sequence[str] = VERIFY_WORDS,
    word_boundary: bool = False,
) -> int:
    """Classify a reasoning step as positive (+1), negative (-1) or neutral (0).

    ``pos`` counts positive words; ``neg`` counts negative *and* verify words.
    ``pos > neg`` gives +1, ``neg > pos`` gives -1, a tie with at least one cue gives -1,
    and no cue at all gives 0.

    Args:
        text: The step's text.
        positive: Words that cue confirmation.
        negative: Words that cue backtracking or a new attempt.
        verify: Words that cue a checking step (counted as negative).
        word_boundary: Match whole words only instead of raw substrings.

    Returns:
        -1, 0 or +1.
    """
    pos = count_words(text, positive, word_boundary=word_boundary)
    neg = count_words(text, negative, word_boundary=word_boundary) + count_words(
        text, verify, word_boundary=word_boundary
    )
    if pos > neg:
        return 1
    if neg > pos:
        return -1
    return -1 if pos > 0 else 0
