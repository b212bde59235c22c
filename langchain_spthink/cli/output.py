"""How ``spthink run`` shows a request: marked text, JSON event lines, the summary line."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import IO, Any

from langchain_spthink.engine import events as ev

__all__ = [
    "TextRenderer",
    "delegation_kinds",
    "describe",
    "event_json",
    "summary_line",
    "use_color",
]

_ANSI = {"large": "\x1b[1;36m", "inserted": "\x1b[3;33m"}
_RESET = "\x1b[0m"
_EVENT_TYPES: dict[type, str] = {
    ev.TextEvent: "text",
    ev.DelegationEvent: "delegation",
    ev.FallbackEvent: "fallback",
    ev.BudgetEvent: "budget",
    ev.FinishEvent: "finish",
}


class TextRenderer:
    """Writes text events, marking who wrote what: ANSI colours or ``[[author: ...]]``."""

    def __init__(self, out: IO[str], *, color: bool) -> None:
        self.out = out
        self.color = color
        self.current = "small"
        self.at_line_start = True

    def _emit(self, text: str) -> None:
        if text:
            self.out.write(text)
            if not text.startswith("\x1b"):
                self.at_line_start = text.endswith("\n")

    def write(self, event: ev.TextEvent) -> None:
        """Write one text event, switching the marking when the author changes."""
        if event.author != self.current:
            self._close()
            self._open(event.author)
        self._emit(event.text)
        self.out.flush()

    def _open(self, author: str) -> None:
        self.current = author
        if author != "small":
            self._emit(_ANSI[author] if self.color else f"[[{author}: ")

    def _close(self) -> None:
        if self.current != "small":
            self._emit(_RESET if self.color else "]]")
        self.current = "small"

    def finish(self) -> None:
        """Close an open marking and end the line."""
        self._close()
        if not self.at_line_start:
            self.out.write("\n")
        self.out.flush()


def delegation_kinds(delegations: Iterable[ev.DelegationEvent]) -> Counter[str]:
    """Delegations counted by kind."""
    return Counter(d.kind for d in delegations)


def summary_line(
    finish: ev.FinishEvent,
    kinds: Mapping[str, int],
    *,
    small_name: str | None,
    large_name: str | None,
) -> str:
    """The one-line summary printed after the answer."""
    out = finish.output_tokens
    parts = []
    if small_name is not None:
        parts.append(f"small {small_name}: {finish.small.kept_tokens} tok")
    if large_name is not None:
        parts.append(
            f"large {large_name}: {finish.large.kept_tokens} tok "
            f"({100.0 * finish.large_share:.1f}% of output)"
        )
    if finish.large_decoding == "verified" and finish.large.generated_tokens:
        rate = finish.large.acceptance_rate
        parts.append(
            f"verified: {finish.large.decode_passes} large passes for "
            f"{finish.large.generated_tokens} tok"
            + ("" if rate is None else f", {100.0 * rate:.0f}% of proposals accepted")
        )
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    parts.append(f"delegations: {finish.delegations}" + (f" ({by_kind})" if by_kind else ""))
    rate = out / finish.seconds if finish.seconds > 0 else 0.0
    parts.append(f"{out} tok in {finish.seconds:.1f} s, {rate:.1f} tok/s")
    parts.append(f"stop: {finish.stop_reason}")
    if finish.mode != "speculative":
        parts.append(f"mode: {finish.mode}")
    spent = [
        name
        for name, flag in (
            ("max_large_tokens", "large_exhausted"),
            ("max_reasoning_tokens", "reasoning_exhausted"),
        )
        if finish.budgets.get(flag)
    ]
    if spent:
        parts.append("budget spent: " + ", ".join(spent))
    return "-- " + " | ".join(parts)


def event_json(event: ev.Event, kinds: Mapping[str, int]) -> str:
    """One event as a JSON line (the finish event with totals and usage)."""
    data: dict[str, Any] = {"type": _EVENT_TYPES[type(event)], **asdict(event)}
    if isinstance(event, ev.FinishEvent):
        prompt = event.small.prompt_tokens or event.large.prompt_tokens
        data["output_tokens"] = event.output_tokens
        data["large_share"] = event.large_share
        data["delegations_by_kind"] = dict(kinds)
        data["usage"] = {
            "input_tokens": prompt,
            "output_tokens": event.output_tokens,
            "total_tokens": prompt + event.output_tokens,
        }
    return json.dumps(data, ensure_ascii=False)


def use_color(choice: str, stream: IO[str]) -> bool:
    """Whether to colour: ``always`` / ``never``, or ``auto`` (a terminal, NO_COLOR unset)."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def describe(event: ev.DelegationEvent) -> str:
    """A one-line description of a delegation (``spthink run -v``)."""
    kept = f"kept {event.kept}"
    labels = f"small {event.small_label}, large {event.large_label}"
    return (
        f"[delegation {event.kind} at {event.position}: {event.large_tokens} large tokens, "
        f"{kept}, labels {labels}, {event.seconds:.2f} s] large: {event.large_text!r}"
        + (f" | small draft: {event.small_draft!r}" if event.small_draft is not None else "")
    )
