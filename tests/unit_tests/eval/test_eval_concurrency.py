"""``run_eval(concurrency=n)`` / ``spthink eval --concurrency N`` on scripted models.

Same records for every ``n``, records flushed as each answer finishes, resume after an interrupt,
usage errors, and concurrent requests on models that serialise their forwards and hold a small
pool of contexts (as a local model does) finish without deadlock.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend, ScriptedSession
from langchain_spthink.engine.sampling import SamplingParams, TokenConstraint
from langchain_spthink.errors import ConfigError
from langchain_spthink.eval import EvalSettings, Problem, read_records, run_eval
from langchain_spthink.eval.cli import main

pytestmark = pytest.mark.timeout(60)

PROBLEMS = [
    Problem("p1", "What is 2+2?", "4"),
    Problem("p2", "What is 3*3?", "9"),
    Problem("p3", "What is 10-7?", "3"),
    Problem("p4", "What is 6/2?", "3"),
    Problem("p5", "What is 5+5?", "10"),
    Problem("p6", "What is 7+1?", "8"),
]
SMALL = {
    "2+2": ["Add them.\n\n", "Wait, redo.\n\n", "So \\boxed{5}."],
    "3*3": ["Multiply.\n\n", "So \\boxed{9}."],
    "10-7": ["Subtract.\n\n", "The final answer is 3."],
    "6/2": ["Divide.\n\n", "Hmm, \\boxed{2}."],
    "5+5": ["Add.\n\n", "So \\boxed{10}."],
    "7+1": ["Add one.\n\n", "Wait, so \\boxed{8}."],
}
LARGE = {
    "2+2": ["Add them.\n\n", "Wait, check: 2+2=4.\n\n", "So \\boxed{4}."],
    "3*3": ["Multiply.\n\n", "So \\boxed{9}."],
    "10-7": ["Subtract.\n\n", "So \\boxed{7}."],
    "6/2": ["Divide.\n\n", "Alternatively, it is \\boxed{3}."],
    "5+5": ["Add.\n\n", "So \\boxed{10}."],
    "7+1": ["Add one.\n\n", "Yes, \\boxed{8}."],
}
TIMING = ("seconds", "engine_seconds")


class ProblemBackend(ScriptedBackend):
    """A thread-safe scripted model whose script is chosen by the problem in its prompt.

    Every session writes from its own script (a child backend sharing the vocabulary), so
    sessions of different problems may run at once.
    """

    def __init__(self, scripts: Mapping[str, Sequence[str]], **kwargs: Any) -> None:
        super().__init__([], **kwargs)
        self.scripts = scripts
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        self.slow: set[str] = set()  # problems whose every token waits for `release`
        self.release = threading.Event()

    def key(self, prompt: str) -> str:
        return next(k for k in self.scripts if k in prompt)

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ScriptedSession:
        prompt = self.decode(prompt_ids)
        key = self.key(prompt)
        release = self.release

        def on_token() -> None:
            if key in self.slow:
                assert release.wait(30), "the test never released the slow problems"

        child = ScriptedBackend(self.scripts[key], name=self.name, on_token=on_token)
        with self.lock:
            self.prompts.append(prompt)
        session = child.new_session(prompt_ids, sampling)
        with self.lock:
            self.sessions.append(session)
        return session


def backends() -> tuple[ProblemBackend, ProblemBackend]:
    return ProblemBackend(SMALL, name="small"), ProblemBackend(LARGE, name="large")


def settings(**kwargs: Any) -> EvalSettings:
    values: dict[str, Any] = {
        "dataset": "toy",
        "grader": "numeric",
        "small": "small",
        "large": "large",
        "preset": "reasoning",
        "max_tokens": 100,
        "temperature": 0.6,
        "seed": 7,
        "samples": 2,
        "overrides": {"draft_tokens": 3},
        **kwargs,
    }
    return EvalSettings(**values)


def untimed(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_records_do_not_depend_on_concurrency(tmp_path: Path) -> None:
    runs = {}
    for n in (1, 4):
        small, large = backends()
        out = tmp_path / f"run{n}.jsonl"
        result = run_eval(PROBLEMS, settings(), small=small, large=large, out=out, concurrency=n)
        assert (result.new, result.resumed) == (12, 0)
        runs[n] = result
        # Every answer is in the file once; result.records are in problem then sample order.
        on_disk = read_records(out)
        assert sorted((r["id"], r["sample"]) for r in on_disk) == [
            (p.id, s) for p in PROBLEMS for s in range(2)
        ]
        assert [(r["id"], r["sample"]) for r in result.records] == [
            (p.id, s) for p in PROBLEMS for s in range(2)
        ]
    assert untimed(runs[1].records) == untimed(runs[4].records)  # answers, grades and seeds
    one, four = vars(runs[1].summary), vars(runs[4].summary)
    for key in ("seconds_per_problem", "total_seconds", "label"):
        one.pop(key), four.pop(key)
    assert one == four


def test_records_are_flushed_as_each_answer_finishes(tmp_path: Path) -> None:
    small, large = backends()
    small.slow = large.slow = {k for k in SMALL if k != "3*3"}  # only p2 may finish
    out = tmp_path / "run.jsonl"
    problems = PROBLEMS[:4]
    result: dict[str, Any] = {}

    def run() -> None:
        result["r"] = run_eval(
            problems, settings(samples=1), small=small, large=large, out=out, concurrency=4
        )

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if out.exists() and read_records(out):
                break
            time.sleep(0.01)
        # p2 is on disk while p1, p3 and p4 are still generating (all four started at once).
        assert [r["id"] for r in read_records(out)] == ["p2"]
        assert len(small.prompts) == 4
    finally:
        small.release.set()
        large.release.set()
        worker.join(20)
    assert not worker.is_alive()
    assert [r["id"] for r in result["r"].records] == ["p1", "p2", "p3", "p4"]
    assert sorted(r["id"] for r in read_records(out)) == ["p1", "p2", "p3", "p4"]


def test_interrupt_and_resume_with_concurrency(tmp_path: Path) -> None:
    full = run_eval(PROBLEMS, settings(samples=1), small=backends()[0], large=backends()[1])
    out = tmp_path / "run.jsonl"
    seen: list[str] = []

    def stop_after_two(record: dict[str, Any]) -> None:
        seen.append(record["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    small, large = backends()
    with pytest.raises(KeyboardInterrupt):
        run_eval(
            PROBLEMS,
            settings(samples=1),
            small=small,
            large=large,
            out=out,
            concurrency=4,
            on_record=stop_after_two,
        )
    written = [r["id"] for r in read_records(out)]
    assert written == seen  # records of the answers in flight were not written
    # The answers in flight stopped before run_eval returned, and released their sessions.
    assert small.sessions and all(s.closed for s in small.sessions + large.sessions)
    assert not [t for t in threading.enumerate() if t.name.startswith("spthink-eval")]
    missing = [p.id for p in PROBLEMS if p.id not in written]

    small, large = backends()
    resumed = run_eval(
        PROBLEMS, settings(samples=1), small=small, large=large, out=out, concurrency=4
    )
    assert (resumed.new, resumed.resumed) == (len(missing), 2)
    asked = sorted(p.id for p in PROBLEMS if any(small.key(q) in p.problem for q in small.prompts))
    assert asked == missing  # exactly the missing ones were answered
    assert sorted(r["id"] for r in read_records(out)) == [p.id for p in PROBLEMS]  # no dups
    assert untimed(resumed.records) == untimed(full.records)


def test_bad_concurrency(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        run_eval(PROBLEMS, settings(), small=backends()[0], large=backends()[1], concurrency=0)
    data = tmp_path / "toy-gsm8k.jsonl"
    data.write_text('{"id": "a", "problem": "What is 2+2?", "answer": "4"}\n')
    for bad in ("0", "-2", "x"):
        code = main(["eval", "--dataset", str(data), "--concurrency", bad], stderr=io.StringIO())
        assert code == 2
        message = capsys.readouterr().err  # argparse's usage error
        assert "argument --concurrency: expected a positive integer" in message


class _PooledSession(ScriptedSession):
    def __init__(self, pool: PooledBackend, inner: ScriptedSession) -> None:
        super().__init__(inner.backend, inner.ids, inner.prompt_len)
        self.pool = pool

    def stream(self, max_new: int, *, constraint: TokenConstraint | None = None) -> Iterator[int]:
        tokens = super().stream(max_new, constraint=constraint)
        while True:
            with self.pool.forward:  # one forward at a time on this model
                self.pool.busy += 1
                self.pool.most_busy = max(self.pool.most_busy, self.pool.busy)
                try:
                    token = next(tokens, None)
                finally:
                    self.pool.busy -= 1
            if token is None:
                return
            time.sleep(0.005)  # let other requests in between forwards
            yield token

    def close(self) -> None:
        if not self.closed:
            with self.pool.lock:
                self.pool.open -= 1
            self.pool.contexts.release()
        super().close()


class PooledBackend(ProblemBackend):
    """A local-style model: ``max_contexts`` sessions at once (others wait), forwards serialised.

    Like :class:`~langchain_spthink.backends.llamacpp.LlamaCppBackend`'s context pool; a session
    that waits too long fails instead of hanging.
    """

    def __init__(self, scripts: Mapping[str, Sequence[str]], max_contexts: int, **kw: Any) -> None:
        super().__init__(scripts, **kw)
        self.contexts = threading.BoundedSemaphore(max_contexts)
        self.forward = threading.Lock()
        self.busy = 0
        self.most_busy = 0
        self.open = 0
        self.most_open = 0

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ScriptedSession:
        if not self.contexts.acquire(timeout=20):
            raise RuntimeError(f"{self.name}: no free context (deadlock?)")
        with self.lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        return _PooledSession(self, super().new_session(prompt_ids, sampling))


@pytest.mark.parametrize("mode", ["speculative", "small", "large"])
def test_concurrent_requests_on_local_style_models_do_not_deadlock(mode: str) -> None:
    small = PooledBackend(SMALL, max_contexts=1, name="small")
    large = PooledBackend(LARGE, max_contexts=2, name="large")
    done: dict[str, Any] = {}

    def run() -> None:
        done["r"] = run_eval(PROBLEMS, settings(mode=mode), small=small, large=large, concurrency=8)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(45)
    assert not worker.is_alive(), "concurrent requests deadlocked"
    # Serially on the same kind of models (their pooled sessions decode plainly, no verification).
    serial = run_eval(
        PROBLEMS,
        settings(mode=mode),
        small=PooledBackend(SMALL, max_contexts=1, name="small"),
        large=PooledBackend(LARGE, max_contexts=2, name="large"),
    )
    assert untimed(done["r"].records) == untimed(serial.records)
    assert small.most_busy <= 1 and large.most_busy <= 1  # forwards never overlapped per model
    # The pools were contended: as many sessions open at once as there were contexts (in
    # speculative mode a request holds its small-model context throughout, so the small pool
    # of one lets one request at a time reach the large model).
    assert (small.most_open, large.most_open) == {
        "speculative": (1, 1),
        "small": (1, 0),
        "large": (0, 2),
    }[mode]


def test_eval_cli_concurrency(tmp_path: Path) -> None:
    data = tmp_path / "toy-gsm8k.jsonl"
    data.write_text(
        "".join(
            f'{{"id": "{p.id}", "problem": "{p.problem}", "answer": "{p.answer}"}}\n'
            for p in PROBLEMS
        )
    )
    small, large = backends()
    out, run = io.StringIO(), tmp_path / "run.jsonl"
    args = ["eval", "--dataset", str(data), "--small", "s", "--large", "l", "--greedy", "-q"]
    args += ["--preset", "reasoning", "--set", "draft_tokens=3", "--concurrency", "3"]
    code = main([*args, "--out", str(run)], backends={"s": small, "l": large}, stdout=out)
    assert code == 0
    assert sorted(r["id"] for r in read_records(run)) == [p.id for p in PROBLEMS]
    assert "6 new answers, 0 already in" in out.getvalue()
