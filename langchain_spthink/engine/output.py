"""The shared output of a request: its text, who wrote which part, and stop-string handling."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

from langchain_spthink.engine.events import Author, TextEvent

#: Why an append ended the output: a request stop string, or a model's own stop text (its turn
#: ended, like an EOS token).
OutputEnd = Literal["stop", "eos"]

__all__ = ["OutputEnd", "SharedOutput"]


class SharedOutput:
    """Append-only output text (and ids, when both models share a tokenizer).

    Text is emitted as :class:`TextEvent` s lagging ``len(longest stop) - 1`` characters behind
    the end, so a stop string split over two appends is never streamed. ``version`` grows with
    every append; a model whose session reflects an older version must re-synchronise.

    Args:
        stop: Stop strings; the output ends before the first occurrence of any.
        share_ids: Keep the output ids too (same-tokenizer hand-off).
        end_texts: Per author, texts that end that author's turn (a model's textual EOS, e.g. a
            base model starting a new ``Question:``); matched only inside one run of that
            author's text (one that starts a line may begin with that line's newline), and the
            output ends before them.
    """

    def __init__(
        self,
        stop: Sequence[str] = (),
        *,
        share_ids: bool,
        end_texts: Mapping[Author, Sequence[str]] | None = None,
    ) -> None:
        self.text = ""
        self.ids: list[int] | None = [] if share_ids else None
        self.version = 0
        self._stop = tuple(stop)
        self._ends = {a: tuple(t) for a, t in (end_texts or {}).items() if t}
        longest = max((len(s) for s in (*self._stop, *sum(self._ends.values(), ()))), default=1)
        self._holdback = longest - 1
        self._emitted = 0
        self._authors: list[tuple[int, Author]] = []  # (start offset, author), increasing

    def append(self, author: Author, text: str, ids: Sequence[int]) -> OutputEnd | None:
        """Append a piece of output. Returns why the output now ends, or ``None``."""
        if self.ids is not None:
            self.ids.extend(ids)
        self.version += 1
        if not text:
            return None
        if not self._authors or self._authors[-1][1] != author:
            self._authors.append((len(self.text), author))
        scan_from = max(0, len(self.text) - self._holdback)
        run_start = self._authors[-1][0]
        self.text += text
        hits = [(p, "stop") for p in (self.text.find(s, scan_from) for s in self._stop) if p >= 0]
        # A run that starts a line may start with an end text's leading newline already written
        # (e.g. "\nQuestion:" right after a paragraph break): match from that newline, cut after it.
        line_start = run_start > 0 and self.text[run_start - 1] == "\n"
        own_from = max(scan_from, run_start - 1 if line_start else run_start)
        hits += [
            (max(p, run_start), "eos")
            for p in (self.text.find(s, own_from) for s in self._ends.get(author, ()))
            if p >= 0
        ]
        if hits:
            cut, reason = min(hits)
            self.text = self.text[:cut]
            return "stop" if reason == "stop" else "eos"
        return None

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
