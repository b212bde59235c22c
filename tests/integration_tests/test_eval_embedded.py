"""End-to-end `spthink eval` + `report` on the embedded models (3 GSM8K problems, greedy)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.eval import PROMPT, read_records
from langchain_spthink.eval.cli import main

pytestmark = pytest.mark.embedded

MAX_TOKENS = 48


def test_eval_three_gsm8k_problems(
    small_backend: TransformersBackend, large_backend: TransformersBackend, tmp_path: Path
) -> None:
    backends = {"smollm2-135m-instruct": small_backend, "gemma3-270m": large_backend}
    run = tmp_path / "speculative.jsonl"
    args = ["eval", "--dataset", "gsm8k", "--limit", "3", "--greedy"]
    args += ["--max-tokens", str(MAX_TOKENS), "--set", "begin_tokens=8", "--out", str(run)]
    out, err = io.StringIO(), io.StringIO()
    assert main(args, backends=backends, stdout=out, stderr=err) == 0, err.getvalue()

    records = read_records(run)
    assert [r["id"] for r in records] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    for r in records:
        assert 0 < r["output_tokens"] <= MAX_TOKENS
        assert r["small_tokens"] + r["large_tokens"] == r["output_tokens"]
        assert r["finish_reason"] in ("eos", "length")
        assert isinstance(r["correct"], bool) and r["answer"]
        # instruct preset: the large model opens every answer (begin), 8 tokens here.
        assert r["delegations_by_kind"]["begin"] == 1 and r["large_tokens"] >= 8
        assert r["run"]["prompt"] == PROMPT and r["run"]["temperature"] == 0.0
    assert sum(r["small_tokens"] for r in records) > 0  # the small model wrote too

    # The prompt is the paper's, rendered with each model's own chat template.
    messages = [{"role": "user", "content": PROMPT}]
    assert "<|im_start|>user" in small_backend.tokenizer.decode(
        small_backend.chat_prompt_ids(messages)
    )
    assert "<start_of_turn>user" in large_backend.tokenizer.decode(
        large_backend.chat_prompt_ids(messages)
    )

    # Greedy + resume: a rerun writes nothing and reports the same numbers.
    again = io.StringIO()
    assert main(args, backends=backends, stdout=again, stderr=err) == 0
    assert "0 new answers, 3 already in" in again.getvalue()
    assert again.getvalue().splitlines()[2] == out.getvalue().splitlines()[2]

    report = io.StringIO()
    plots = tmp_path / "plots"
    assert main(["report", str(run), "--plots", str(plots)], stdout=report, stderr=err) == 0
    assert "| speculative | speculative | 3 | 3 |" in report.getvalue()
    assert all(p.stat().st_size > 0 for p in plots.glob("*.png"))
    assert len(list(plots.glob("*.png"))) == 3
