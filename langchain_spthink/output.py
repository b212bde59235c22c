"""The shared output of a request: its text, who wrote which part, and stop-string handling."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from langchain_spthink.events import Author, TextEvent

__all__ = ["SharedOutput"]


class SharedOutput:
    """Append-only output text (and ids, when both models share a tokenizer).

    Text is emitted as :class:`TextEvent` s lagging ``len(longest stop) - 1`` characters behind
    the end, so a stop string split over two appends is never streamed. ``version`` grows with
    every append; a model whose session reflects an older version must re-synchronise.

    Args:
        stop: Stop strings; the output ends before the first occurrence of any.
        share_ids: Keep the output ids too (same-tokenizer hand-off).
    """

    def __init__(self, stop: Sequence[str] = (), *, share_ids: bool) -> None:
        self.text = ""
        self.ids: list[int] | None = [] if share_ids else None
        self.version = 0
        self._stop = tuple(stop)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._emitted = 0
        self._authors: list[tuple[int, Author]] = []  # (start offset, author), increasing

    def append(self, author: Author, text: str, ids: Sequence[int]) -> bool:
        """Append a piece of output. Returns True when a stop string now ends the output."""
        if self.ids is not None:
            self.ids.extend(ids)
        self.version += 1
        if not text:
            return False
        if not self._authors or self._authors[-1][1] != author:
            self._authors.append((len(self.text), author))
        scan_from = max(0, len(self.text) - self._holdback)
        self.text += text
        hits = [p for p in (self.text.find(s, scan_from) for s in self._stop) if p >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return True
        return False

    def author_at(self, offset: int) -> Author:
        """Who wrote the character at ``offset``."""
        author: Author = "small"
        for start, who in self._authors:
            if start > offset:
                break
            author = who
        return author

    def segments(self) -> list[tuple[Author, str]]:
        """The output split into maximal runs of one author."""
        bounds = [start for start, _ in self._authors] + [len(self.text)]
        return [
            (who, self.text[bounds[i] : bounds[i + 1]])
            for i, (_, who) in enumerate(self._authors)
            if bounds[i] < bounds[i + 1]
        ]

    def drain(self, *, final: bool) -> Iterator[TextEvent]:
        """Yield the text that can no longer be cut by a stop string, split by author."""
        end = len(self.text) if final else len(self.text) - self._holdback
        while self._emitted < end:
            author = self.author_at(self._emitted)
            nxt = next((s for s, _ in self._authors if s > self._emitted), len(self.text))
            upto = min(end, nxt)
            yield TextEvent(self.text[self._emitted : upto], author)
            self._emitted = upto
