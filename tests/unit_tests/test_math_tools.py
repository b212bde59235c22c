"""The calculator: a safe arithmetic evaluator (ast walk, never eval) and its LangChain tool."""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_spthink.errors import SpThinkError
from langchain_spthink_integrations.math_tools import (
    EXPRESSION_MAX_CHARS,
    EXPRESSION_PATTERN,
    CalculatorError,
    evaluate_arithmetic,
    format_number,
    make_calculator_tool,
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("16 - 3 - 4", 9),
        ("(16 - 3 - 4) * 2", 18),
        ("12*24-250", 38),
        ("(3/4) * 80", 60),
        ("1/3*3", 1),  # exact: no 0.9999999
        ("10/4", Fraction(5, 2)),
        ("2^10", 1024),  # ^ read as a power
        ("2**-1", Fraction(1, 2)),
        ("-(-5) + +2", 7),
        ("7 // 2", 3),
        ("7 % 3", 1),
        ("sqrt(144)", 12),
        ("abs(-3) + max(1, 4) + min(2, 5)", 9),
        ("round(2.567, 2)", Fraction(257, 100)),
        ("floor(2.7) + ceil(2.1)", 5),
        ("1,000 + 5", 1005),  # thousands separator
        ("max(1,000, 2)", 1000),
        ("3 × 4 ÷ 2", 6),
        ("  16 - 3 - 4 = ", 9),
        ("0.5 * 4", 2.0),
        ("007 + 0.5 - 00.5", 7),  # leading zeros (a syntax error in Python)
    ],
)
def test_values(expression: str, expected: object) -> None:
    assert evaluate_arithmetic(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("__import__('os').system('true')", "functions are allowed"),
        ("open('x')", "functions are allowed"),
        ("x + 1", "name 'x'"),
        ("(1).__class__", "Attribute"),
        ("[1, 2]", "List"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1 if 1 else 2", "IfExp"),
        ("lambda: 1", "Lambda"),
        ("1 < 2", "Compare"),
        ("1/0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9**9**9", "too large"),
        ("10**200", "too large"),
        ("80.6 ** 999", "out of range"),
        ("(1/3) ** 300", "out of range"),
        ("sqrt(-1)", "negative"),
        ("(-8) ** 0.5", "fractional power"),
        ("1 +", "not an arithmetic expression"),
        ("1" * 600, "longer than"),
        ("sqrt(x=4)", "positional"),
        ("round(2.5, 0.5)", "whole number"),
        ("1e308 * 10", "finite"),
    ],
)
def test_refused_with_a_reason(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError, match=message) as info:
        evaluate_arithmetic(expression)
    assert isinstance(info.value, SpThinkError) and isinstance(info.value, ValueError)


_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@st.composite
def expressions(draw: st.DrawFn, depth: int = 3) -> tuple[str, int]:
    """Random integer expressions with their value computed independently (by a fold)."""
    if depth == 0 or draw(st.booleans()):
        n = draw(st.integers(-50, 50))
        return (f"({n})" if n < 0 else str(n)), n
    op = draw(st.sampled_from(sorted(_OPS)))
    left, lv = draw(expressions(depth - 1))
    right, rv = draw(expressions(depth - 1))
    return f"({left} {op} {right})", _OPS[op](lv, rv)


@settings(deadline=None)  # not hypothesis' 200 ms per example: a busy CPU may exceed it
@given(expressions())
def test_random_integer_expressions(case: tuple[str, int]) -> None:
    text, value = case
    assert evaluate_arithmetic(text) == value


@settings(deadline=None)  # not hypothesis' 200 ms per example: a busy CPU may exceed it
@given(st.integers(-(10**6), 10**6), st.integers(1, 10**6))
def test_division_is_exact(a: int, b: int) -> None:
    result = evaluate_arithmetic(f"{a} / {b}")
    assert result == Fraction(a, b)
    assert isinstance(result, int) == (a % b == 0)


