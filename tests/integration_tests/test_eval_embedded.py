"""End-to-end `spthink eval` + `report` on the embedded models (3 GSM8K problems, greedy)."""

from __future__ import annotations

import io
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

import langchain_spthink
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.eval import PROMPT, read_records
from langchain_spthink.eval.cli import main

pytestmark = pytest.mark.embedded

MAX_TOKENS = 48
GSM8K = Path(langchain_spthink.__file__).parent / "data" / "gsm8k.jsonl"


def plain_number(text: str) -> Fraction | None:
    """A GSM8K-style number ("18", "$1,000", "18.0", "-3."), else None: a check of its own."""
    cleaned = text.strip().replace("$", "").replace(",", "").rstrip(".")
    return Fraction(cleaned) if re.fullmatch(r"-?\d+(?:\.\d+)?", cleaned) else None


def independent_verdict(record: dict[str, object], reference: str) -> bool | None:
    """Is the recorded answer right? None when the extracted text is not a plain number."""
    extracted = record["extracted"]
    if extracted is None:
        return False
    assert isinstance(extracted, str)
    value = plain_number(extracted)
    return None if value is None else value == Fraction(reference)


def test_eval_three_gsm8k_problems(
    small_backend: TransformersBackend, large_backend: TransformersBackend, tmp_path: Path
) -> None:
    backends = {"smollm2-135m-instruct": small_backend, "gemma3-270m": large_backend}
    run = tmp_path / "speculative.jsonl"
    args = ["eval", "--dataset", "gsm8k", "--limit", "3", "--greedy", "--preset", "instruct"]
    args += ["--max-tokens", str(MAX_TOKENS), "--set", "begin_tokens=8", "--out", str(run)]
    out, err = io.StringIO(), io.StringIO()
    assert main(args, backends=backends, stdout=out, stderr=err) == 0, err.getvalue()

    records = read_records(run)
    # The dataset file read directly: the first three problems and their reference answers.
    with GSM8K.open(encoding="utf-8") as fh:
        references = {p["id"]: p["answer"] for p in map(json.loads, fh.readlines()[:3])}
    assert [r["id"] for r in records] == list(references)
    verdicts = []
    for r in records:
        assert r["reference"] == references[r["id"]]
        # Graded independently: the extracted text is taken from the answer, and it is right
        # exactly when it is the reference number.
        assert r["extracted"] is None or r["extracted"] in r["answer"]
        verdict = independent_verdict(r, r["reference"])
        if verdict is None:  # e.g. LaTeX in a box: only the necessary condition below
            assert r["extracted_from"] == "boxed"
        else:
            assert r["correct"] is verdict, (r["extracted"], r["reference"])
        if r["correct"]:  # a right answer writes the reference number somewhere
            assert r["reference"] in r["answer"].replace(",", "")
        verdicts.append(r["correct"])
        assert r["grading_error"] is None
        assert r["extracted_from"] in ("boxed", "anchor", "last_number", None)
        # the run and the model counts
        assert (r["sample"], r["dataset"], r["mode"], r["final_mode"]) == (
            0,
            "gsm8k",
            "speculative",
            "speculative",
        )
        assert (r["policy"], r["fallback"], r["budgets"]) == ("keyword", None, {})
        assert 0 < r["output_tokens"] <= MAX_TOKENS
        assert r["small_tokens"] + r["large_tokens"] == r["output_tokens"]
        assert r["large_share"] == pytest.approx(r["large_tokens"] / r["output_tokens"])
        assert r["small_generated"] >= r["small_tokens"]
        assert r["large_generated"] >= r["large_tokens"]
        # the budget ends an answer exactly when it is spent (an EOS is not an output token)
        assert r["finish_reason"] == ("length" if r["output_tokens"] == MAX_TOKENS else "eos")
        assert r["answer"]
        # instruct preset: the large model opens every answer (begin), 8 tokens here; with
        # choose_large no large step is ever rejected.
        assert r["delegations_by_kind"]["begin"] == 1 and r["large_tokens"] >= 8
        assert r["delegations"] == sum(r["delegations_by_kind"].values())
        assert r["large_steps_rejected"] == 0
        assert r["run"]["prompt"] == PROMPT and r["run"]["temperature"] == 0.0
        assert (r["run"]["grader"], r["run"]["preset"], r["run"]["max_tokens"]) == (
            "numeric",
            "instruct",
            MAX_TOKENS,
        )
        assert r["run"]["overrides"] == {"begin_tokens": 8}
    assert sum(r["small_tokens"] for r in records) > 0  # the small model wrote too
    accuracy = 100 * sum(verdicts) / 3
    assert f"| speculative | speculative | 3 | 3 | {accuracy:.1f}% |" in out.getvalue()

    # The prompt is the paper's, rendered with each model's own chat template.
    messages = [{"role": "user", "content": PROMPT}]
    assert "<|im_start|>user" in small_backend.tokenizer.decode(
        small_backend.chat_prompt_ids(messages)
    )
    assert "\nQuestion: " in large_backend.tokenizer.decode(  # gemma: completion format
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
