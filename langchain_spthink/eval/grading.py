r"""Answer extraction and grading.

* ``math`` (MATH500, AIME, AMC): the content of the **last** ``\boxed{...}`` (nested braces
  allowed) is checked for mathematical equivalence with the reference by `math-verify
  <https://github.com/huggingface/Math-Verify>`_ (``parse`` + ``verify``: fractions, intervals,
  sets, tuples, units, ``\text``, ``x = ...``). Without a box, math-verify extracts an answer from
  the whole text (its "final answer is" anchors, then the last expression).
* ``numeric`` (GSM8K): the last box, else the number announced by the last "final answer is" /
  ``####`` (the first number of that sentence, or the first after its last ``=``), else the
  last number in the text, compared as an exact rational number
  (``1,000`` = ``1000``, ``$18`` = ``18``, ``18.0`` = ``18``); LaTeX inside a box
  (``\frac{3}{2}``) is read by math-verify.

Grading never raises: a parse failure or timeout is an incorrect answer with ``error`` set.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from langchain_spthink.eval.datasets import GraderKind

__all__ = ["Grade", "grade", "last_boxed", "parse_number"]

Source = Literal["boxed", "anchor", "last_number", "text"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_ANCHORS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?!\d)|\n")
_TEXT_BLOCK = re.compile(r"\\(?:text|textbf|mbox|mathrm|operatorname)\s*\{[^{}]*\}")
_PLAIN = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_FRACTION = re.compile(r"([-+]?\d+)/(\d+)")


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer.

    Attributes:
        correct: Whether the extracted answer equals the reference.
        extracted: The extracted answer as text (``None``: nothing found).
        source: Where it came from: ``boxed`` (the last box), ``anchor`` ("final answer is" /
            ``####``), ``last_number``, ``text`` (math-verify on the whole text), or ``None``.
        error: Why grading failed (parse error, timeout), else ``None``.
    """

    correct: bool
    extracted: str | None
    source: Source | None
    error: str | None = None


def _box_content(text: str, start: int) -> str | None:
    """Content of the box whose command ends at ``start`` (``None``: unbalanced or empty)."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # "\boxed 5": up to the next space or "$"
        match = re.match(r"[^\s$]+", text[i:])
        return match.group(0) if match and start < i else None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # an escaped character (\{, \}, \\) never opens or closes
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = text[i + 1 : j].strip()
                return content or None
        j += 1
    return None


def last_boxed(text: str) -> str | None:
    r"""Content of the last complete, non-empty ``\boxed{...}`` (or ``\fbox{...}``) in ``text``.

    Braces nest (``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``); an unclosed box (a truncated
    answer) or an empty one (an echoed instruction "within \boxed{}") is skipped in favour of
    the box before it.
    """
    positions = sorted(
        (
            m.end()
            for cmd in _BOX_COMMANDS
            for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text)
        ),
        reverse=True,
    )
    for end in positions:
        content = _box_content(text, end)
        if content is not None:
            return content
    return None


def parse_number(text: str) -> Fraction | None:
    r"""Read a plain number written the GSM8K way, or ``None``.

    Accepts thousands separators (``1,000``; also ``1{,}000``), currency and percent signs
    (``$``, ``\$``, ``%``), ``\text{...}`` units, a leading ``x =``, a trailing period, decimals
    (``18.0`` = ``18``) and ``a/b``.
    """
    s = _TEXT_BLOCK.sub("", text)
    s = s.replace("{,}", ",").replace("\\$", "").replace("\\%", "").replace("\\!", "")
    s = s.replace("\\,", "").replace("$", "").replace("%", "").replace("~", "")
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = "".join(s.split()).rstrip(".")
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)
    if _PLAIN.fullmatch(s):
        return Fraction(s)
    if match := _FRACTION.fullmatch(s):
        denominator = int(match.group(2))
        return Fraction(int(match.group(1)), denominator) if denominator else None
    return None


def _anchored_number(text: str, start: int) -> str | None:
    """The number an anchor announces, from the sentence that follows it.

    The first number after the sentence's last ``=`` ("the final answer is 16 * 4 = 64 ducks."
    gives 64), else its first number.
    """
    sentence = _SENTENCE_END.split(text[start:], maxsplit=1)[0]
    found = _NUMBER.search(sentence.rsplit("=", 1)[-1]) or _NUMBER.search(sentence)
    return found.group(0) if found else None


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def _math_verify() -> Any:
    import math_verify  # type: ignore[import-untyped, unused-ignore]

    return math_verify


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only works in the main thread.
    return 5 if threading.current_thread() is threading.main_thread() else None


@contextlib.contextmanager
def _outer_alarm_kept() -> Iterator[None]:
    """Re-arm a timer set by the caller (e.g. pytest-timeout) that math-verify's alarm cancels."""
    if not hasattr(signal, "setitimer") or _timeout() is None:
        yield
        return
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    try:
        yield
    finally:
        if remaining > 0:
            left = remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), interval)


