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
    answer = load("stream_delegations").main("What is 15% of 80?", max_tokens=16)
    out, err = capsys.readouterr()
    assert answer and answer in out
    assert "[large model, begin:" in err  # the instruct preset lets the large model open


def test_rag_math_example(capsys: pytest.CaptureFixture[str]) -> None:
    rag = load("rag_math")
    result = rag.main(rag.DEFAULT_QUESTION, max_tokens=16)
    out, err = capsys.readouterr()
    assert result["sources"][0] == "discount"  # the dense retriever found the worked example
    assert out.startswith("Retrieved: Price after a discount")
    assert result["answer"] and result["answer"] in out
    # the instruct preset: the large model opens the answer
    assert result["delegations"] and result["delegations"][0].kind == "begin"
    assert "steps written by the large model" in err
