"""A safe arithmetic evaluator and a LangChain calculator tool built on it.

:func:`evaluate_arithmetic` parses an expression with :mod:`ast` and walks the tree itself: only
numbers, ``+ - * / // % **``, unary ``+``/``-``, parentheses and a few named functions
(``sqrt``, ``abs``, ``round``, ``min``, ``max``, ``floor``, ``ceil``) are allowed, so nothing a
model writes can run code (no ``eval``, no names, attributes, calls of anything else, or
subscripts). Exact where possible: integers and fractions stay exact (``1/3*3 == 1``), and
``^`` is read as a power (models write it for one).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import TypeAlias

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from langchain_spthink.errors import SpThinkError

__all__ = [
    "CalculatorError",
    "CalculatorInput",
    "EXPRESSION_MAX_CHARS",
    "EXPRESSION_PATTERN",
    "evaluate_arithmetic",
    "format_number",
    "make_calculator_tool",
]

Number: TypeAlias = "int | Fraction | float"

MAX_EXPRESSION_CHARS = 500
"""Longer expressions are refused (a model in a loop can write anything)."""

MAX_EXPONENT = 1000
"""``a ** b`` with ``|b|`` above this is refused (``9**9**9`` would never finish)."""

MAX_MAGNITUDE = 10**100
"""Intermediate results larger than this in absolute value are refused."""


class CalculatorError(SpThinkError, ValueError):
    """An expression the evaluator refuses or cannot compute; the message says why."""


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculatorError("sqrt of a negative number")
    if isinstance(x, int) or (isinstance(x, Fraction) and x.denominator == 1):
        root = math.isqrt(int(x))
        if root * root == x:
            return root
    return math.sqrt(x)


def _round(x: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int):
        raise CalculatorError("round(x, digits) needs a whole number of digits")
    return round(Fraction(x), digits)


_FUNCTIONS: dict[str, Callable[..., Number]] = {
    "sqrt": _sqrt,
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "floor": math.floor,
    "ceil": math.ceil,
}


def _check(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    if abs(Fraction(value)) > MAX_MAGNITUDE:
        raise CalculatorError("a result is too large")
    if isinstance(value, Fraction) and value.denominator == 1:
        return int(value)
    return value


def _out_of_range(base: Number, exponent: Number) -> bool:
    """Whether ``|base ** exponent|`` is beyond 2**±340 (about 1e±100), judged before computing."""
    if isinstance(base, float):
        if base == 0.0 or not math.isfinite(base):
            return False
        log2 = math.log2(abs(base))
    else:
        b = abs(Fraction(base))
        if b == 0 or b == 1:
            return False
        log2 = math.log2(b.numerator) - math.log2(b.denominator)  # exact enough for big ints
    return abs(float(exponent)) * abs(log2) > 340


def _power(base: Number, exponent: Number) -> Number:
    if abs(Fraction(exponent)) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    if _out_of_range(base, exponent):
        raise CalculatorError("a power is out of range (too large or too small)")
    if isinstance(exponent, int) or (isinstance(exponent, Fraction) and exponent.denominator == 1):
        exp = int(exponent)
        if base == 0 and exp < 0:
            raise CalculatorError("division by zero")
        if isinstance(base, (int, Fraction)):
            return Fraction(base) ** exp
        return float(float(base) ** exp)
    if base < 0:
        raise CalculatorError("a negative number to a fractional power")
    return float(float(base) ** float(exponent))


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(op, ast.Add):
        return left + right
    if isinstance(op, ast.Sub):
        return left - right
    if isinstance(op, ast.Mult):
        return left * right
    if isinstance(op, (ast.Pow, ast.BitXor)):  # "^" is what people (and models) mean by power
        return _power(left, right)
    if right == 0:
        raise CalculatorError("division by zero")
    if isinstance(op, ast.Div):
        if isinstance(left, float) or isinstance(right, float):
            return left / right
        return Fraction(left) / Fraction(right)
    if isinstance(op, ast.FloorDiv):
        return left // right
    if isinstance(op, ast.Mod):
        return left % right
    raise CalculatorError(f"operator {type(op).__name__} is not allowed")


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _check(_binary(node.op, _eval(node.left), _eval(node.right)))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            allowed = ", ".join(sorted(_FUNCTIONS))
            raise CalculatorError(f"only these functions are allowed: {allowed}")
        if node.keywords or not node.args:
            raise CalculatorError(f"{node.func.id}() takes positional number arguments")
        try:
            return _check(_FUNCTIONS[node.func.id](*(_eval(a) for a in node.args)))
        except TypeError as exc:
            raise CalculatorError(f"{node.func.id}(): {exc}") from None
    if isinstance(node, ast.Name):
        raise CalculatorError(f"name {node.id!r} is not allowed: write numbers only")
    raise CalculatorError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def evaluate_arithmetic(expression: str) -> Number:
    """Evaluate an arithmetic expression safely (no ``eval``).

    Args:
        expression: E.g. ``"12 * 24 - 250"`` or ``"(3/4) * 80"``. Thousands separators
            (``1,000``) and a trailing ``=`` are tolerated; ``x`` / ``×`` / ``÷`` are read as
            ``*`` / ``/``.

    Returns:
        An ``int`` when the result is whole, a ``Fraction`` when exact but not whole, a
        ``float`` once a float (a decimal literal, ``sqrt``) took part.

    Raises:
        CalculatorError: The expression is empty, too long, not arithmetic, uses a name or a
            function that is not allowed, divides by zero or grows too large.
    """
    text = expression.strip().rstrip("=").strip()
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-")
    # "1,000" -> "1000", but keep the commas that separate function arguments ("max(1, 2)")
    text = _drop_thousands_separators(text)
    text = _LEADING_ZEROS.sub("", text)  # "007" -> "7" (a syntax error in Python), "0.5" kept
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r} ({exc.msg})") from None
    return _check(_eval(tree))


_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")


def _drop_thousands_separators(text: str) -> str:
    out: list[str] = []
    for i, ch in enumerate(text):
        if (
            ch == ","
            and 0 < i
            and text[i - 1].isdigit()
            and text[i + 1 : i + 4].isdigit()
            and not text[i + 4 : i + 5].isdigit()
        ):
            continue
        out.append(ch)
    return "".join(out)


def format_number(value: Number) -> str:
    """Render a result for a model to read: ``18``, ``2.5``, ``1/3 (≈ 0.333333)``."""
    if isinstance(value, Fraction):
        as_float = float(value)
        if value.denominator in {2, 4, 5, 8, 10, 20, 25, 50, 100}:
            return f"{as_float:g}"
        return f"{value.numerator}/{value.denominator} (≈ {as_float:.6g})"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _expression_pattern() -> str:
    number = r"-?[0-9]+(?:\.[0-9]+)?"
    op = r" ?(?:[-+*/%]|\*\*) ?"
    inner = rf"(?:{number}|\({number}(?:{op}{number})*\))"  # a number or (a flat expression)
    atom = rf"(?:{number}|\({inner}(?:{op}{inner})*\))"  # parentheses nest two deep
    return rf"^{atom}(?:{op}{atom})*$"


EXPRESSION_PATTERN = _expression_pattern()
"""The calculator's ``expression`` in its JSON schema: numbers, ``+ - * / % **``, single spaces
around operators and parentheses two deep, always complete (never ending on an operator).
Under constrained decoding the grammar follows it, so even a small model writes a well-formed
expression, not prose. (The evaluator itself accepts more: functions, ``^``, ``1,000``.)"""

EXPRESSION_MAX_CHARS = 60
"""``maxLength`` of the ``expression`` argument: with the pattern, the grammar makes a model
that keeps writing ``+ 4 * 3 ...`` close a valid expression in time."""


class CalculatorInput(BaseModel):
    """Arguments of the calculator tool."""

    expression: str = Field(
        description="An arithmetic expression with numbers only, e.g. '16 - 3 - 4' or '9 * 2'.",
        pattern=EXPRESSION_PATTERN,
        max_length=EXPRESSION_MAX_CHARS,
    )


def _calculate(expression: str) -> str:
    try:
        return format_number(evaluate_arithmetic(expression))
    except CalculatorError as exc:
        raise ToolException(f"error: {exc}") from None


def _invalid_arguments(error: ValidationError) -> str:
    problems = []
    for e in error.errors():
        where = ".".join(str(part) for part in e["loc"]) or "arguments"
        if e["type"] == "string_pattern_mismatch":
            problems.append(f"{where}: {e['input']!r} is not a plain arithmetic expression")
        else:
            problems.append(f"{where}: {e['msg']}")
    return (
        "error: " + "; ".join(problems) + ". Call it with one argument, expression: numbers "
        "and + - * / % ** ( ) only, e.g. (16 - 3 - 4) * 2."
    )


def make_calculator_tool(name: str = "calculator") -> BaseTool:
    """A LangChain tool that evaluates arithmetic with :func:`evaluate_arithmetic`.

    A bad expression or bad arguments do not raise out of the tool: the tool returns
    ``"error: ..."`` (saying what is wrong) as its result, so an agent sees it and can try again.
    The argument's JSON schema carries :data:`EXPRESSION_PATTERN`, so constrained decoding
    keeps a model's call to arithmetic characters.

    Args:
        name: The tool's name.

    Returns:
        The tool (one string argument, ``expression``).
    """
    return StructuredTool.from_function(
        func=_calculate,
        name=name,
        description=(
            "Evaluate an arithmetic expression and return the number. Use it for every "
            "calculation. Numbers and + - * / % ** ( ) only, e.g. '(16 - 3 - 4) * 2'."
        ),
        args_schema=CalculatorInput,
        handle_tool_error=True,
        handle_validation_error=_invalid_arguments,
    )
