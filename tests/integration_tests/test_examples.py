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
