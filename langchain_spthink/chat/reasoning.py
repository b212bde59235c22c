"""The split of streamed output into reasoning (``<think>…</think>``) and answer content.

:class:`ReasoningSplitter` works incrementally (a tag split across chunks is still recognised);
:func:`opens_reasoning` tells whether a rendered prompt already opened the think block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["Part", "ReasoningSplitter", "opens_reasoning"]

Part = Literal["reasoning", "content"]


def opens_reasoning(backend: Any, prompt_ids: Sequence[int]) -> bool:
    """Whether the rendered prompt ends inside an open ``<think>`` (templates that pre-open it)."""
    try:
        tail = str(backend.decode(list(prompt_ids[-8:])))
    except Exception:  # noqa: BLE001 - a best-effort look at the prompt's end
        return False
    return tail.rstrip().endswith("<think>")


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReasoningSplitter:
    """Split streamed text into reasoning (inside ``<think>…</think>``) and answer content.

    Text is fed in arbitrary pieces; :meth:`feed` returns the parts that are certain, holding back
    only what could still be the start of a tag (and, inside reasoning, trailing whitespace that
    may precede the closing tag). Whitespace right after a tag is dropped, and so is a closing
    tag that no opening tag precedes (its text stays content: streamed text cannot be taken back;
    templates that open the think block in the prompt are handled by ``in_reasoning``).

    Args:
        in_reasoning: The output starts inside a think block (the prompt opened it).
        open_tag: Tag that starts reasoning.
        close_tag: Tag that ends reasoning.
    """

    def __init__(
        self, *, in_reasoning: bool = False, open_tag: str = "<think>", close_tag: str = "</think>"
    ) -> None:
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.in_reasoning = in_reasoning
        self.raw = ""
        self.spans: list[list[int]] = [[0, -1]] if in_reasoning else []
        self._buf = ""
        self._base = 0  # raw offset of the start of the buffer
        self._strip_lead = in_reasoning

    @property
    def reasoning_raw(self) -> str:
        """The raw text of every reasoning region, tags included."""
        return "".join(self.raw[s : (e if e >= 0 else len(self.raw))] for s, e in self.spans)

    def _emit(self, out: list[tuple[Part, str]], text: str, *, closing: bool = False) -> None:
        if self._strip_lead:
            text = text.lstrip()
            if text:
                self._strip_lead = False
        if closing and self.in_reasoning:
            text = text.rstrip()
        if text:
            part: Part = "reasoning" if self.in_reasoning else "content"
            if out and out[-1][0] == part:
                out[-1] = (part, out[-1][1] + text)
            else:
                out.append((part, text))

    def _consume(self, n: int) -> None:
        self._buf = self._buf[n:]
        self._base += n

    def feed(self, text: str) -> list[tuple[Part, str]]:
        """Add output text; return the ``(part, text)`` pieces that are now certain."""
        self.raw += text
        self._buf += text
        out: list[tuple[Part, str]] = []
        while True:
            if self.in_reasoning:
                at, tag = self._buf.find(self.close_tag), self.close_tag
            else:
                at, tag = self._buf.find(self.open_tag), self.open_tag
                stray = self._buf.find(self.close_tag)
                if stray >= 0 and (at < 0 or stray < at):
                    # A closing tag without an opening one: drop the tag, keep the text.
                    self._emit(out, self._buf[:stray])
                    self._consume(stray + len(self.close_tag))
                    self._strip_lead = True
                    continue
            if at < 0:
                break
            self._emit(out, self._buf[:at], closing=True)
            end = at + len(tag)
            if self.in_reasoning:
                self.spans[-1][1] = self._base + end
            else:
                self.spans.append([self._base + at, -1])
            self._consume(end)
            self.in_reasoning = not self.in_reasoning
            self._strip_lead = True
        keep = _partial_suffix(self._buf, self.close_tag)
        if not self.in_reasoning:
            keep = max(keep, _partial_suffix(self._buf, self.open_tag))
        upto = len(self._buf) - keep
        if self.in_reasoning:
            upto = len(self._buf[:upto].rstrip())
        self._emit(out, self._buf[:upto])
        self._consume(upto)
        return out

    def flush(self) -> list[tuple[Part, str]]:
        """Return whatever is still held back (the output has ended)."""
        out: list[tuple[Part, str]] = []
        self._emit(out, self._buf, closing=True)
        self._consume(len(self._buf))
        return out