def _parse_latex(text: str, *, math: bool = True) -> list[Any]:
    mv = _math_verify()
    wrapped = text if not math else f"${text}$"
    with _outer_alarm_kept():
        result = mv.parse(wrapped, parsing_timeout=_timeout())
        if not result and math:
            result = mv.parse(text, parsing_timeout=_timeout())
    return list(result)


def _verify(gold: list[Any], pred: list[Any]) -> bool:
    with _outer_alarm_kept():
        return bool(_math_verify().verify(gold, pred, timeout_seconds=_timeout()))


def _sympy_number(parsed: list[Any]) -> Fraction | None:
    if not parsed:
        return None
    value = parsed[0]
    try:
        if getattr(value, "is_number", False) and getattr(value, "is_real", False):
            number = Fraction(str(value.evalf(30) if not value.is_Rational else value))
            return number
    except (ValueError, TypeError, ZeroDivisionError):
        return None
    return None


def _grade_numeric(text: str, reference: str) -> Grade:
    expected = parse_number(reference)
    boxed = last_boxed(text)
    source: Source
    if boxed is not None:
        candidate, source = boxed, "boxed"
    else:
        anchors = list(_ANCHORS.finditer(text))
        after = _anchored_number(text, anchors[-1].end()) if anchors else None
        if after is not None:
            candidate, source = after, "anchor"
        else:
            last = _last_number(text)
            if last is None:
                return Grade(False, None, None)
            candidate, source = last, "last_number"
    value = parse_number(candidate)
    if value is None and source == "boxed":
        value = _sympy_number(_parse_latex(candidate))
        if value is None and (inner := _last_number(candidate)) is not None:
            value = parse_number(inner)
    if expected is None:  # a non-numeric reference: fall back to equivalence
        return Grade(_verify(_parse_latex(reference), _parse_latex(candidate)), candidate, source)
    return Grade(value is not None and value == expected, candidate, source)


def _grade_math(text: str, reference: str) -> Grade:
    gold = _parse_latex(reference)
    boxed = last_boxed(text)
    if boxed is not None:
        pred = _parse_latex(f"\\boxed{{{boxed}}}", math=False)
        return Grade(bool(gold) and _verify(gold, pred), boxed, "boxed")
    pred = _parse_latex(text, math=False)
    if not pred:
        return Grade(False, None, None)
    extracted = str(pred[-1]) if isinstance(pred[-1], str) else str(pred[0])
    return Grade(bool(gold) and _verify(gold, pred), extracted, "text")


def grade(text: str, reference: str, kind: GraderKind = "math") -> Grade:
    """Grade a model's answer against the reference answer.

    Args:
        text: The model's whole output.
        reference: The reference final answer (LaTeX or a number).
        kind: ``math`` (equivalence by math-verify) or ``numeric`` (GSM8K numbers).

    Returns:
        The verdict, with the extracted answer and where it came from.
    """
    try:
        if kind == "numeric":
            return _grade_numeric(text, reference)
        return _grade_math(text, reference)
    except Exception as exc:  # math-verify timeouts, sympy errors: never stop a run
        return Grade(False, last_boxed(text), "boxed" if last_boxed(text) else None, repr(exc))
