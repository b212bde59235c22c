"""Answer extraction and grading: math-verify equivalence, GSM8K numbers, boxed extraction."""

from __future__ import annotations

from fractions import Fraction

import pytest

from langchain_spthink.eval import grade, last_boxed, parse_number

# --------------------------------------------------------------------------- boxed extraction


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (r"so \boxed{4}.", "4"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
        (r"\boxed{x^{2} + \left(1\right)}", r"x^{2} + \left(1\right)"),
        (r"first \boxed{3}, then \boxed{5}", "5"),  # several boxes: the last one
        (r"\boxed{1} \boxed{\frac{2}{3}} and \boxed{7}", "7"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not count
        (r"\boxed {12}", "12"),
        (r"\boxed 5$ done", "5"),
        (r"\fbox{8}", "8"),
        (r"answer \boxed{3} then cut \boxed{\frac{1}", "3"),  # unclosed (truncated): skipped
        (r"put it within \boxed{} ... \boxed{6}", "6"),
        (r"\boxed{6} and the prompt said \boxed{}", "6"),  # empty box: skipped
        ("no box here", None),
        (r"\boxedfoo{3}", None),
    ],
)
def test_last_boxed(text: str, content: str | None) -> None:
    assert last_boxed(text) == content


# --------------------------------------------------------------------------- math equivalence


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{1/2}", r"\frac{1}{2}"),  # \frac vs /
        (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}"),
        (r"\boxed{0.5}", r"\frac{1}{2}"),
        (r"\boxed{2/4}", r"\frac12"),
        (r"\boxed{\sqrt{8}}", r"2\sqrt{2}"),
        (r"\boxed{[2, 5)}", r"[2,5)"),  # intervals
        (r"\boxed{(-\infty,2]}", r"(-\infty, 2]"),
        (r"\boxed{10\text{ cm}}", "10"),  # units
        (r"\boxed{10 \text{ inches}}", "10"),
        (r"\boxed{30^\circ}", "30"),
        (r"\boxed{(3, \pi/2)}", r"\left( 3, \frac{\pi}{2} \right)"),  # tuples
        (r"\boxed{\{2,1\}}", r"\{1,2\}"),  # sets
        (r"\boxed{x = 5}", "5"),
        (r"\boxed{(x+1)^2}", "x^2+2x+1"),
        (r"\boxed{25}", "025"),  # AIME references keep leading zeros
        (r"\boxed{C}", r"\text{(C)}"),
        (r"\boxed{3} was wrong, the answer is \boxed{5}", "5"),  # last box counts
        ("The final answer is 42", "42"),  # no box: math-verify's anchors on the whole text
    ],
)
def test_math_equivalent(answer: str, reference: str) -> None:
    verdict = grade(answer, reference, "math")
    assert verdict.correct, verdict
    assert verdict.error is None


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        (r"\boxed{\frac{1}{3}}", r"\frac{1}{2}"),
        (r"\boxed{1/3}", r"\frac{1}{2}"),
        (r"\boxed{4.6667}", r"\frac{14}{3}"),  # rounded decimals are not exact fractions
        (r"\boxed{\sqrt{6}}", r"2\sqrt{2}"),
        (r"\boxed{[2, 5]}", r"[2,5)"),  # closed vs half-open interval
        (r"\boxed{(-\infty,2)}", r"(-\infty, 2]"),
        (r"\boxed{11\text{ cm}}", "10"),
        (r"\boxed{(\pi/2, 3)}", r"\left( 3, \frac{\pi}{2} \right)"),
        (r"\boxed{5} was wrong, the answer is \boxed{3}", "5"),  # only the last box counts
        ("no answer at all", "7"),
        ("", "7"),
    ],
)
def test_math_not_equivalent(answer: str, reference: str) -> None:
    assert not grade(answer, reference, "math").correct


def test_math_grade_reports_extraction() -> None:
    verdict = grade(r"We get \boxed{\frac{3}{4}}.", r"\frac34")
    assert (verdict.correct, verdict.extracted, verdict.source) == (True, r"\frac{3}{4}", "boxed")
    nothing = grade("I do not know.", "3")
    assert (nothing.correct, nothing.extracted, nothing.source) == (False, None, None)


