"""The eval runner on scripted models: records, the paper's prompt, seeds, resume after a kill."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend, ScriptedSession
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import ConfigError
from langchain_spthink.eval import (
    DATASETS,
    PROMPT,
    EvalSettings,
    Problem,
    build_prompt,
    dataset_grader,
    load_dataset,
    read_records,
    run_eval,
)
from langchain_spthink.eval.runner import sample_seed


class ProblemBackend(ScriptedBackend):
    """A scripted model whose script is chosen by the problem in its prompt."""

    def __init__(self, scripts: Mapping[str, Sequence[str]], **kwargs: Any) -> None:
        super().__init__([], **kwargs)
        self.scripts = scripts
        self.prompts: list[str] = []
        self.samplings: list[SamplingParams] = []

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ScriptedSession:
        prompt = self.decode(prompt_ids)
        self.prompts.append(prompt)
        self.samplings.append(sampling)
        self.script = list(next(v for k, v in self.scripts.items() if k in prompt))
        return super().new_session(prompt_ids, sampling)


PROBLEMS = [
    Problem("p1", "What is 2+2?", "4"),
    Problem("p2", "What is 3*3?", "9"),
    Problem("p3", "What is 10-7?", "3"),
    Problem("p4", "What is 6/2?", "3"),
    Problem("p5", "What is 5+5?", "10"),
]
SMALL = {
    "2+2": ["Add them.\n\n", "Wait, redo.\n\n", "So \\boxed{5}."],
    "3*3": ["Multiply.\n\n", "So \\boxed{9}."],
    "10-7": ["Subtract.\n\n", "The final answer is 3."],
    "6/2": ["Divide.\n\n", "Hmm, \\boxed{2}."],
    "5+5": ["Add.\n\n", "So \\boxed{10}."],
}
LARGE = {
    "2+2": ["Add them.\n\n", "Wait, check: 2+2=4.\n\n", "So \\boxed{4}."],
    "3*3": ["Multiply.\n\n", "So \\boxed{9}."],
    "10-7": ["Subtract.\n\n", "So \\boxed{7}."],
    "6/2": ["Divide.\n\n", "Alternatively, it is \\boxed{3}."],
    "5+5": ["Add.\n\n", "So \\boxed{10}."],
}


def backends(**kwargs: Any) -> tuple[ProblemBackend, ProblemBackend]:
    return ProblemBackend(SMALL, name="small", **kwargs), ProblemBackend(LARGE, name="large")


def settings(mode: str = "speculative", **kwargs: Any) -> EvalSettings:
    values: dict[str, Any] = {
        "dataset": "toy",
        "grader": "numeric",
        "small": "small",
        "large": "large",
        "mode": mode,
        "preset": "reasoning",
        "max_tokens": 100,
        "temperature": 0.0,
        "overrides": {"draft_tokens": 3},
        **kwargs,
    }
    return EvalSettings(**values)


def stable(summary: Any) -> dict[str, Any]:
    """A summary without its timings (which differ between runs)."""
    data = dict(vars(summary))
    for key in ("seconds_per_problem", "total_seconds", "label"):
        data.pop(key)
    return data


# --------------------------------------------------------------------------- datasets


def test_shipped_datasets_load() -> None:
    sizes = {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}
    for name, size in sizes.items():
        problems = load_dataset(name)
        assert len(problems) == size
        assert len({p.id for p in problems}) == size
        assert all(p.problem.strip() and p.answer.strip() for p in problems)
    assert set(DATASETS) == set(sizes)
    first = load_dataset("gsm8k", limit=3)
    assert [p.id for p in first] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2"]
    assert first[0].answer == "18"
    assert load_dataset("math500", 1)[0].extra["subject"] == "Precalculus"
    assert dataset_grader("gsm8k") == "numeric" and dataset_grader("math500") == "math"
    assert dataset_grader("/x/my-gsm8k-subset.jsonl") == "numeric"


def test_custom_dataset_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "a", "problem": "1+1?", "answer": 2, "tag": "x"}\n\n'
        '{"question": "2+2?", "answer": "4"}\n'
    )
    problems = load_dataset(str(path))
    assert problems == [Problem("a", "1+1?", "2", {"tag": "x"}), Problem("3", "2+2?", "4", {})]
    for bad, message in [
        ('{"id": "a", "answer": "1"}\n', "missing 'problem'"),
        ('{"id": "a", "problem": "x"}\n', "missing 'answer'"),
        ("not json\n", "not JSON"),
        (
            '{"id": 1, "problem": "x", "answer": 1}\n{"id": 1, "problem": "y", "answer": 2}\n',
            "duplicate",
        ),
    ]:
        path.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            load_dataset(str(path))
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset("nope")


# --------------------------------------------------------------------------- runner


def test_records_prompt_and_grades(tmp_path: Path) -> None:
    small, large = backends()
    out = tmp_path / "run.jsonl"
    result = run_eval(PROBLEMS[:3], settings(), small=small, large=large, out=out)
    assert (result.new, result.resumed) == (3, 0)
    # The paper's prompt as one user message, rendered by each model's chat template.
    assert small.prompts[0] == f"user: {PROMPT}\nWhat is 2+2?\nassistant:"
    assert large.prompts[0] == small.prompts[0]
    assert (
        build_prompt("Q")
        == "Please reason step by step, and put your final answer within \\boxed{}.\nQ"
    )
    records = read_records(out)
    assert records == result.records
    assert [(r["id"], r["sample"], r["correct"], r["extracted"]) for r in records] == [
        ("p1", 0, True, "4"),
        ("p2", 0, True, "9"),
        ("p3", 0, False, "7"),
    ]
    first = records[0]
    # p1: small "Add them." then a boundary; "Wait," drafts negative -> the large model writes
    # the step ("Wait, check: ..."); "check" is a verify word -> the large model continues.
    assert first["answer"] == "Add them.\n\nWait, check: 2+2=4.\n\nSo \\boxed{4}."
    assert first["delegations_by_kind"] == {"begin": 0, "reflection": 1, "verify": 1, "recap": 0}
    assert first["delegations"] == 2
    assert first["small_tokens"] + first["large_tokens"] == first["output_tokens"]
    assert first["large_share"] == pytest.approx(first["large_tokens"] / first["output_tokens"])
    assert first["finish_reason"] == "eos" and first["final_mode"] == "speculative"
    assert first["reference"] == "4" and first["extracted_from"] == "boxed"
    assert first["run"]["mode"] == "speculative" and first["run"]["prompt"] == PROMPT
    assert first["seconds"] >= 0 and first["fallback"] is None
    # p2: neutral draft, nothing delegated.
    assert records[1]["delegations"] == 0 and records[1]["large_share"] == 0.0
    assert result.summary.accuracy == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("mode", "accuracy", "share"), [("small", 3 / 5, 0.0), ("large", 4 / 5, 1.0)]
)
def test_single_model_modes(tmp_path: Path, mode: str, accuracy: float, share: float) -> None:
    small, large = backends()
    result = run_eval(
        PROBLEMS,
        settings(mode),
        small=small if mode == "small" else None,
        large=large if mode == "large" else None,
    )
    assert result.summary.accuracy == pytest.approx(accuracy)
    assert result.summary.large_share == share
    assert result.summary.delegations_per_problem == 0
    unused = large if mode == "small" else small
    assert unused.sessions == []


def test_missing_model_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs a large model"):
        run_eval(PROBLEMS[:1], settings(), small=backends()[0], large=None)


def test_paper_sampling_and_per_sample_seeds(tmp_path: Path) -> None:
    small, large = backends()
    paper = EvalSettings(dataset="toy", grader="numeric", mode="small", samples=2, seed=7)
    assert (paper.temperature, paper.top_p, paper.top_k) == (0.6, 0.95, 50)
    result = run_eval(PROBLEMS[:2], paper, small=small, out=tmp_path / "s.jsonl")
    assert [(r["id"], r["sample"]) for r in result.records] == [
        ("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)
    ]  # fmt: skip
    seeds = [s.seed for s in small.samplings]
    assert seeds == [r["seed"] for r in result.records]
    assert len(set(seeds)) == 4 and seeds[0] == sample_seed(7, "p1", 0)
    assert all((s.temperature, s.top_p, s.top_k) == (0.6, 0.95, 50) for s in small.samplings)
    # pass@1 averaged over samples: p1 wrong twice, p2 right twice.
    assert result.summary.accuracy == 0.5
    assert sample_seed(None, "p1", 0) is None
    # More samples later: the first two per problem are reused.
    more = run_eval(
        PROBLEMS[:2],
        EvalSettings(dataset="toy", grader="numeric", mode="small", samples=3, seed=7),
        small=small,
        out=tmp_path / "s.jsonl",
    )
    assert (more.new, more.resumed) == (2, 4)


def test_resume_after_a_kill_mid_problem(tmp_path: Path) -> None:
    full = run_eval(PROBLEMS, settings(), small=backends()[0], large=backends()[1])

    # Kill (Ctrl-C) while problem 3 is being written, after its second token.
    small, large = backends()
    written = {"n": 0}

    def kill_in_p3() -> None:
        if "10-7" in small.prompts[-1]:
            written["n"] += 1
            if written["n"] == 2:
                raise KeyboardInterrupt

    small.on_token = kill_in_p3
    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_eval(PROBLEMS, settings(), small=small, large=large, out=out)
    assert [r["id"] for r in read_records(out)] == ["p1", "p2"]
    assert small.sessions and all(s.closed for s in small.sessions)  # caches released

    small, large = backends()
    resumed = run_eval(PROBLEMS, settings(), small=small, large=large, out=out)
    assert (resumed.new, resumed.resumed) == (3, 2)
    assert len(small.prompts) == 3  # p1, p2 were not asked again
    ids = [(r["id"], r["sample"]) for r in read_records(out)]
    assert ids == [(p.id, 0) for p in PROBLEMS]  # no duplicates, in order
    assert stable(resumed.summary) == stable(full.summary)

    # A third run has nothing to do and loads no model.
    def no_load() -> Any:
        raise AssertionError("nothing left: no model should be loaded")

    again = run_eval(PROBLEMS, settings(), small=no_load, large=no_load, out=out)
    assert (again.new, again.resumed) == (0, 5)
    assert stable(again.summary) == stable(full.summary)


def test_interrupt_between_problems_and_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    seen: list[str] = []

    def stop_after_two(record: dict[str, Any]) -> None:
        seen.append(record["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    small, large = backends()
    with pytest.raises(KeyboardInterrupt):
        run_eval(PROBLEMS, settings(), small=small, large=large, out=out, on_record=stop_after_two)
    assert len(read_records(out)) == 2
    # A kill in the middle of a write leaves a partial line: it is dropped and redone.
    with out.open("a") as fh:
        fh.write('{"id": "p3", "sample": 0, "corr')
    assert len(read_records(out)) == 2
    small, large = backends()
    result = run_eval(PROBLEMS, settings(), small=small, large=large, out=out)
    assert (result.new, result.resumed) == (3, 2)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["p1", "p2", "p3", "p4", "p5"]


def test_limit_grows_without_redoing(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    small, large = backends()
    first = run_eval(PROBLEMS[:2], settings(), small=small, large=large, out=out)
    second = run_eval(PROBLEMS[:4], settings(), small=small, large=large, out=out)
    assert (first.new, second.new, second.resumed) == (2, 2, 2)
    assert len(second.records) == 4
    # A smaller limit reports only its own problems.
    assert len(run_eval(PROBLEMS[:1], settings(), out=out).records) == 1


def test_other_settings_into_the_same_file_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    small, large = backends()
    run_eval(PROBLEMS[:1], settings(), small=small, large=large, out=out)
    with pytest.raises(ConfigError, match="mode: 'speculative' there, 'small' now"):
        run_eval(PROBLEMS[:2], settings("small"), small=small, out=out)
    with pytest.raises(ConfigError, match="max_tokens"):
        run_eval(PROBLEMS[:2], settings(max_tokens=50), small=small, large=large, out=out)
    assert len(read_records(out)) == 1


def test_malformed_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    out.write_text('{"id": "a"}\nbroken\n{"id": "b"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        read_records(out)


def test_progress_bar_shows_running_accuracy(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    small, large = backends()
    run_eval(PROBLEMS[:3], settings(), small=small, large=large, progress=stream)
    text = stream.getvalue()
    assert "toy speculative" in text and "3/3" in text and "acc=66.7%" in text


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError, match="samples"):
        EvalSettings(dataset="toy", samples=0)
    with pytest.raises(ConfigError, match="draft_tokens"):
        EvalSettings(dataset="toy", overrides={"draft_tokens": 0}).config()


def test_policy_and_budgets_are_recorded_and_compared(tmp_path: Path) -> None:
    small, large = backends()
    capped = settings(preset="instruct", overrides={"draft_tokens": 3, "max_large_tokens": 4})
    result = run_eval(PROBLEMS[:2], capped, small=small, large=large, out=tmp_path / "c.jsonl")
    for record in result.records:
        assert record["policy"] == "keyword"
        assert record["large_generated"] <= 4
        assert record["budgets"]["max_large_tokens"] == 4
    assert result.summary.large_generated_per_problem <= 4
    judged = settings(overrides={"draft_tokens": 3, "policy": "judge", "judge_threshold": 0})
    other = run_eval(PROBLEMS[:2], judged, small=small, large=large, out=tmp_path / "j.jsonl")
    assert other.summary.policy == "judge" and other.summary.delegations_per_problem == 0
