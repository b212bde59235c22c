"""Incremental detokenization: text deltas from a growing list of token ids.

Decoding one token alone is wrong for many tokenizers (SentencePiece drops a leading space,
byte-level BPE splits multi-byte characters), so each delta is the difference between decoding a
short window with and without the newest ids, the window starting a few tokens back. A delta is
held back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer"]

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Turns pushed token ids into text deltas that never split a character.

    Args:
        decode: The tokenizer's decode function.
        context: Ids written before the first pushed id (their text is not returned; they make
            the first delta's spacing right).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(context)
        self._read = len(self._ids)
        self._prefix = max(0, self._read - 4)
        # The window must not start inside a multi-byte character of the context.
        while self._prefix > 0 and decode(self._ids[self._prefix : self._read]).startswith(
            _REPLACEMENT
        ):
            self._prefix -= 1

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly empty)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return any held-back text, even if it ends in an incomplete character."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if not full_text.startswith(prefix_text):
            # Rare tokenizer normalisation at the window start: fall back to the whole window.
            prefix_text = prefix_text[: _common_prefix(prefix_text, full_text)]
        if full_text.endswith(_REPLACEMENT) and not final:
            return ""
        delta = full_text[len(prefix_text) :]
        if delta or final:
            self._prefix, self._read = self._read, len(self._ids)
        return delta


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