# --------------------------------------------------------------------------- GSM8K numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,000", Fraction(1000)),
        ("1{,}000", Fraction(1000)),
        ("$18", Fraction(18)),
        (r"\$18", Fraction(18)),
        ("18.0", Fraction(18)),
        ("18.00.", Fraction(18)),
        ("-3", Fraction(-3)),
        ("0.25", Fraction(1, 4)),
        ("3/4", Fraction(3, 4)),
        ("50%", Fraction(50)),
        (r"18 \text{ dollars}", Fraction(18)),
        ("x = 7", Fraction(7)),
        ("1,234,567", Fraction(1234567)),
        ("eighteen", None),
        ("1,2", None),
        ("", None),
    ],
)
def test_parse_number(text: str, value: Fraction | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("answer", "reference", "correct", "source"),
    [
        (r"So she makes \boxed{18} dollars.", "18", True, "boxed"),
        (r"\boxed{\$18}", "18", True, "boxed"),
        (r"\boxed{18.0}", "18", True, "boxed"),
        (r"\boxed{1,000}", "1000", True, "boxed"),
        (r"\boxed{\$1,000.00}", "1000", True, "boxed"),
        (r"\boxed{\frac{36}{2}}", "18", True, "boxed"),  # LaTeX in the box: math-verify reads it
        (r"\boxed{18 \text{ eggs}}", "18", True, "boxed"),
        (r"\boxed{17}", "18", False, "boxed"),
        (r"\boxed{18.5}", "18", False, "boxed"),
        ("The final answer is $18.", "18", True, "anchor"),
        ("The final answer is: 1,000 apples", "1000", True, "anchor"),
        ("10 + 8 = 18\n#### 18", "18", True, "anchor"),
        ("The final answer is 18. Then 3 more.", "18", True, "anchor"),
        ("So, the final answer is 16 * 4 = 64 ducks, and 2 = 2.", "2", True, "anchor"),
        ("So, the final answer is 16 * 4 = 64 ducks each day.", "64", True, "anchor"),
        ("The final answer is 3.5 dollars.\nWe had 7 before.", "3.5", True, "anchor"),
        ("The final answer is: the ducks.", "18", False, None),
        ("She has 3 left, so 3 * 6 = 18.0", "18", True, "last_number"),
        ("She sells 9 eggs for $2 each.", "18", False, "last_number"),
        (r"first \boxed{18}, no wait \boxed{20}", "18", False, "boxed"),
        ("no digits", "18", False, None),
    ],
)
def test_gsm8k_numbers(answer: str, reference: str, correct: bool, source: str | None) -> None:
    verdict = grade(answer, reference, "numeric")
    assert (verdict.correct, verdict.source) == (correct, source), verdict


def test_numeric_grader_with_a_latex_reference_falls_back_to_equivalence() -> None:
    assert grade(r"\boxed{1/2}", r"\frac{1}{2}", "numeric").correct


@pytest.mark.parametrize("name", ["math500", "aime24", "amc23", "gsm8k"])
def test_every_shipped_reference_grades_itself_correct(name: str) -> None:
    from langchain_spthink.eval import dataset_grader, load_dataset

    kind = dataset_grader(name)
    wrong = [
        (p.id, p.answer)
        for p in load_dataset(name)
        if not grade(f"So the answer is \\boxed{{{p.answer}}}.", p.answer, kind).correct
    ]
    assert wrong == []


def test_grading_keeps_an_outer_alarm() -> None:
    """math-verify times out with SIGALRM; a timer armed by the caller must survive grading."""
    import signal

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        assert grade(r"\boxed{\frac{1}{2}}", "0.5").correct
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < left <= 30.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


def test_grading_in_a_worker_thread() -> None:
    """No SIGALRM outside the main thread: grading still works there (without a timeout)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(grade, r"\boxed{[2,5)}", "[2, 5)").result()
    assert verdict.correct and verdict.error is None