def test_no_eval_anywhere() -> None:
    import langchain_spthink_integrations.math_tools as module

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    calls = [n.func for n in ast.walk(tree) if isinstance(n, ast.Call)]
    called = {f.id for f in calls if isinstance(f, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}


@pytest.mark.parametrize(
    ("value", "text"),
    [(18, "18"), (Fraction(5, 2), "2.5"), (Fraction(1, 3), "1/3 (≈ 0.333333)"), (0.1 + 0.2, "0.3")],
)
def test_format_number(value: int | Fraction | float, text: str) -> None:
    assert format_number(value) == text


def test_tool_returns_results_and_errors() -> None:
    tool = make_calculator_tool()
    assert tool.name == "calculator"
    assert set(tool.args) == {"expression"}
    assert tool.invoke({"expression": "16 - 3 - 4"}) == "9"
    # a bad expression is the tool's result (the agent sees it), not an exception
    assert tool.invoke({"expression": "x1 % 0"}).startswith("error: expression: 'x1 % 0' is not")
    assert "16 -" in tool.invoke({"expression": "16 -"})
    assert tool.invoke({"expression": "5 % 0"}) == "error: division by zero"
    assert tool.invoke({"expr": "1"}).startswith("error: expression: Field required")
    call = {"name": "calculator", "args": {"expression": "9*2"}, "id": "c1", "type": "tool_call"}
    message = tool.invoke(call)
    assert message.content == "18" and message.tool_call_id == "c1"


def test_schema_pattern_admits_complete_arithmetic_only() -> None:
    schema = make_calculator_tool().tool_call_schema.model_json_schema()
    prop = schema["properties"]["expression"]
    assert prop["pattern"] == EXPRESSION_PATTERN and prop["maxLength"] == EXPRESSION_MAX_CHARS
    pattern = re.compile(EXPRESSION_PATTERN)
    for ok in [
        "(16 - 3 - 4) * 2",
        "((16 - 3) - 4) * 2",
        "80000 * 1.5 - 130000",
        "2 ** 10 % 7",
        "-3+4",
    ]:
        assert pattern.match(ok), ok
    for bad in ["eggs * 2", "16 -", "16 - 3 = 13", "", "(1 + 2", "sqrt(2)", "(((1)))", "1  + 2"]:
        assert not pattern.match(bad), bad


@settings(max_examples=25, deadline=None)  # generating from this regex is slow (~0.3 s)
@given(
    st.from_regex(EXPRESSION_PATTERN, fullmatch=True).filter(
        lambda text: len(text) <= EXPRESSION_MAX_CHARS  # the schema's maxLength
    )
)
def test_whatever_the_pattern_admits_evaluates(expression: str) -> None:
    """Constrained decoding follows the pattern: every such call is a well-formed expression."""
    try:
        evaluate_arithmetic(expression)
    except CalculatorError as exc:  # only arithmetic failures, never a parse or a syntax error
        assert re.search("division by zero|too large|out of range|finite|fractional", str(exc))


def test_tool_inside_a_tool_node() -> None:
    from langchain_core.messages import AIMessage
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode([make_calculator_tool()]))
    graph.add_edge(START, "tools")
    node = graph.compile()
    calls = [
        {"name": "calculator", "args": {"expression": "(16 - 3 - 4) * 2"}, "id": "a"},
        {"name": "calculator", "args": {"expression": "ducks * 2"}, "id": "b"},
        {"name": "calculator", "args": {"expression": "1 / 0"}, "id": "c"},
    ]
    out = node.invoke({"messages": [AIMessage(content="", tool_calls=calls)]})["messages"][1:]
    assert [m.tool_call_id for m in out] == ["a", "b", "c"]
    assert out[0].content == "18" and out[0].status == "success"
    assert (
        "'ducks * 2' is not a plain arithmetic expression" in out[1].content
        and out[1].status == "error"
    )
    assert out[2].content == "error: division by zero" and out[2].status == "error"
