"""Every script in examples/ runs as documented (short budgets to stay quick)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_stream_delegations_example(capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_spthink import paper_instruct

    example = load("stream_delegations")
    answer = example.main("What is 15% of 80?", max_tokens=16, config=paper_instruct())
    out, err = capsys.readouterr()
    assert answer and answer in out
    assert "[large model, begin:" in err  # the instruct preset lets the large model open


def test_rag_math_example(capsys: pytest.CaptureFixture[str]) -> None:
    rag = load("rag_math")
    result = rag.main(rag.DEFAULT_QUESTION, max_tokens=16, preset="instruct")
    out, err = capsys.readouterr()
    assert result["sources"][0] == "discount"  # the dense retriever found the worked example
    assert out.startswith("Retrieved: Price after a discount")
    assert result["answer"] and result["answer"] in out
    # the instruct preset: the large model opens the answer
    assert result["delegations"] and result["delegations"][0].kind == "begin"
    assert "steps written by the large model" in err


def test_agent_calculator_example(capsys: pytest.CaptureFixture[str]) -> None:
    """The LangGraph agent loop on the embedded pair: structure, not the answer's correctness."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from langchain_spthink_integrations.math_tools import evaluate_arithmetic, format_number

    agent = load("agent_calculator")
    result = agent.main(max_steps=2, max_tokens=40, preset="instruct")
    out, err = capsys.readouterr()
    msgs = result["messages"]
    assert [type(m) for m in msgs] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    call, tool_msg, final = msgs[1], msgs[2], msgs[3]
    # step 1 was forced: constrained decoding made the 135M model write one valid call
    assert not call.invalid_tool_calls and len(call.tool_calls) == 1
    expression = call.tool_calls[0]["args"]["expression"]
    assert call.tool_calls[0]["name"] == "calculator"
    # the tool ran on exactly that expression (evaluated here independently)
    assert tool_msg.tool_call_id == call.tool_calls[0]["id"] and tool_msg.status == "success"
    assert tool_msg.content == format_number(evaluate_arithmetic(expression))
    # step 2 (the last allowed) had no tools: the run ended with an answer
    assert final.content and not final.tool_calls and result["answer"] == final.content
    # the instruct preset: the large model opened the answer, streamed via stream_mode="custom"
    assert result["delegations"] and result["delegations"][0].kind == "begin"
    assert "[large model, begin:" in err
    assert f"-> calculator({{'expression': '{expression}'}})" in out
    assert f"<- calculator: {tool_msg.content}" in out
