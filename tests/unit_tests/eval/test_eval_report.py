"""`spthink report`: Table-2 numbers from fixed records (computed by hand), plots, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.eval import format_table, read_records, summarize, write_plots
from langchain_spthink.eval.cli import main
from langchain_spthink.eval.report import run_labels


def rec(
    pid: str,
    sample: int,
    correct: bool,
    out: int,
    large: int,
    kinds: dict[str, int],
    seconds: float,
    **extra: Any,
) -> dict[str, Any]:  # noqa: E501
    by_kind = {"begin": 0, "reflection": 0, "verify": 0, "recap": 0, **kinds}
    return {
        "id": pid,
        "sample": sample,
        "dataset": "gsm8k",
        "mode": "speculative",
        "correct": correct,
        "extracted": "1",
        "output_tokens": out,
        "small_tokens": out - large,
        "large_tokens": large,
        "large_share": large / out if out else 0.0,
        "delegations": sum(by_kind.values()),
        "delegations_by_kind": by_kind,
        "seconds": seconds,
        "finish_reason": "eos",
        **extra,
    }


# Run A: 2 problems x 2 samples.
JUDGE = {"policy": "judge"}
RUN_A = [
    rec("p1", 0, True, 100, 20, {"reflection": 1, "verify": 1}, 1.0, large_generated=25, **JUDGE),
    rec("p1", 1, False, 50, 0, {}, 3.0, large_generated=0, **JUDGE),
    rec("p2", 0, True, 30, 30, {"begin": 1, "reflection": 2}, 2.0, large_generated=30, **JUDGE),
    rec(
        "p2",
        1,
        True,
        20,
        10,
        {"recap": 1},
        2.0,
        finish_reason="length",
        large_generated=5,
        budgets={"max_large_tokens": 5, "large_tokens": 5, "large_exhausted": True},
        **JUDGE,
    ),
]
# Run B: unequal samples per problem (p1 once, p2 three times) and a small-only run.
RUN_B = [
    rec("p1", 0, True, 10, 0, {}, 0.5, mode="small"),
    rec("p2", 0, False, 20, 0, {}, 0.5, mode="small", extracted=None),
    rec("p2", 1, True, 30, 0, {}, 1.0, mode="small"),
    rec("p2", 2, False, 40, 0, {}, 2.0, mode="small"),
]


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_summary_numbers_by_hand() -> None:
    a = summarize(RUN_A, label="A")
    # accuracy: p1 1/2, p2 2/2 -> (0.5 + 1) / 2
    assert a.accuracy == 0.75
    assert (a.problems, a.answers) == (2, 4)
    assert a.avg_length == (100 + 50 + 30 + 20) / 4 == 50.0
    assert a.large_share == (20 + 0 + 30 + 10) / 200 == 0.3
    assert a.delegations_per_problem == (2 + 0 + 3 + 1) / 4 == 1.5
    assert a.delegations_by_kind == {
        "begin": 0.25,
        "reflection": 0.75,
        "verify": 0.25,
        "recap": 0.25,
    }
    assert a.seconds_per_problem == 2.0 and a.total_seconds == 8.0
    assert a.finish_reasons == {"eos": 3, "length": 1}
    assert a.mode == "speculative" and a.dataset == "gsm8k" and a.answered == 1.0
    assert a.policy == "judge" and a.large_generated_per_problem == (25 + 0 + 30 + 5) / 4
    assert a.budget_spent == 1 / 4

    b = summarize(RUN_B, label="B")
    # pass@1 averaged per problem: p1 1/1, p2 1/3 -> (1 + 1/3) / 2 = 2/3 (not 2/4)
    assert b.accuracy == pytest.approx(2 / 3)
    assert b.avg_length == 25.0
    assert b.large_share == 0.0 and b.delegations_per_problem == 0.0
    assert b.seconds_per_problem == 1.0 and b.total_seconds == 4.0
    assert b.mode == "small" and b.answered == 0.75
    assert b.policy == "keyword" and b.budget_spent == 0.0  # records without the fields
    assert summarize([*RUN_A, *RUN_B]).policy == "mixed"

    empty = summarize([], label="none")
    assert (empty.accuracy, empty.avg_length, empty.large_share, empty.answers) == (0, 0, 0, 0)


def test_table_exact() -> None:
    table = format_table([summarize(RUN_A, label="A"), summarize(RUN_B, label="B")])
    assert table == "\n".join(
        [
            "| run | mode | problems | answers | accuracy | avg length (tokens) | large share "
            "| delegations / problem | s / problem | total s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            "| A | speculative | 2 | 4 | 75.0% | 50.0 | 30.0% | 1.50 | 2.0 | 8 |",
            "| B | small | 2 | 4 | 66.7% | 25.0 | 0.0% | 0.00 | 1.0 | 4 |",
            "",
            "| run | begin | reflection | verify | recap |",
            "| --- | ---: | ---: | ---: | ---: |",
            "| A | 0.25 | 0.75 | 0.25 | 0.25 |",
            "| B | 0.00 | 0.00 | 0.00 | 0.00 |",
            "",
            "| run | policy | large tokens generated / problem | large passes / token "
            "| acceptance | budget spent |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            "| A | judge | 15.0 | 1.00 | - | 25.0% |",
            "| B | keyword | 0.0 | 1.00 | - | 0.0% |",
        ]
    )


def test_labels() -> None:
    assert run_labels(["x/small.jsonl", "y/large.jsonl"]) == ["small", "large"]
    assert run_labels(["a/run.jsonl", "b/run.jsonl"]) == ["a/run", "b/run"]
    assert run_labels(["a/run.jsonl", "a/run.jsonl"]) == ["a/run#1", "a/run#2"]


def test_plots_written_and_non_empty(tmp_path: Path) -> None:
    summaries = [summarize(RUN_A, label="A"), summarize(RUN_B, label="B")]
    paths = write_plots(summaries, [RUN_A, RUN_B], tmp_path / "plots")
    assert [p.name for p in paths] == [
        "accuracy_vs_length.png",
        "large_share.png",
        "delegations_by_kind.png",
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000


def test_report_cli(tmp_path: Path) -> None:
    a = write(tmp_path / "A.jsonl", RUN_A)
    b = write(tmp_path / "B.jsonl", RUN_B)
    out, err = io.StringIO(), io.StringIO()
    code = main(["report", str(a), str(b), "--plots", str(tmp_path / "p")], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    assert "| A | speculative | 2 | 4 | 75.0% | 50.0 | 30.0% | 1.50 | 2.0 | 8 |" in out.getvalue()
    assert "| B | small | 2 | 4 | 66.7% | 25.0 | 0.0% | 0.00 | 1.0 | 4 |" in out.getvalue()
    assert len(list((tmp_path / "p").glob("*.png"))) == 3
    out = io.StringIO()
    assert main(["report", str(a), "--json"], stdout=out, stderr=err) == 0
    data = json.loads(out.getvalue())
    assert (data["accuracy"], data["large_share"], data["label"]) == (0.75, 0.3, "A")
    err = io.StringIO()
    assert main(["report", str(tmp_path / "missing.jsonl")], stdout=out, stderr=err) == 1
    assert "no such run file" in err.getvalue()


def test_eval_cli_end_to_end_on_scripted_models(tmp_path: Path) -> None:
    data = tmp_path / "toy-gsm8k.jsonl"
    data.write_text(
        '{"id": "a", "problem": "What is 2+2?", "answer": "4"}\n'
        '{"id": "b", "problem": "What is 3+3?", "answer": "1,000"}\n'
    )
    small = ScriptedBackend(["Add.\n\n", "Wait, no.\n\n", "So \\boxed{4}."], name="s")
    large = ScriptedBackend(["Add.\n\n", "Hmm, yes.\n\n", "So \\boxed{1000}."], name="l")
    out, err = io.StringIO(), io.StringIO()
    run = tmp_path / "spec.jsonl"
    args = ["eval", "--dataset", str(data), "--small", "s", "--large", "l", "--greedy"]
    args += ["--preset", "reasoning", "--set", "draft_tokens=3", "--max-tokens", "64"]
    code = main(
        [*args, "--out", str(run)], backends={"s": small, "l": large}, stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    records = read_records(run)
    # The large model writes the step the small one drafted as "Wait, ...", then the small
    # model finishes: "\boxed{4}" is right for a and wrong for b.
    assert records[0]["answer"] == "Add.\n\nHmm, yes.\n\nSo \\boxed{4}."
    assert [(r["id"], r["correct"]) for r in records] == [("a", True), ("b", False)]
    assert records[0]["run"]["grader"] == "numeric"  # from the file name
    assert records[0]["run"]["temperature"] == 0.0
    assert records[0]["run"]["overrides"] == {"draft_tokens": 3}
    assert "| spec | speculative | 2 | 2 | 50.0%" in out.getvalue()
    assert "2 new answers, 0 already in" in out.getvalue()
    assert "100%" in err.getvalue()  # the progress bar
    # Rerun: nothing new, same table, no model needed.
    out = io.StringIO()
    assert main([*args, "--out", str(run), "-q"], backends={}, stdout=out, stderr=err) == 0
    assert "0 new answers, 2 already in" in out.getvalue()
    # Usage and config errors.
    err = io.StringIO()
    assert main(["eval", "--dataset", str(data), "--samples", "0"], stderr=err) == 2
    assert main(["eval", "--dataset", "nope"], stdout=out, stderr=err) == 1
    assert "unknown dataset" in err.getvalue()
    err = io.StringIO()
    bad = ["eval", "--dataset", str(data), "--set", "draft_tokens=0", "--out", str(tmp_path / "x")]
    assert main(bad, stdout=out, stderr=err) == 1
    assert "draft_tokens" in err.getvalue()


def test_wired_into_spthink_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from langchain_spthink.cli.main import build_parser, run_cli

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    choices = getattr(commands, "choices", None) or {}
    assert {"eval", "report"} <= set(choices), sorted(choices)
    for command, option in (("report", "--plots"), ("eval", "--dataset")):
        out, err = io.StringIO(), io.StringIO()
        assert run_cli([command, "--help"], stdout=out, stderr=err) == 0
        # argparse prints --help to sys.stdout itself, not to the stream run_cli was given
        printed = out.getvalue() + capsys.readouterr().out
        assert printed.startswith(f"usage: spthink {command} ") and option in printed


def test_accuracy_axes_start_at_zero_with_room_above() -> None:
    from dataclasses import replace

    from langchain_spthink.eval.report import accuracy_axes

    a = summarize(RUN_A, label="A")
    runs = [replace(a, avg_length=238.0, accuracy=0.06), replace(a, avg_length=384.0, accuracy=0.5)]
    # hand-computed: 1.15 * 384 = 441.6; 1.2 * 50% = 60%
    assert accuracy_axes(runs) == (
        (0.0, pytest.approx(441.6)),
        (0.0, pytest.approx(60.0)),
    )
    low = [replace(a, avg_length=10.0, accuracy=0.0)]
    assert accuracy_axes(low) == (
        (0.0, pytest.approx(11.5)),
        (0.0, 10.0),
    )  # y never collapses below 10%
    top = [replace(a, avg_length=10.0, accuracy=1.0)]
    assert accuracy_axes(top)[1] == (0.0, 100.0)
