r"""Run a benchmark with the paper's protocol and write one JSONL record per problem-sample.

The prompt is the paper's: ``"Please reason step by step, and put your final answer within
\boxed{}."`` followed by the problem, as one user message rendered by each model's own chat
template. Sampling defaults to the paper's (temperature 0.6, top-p 0.95, top-k 50). With
``samples = k`` every problem is answered ``k`` times (seeds derived from ``seed``, the problem id
and the sample index) and accuracy is pass@1 averaged over the samples.

Runs are resumable: every record is appended and flushed as soon as its problem is graded; a rerun
with the same output file skips the (problem, sample) pairs already there, so a kill loses at most
the answers in flight. With ``concurrency = n`` up to ``n`` answers run at once in worker threads
(each its own request); records are written by one writer in the order they finish, and the
result lists them in problem order whatever that order was. Seeds do not depend on ``n``.
A rerun with different settings (model, mode, preset, sampling, budget) into the same file is
refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from langchain_spthink.backends.base import Backend
from langchain_spthink.chat.request import build_request
from langchain_spthink.engine.config import DEFAULT_PRESET, SpeculativeThinkingConfig, preset
from langchain_spthink.engine.events import DelegationEvent, FallbackEvent, FinishEvent
from langchain_spthink.engine.loop import Mode, Role
from langchain_spthink.errors import ConfigError
from langchain_spthink.eval.datasets import GraderKind, Problem
from langchain_spthink.eval.grading import grade
from langchain_spthink.eval.report import RunSummary, summarize

__all__ = [
    "DELEGATION_KINDS",
    "PROMPT",
    "BackendLike",
    "EvalResult",
    "EvalSettings",
    "build_prompt",
    "read_records",
    "run_eval",
    "sample_seed",
]

PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
"""The paper's instruction, put before the problem."""

DELEGATION_KINDS = ("begin", "reflection", "verify", "recap")

BackendLike = Backend | Callable[[], Backend]
"""A backend, or a function that loads it (called only if something is left to run)."""

# Settings that may differ between the runs sharing one output file.
_RESUMABLE_FIELDS = ("samples",)


def build_prompt(problem: str) -> str:
    """The user message of the paper's protocol for one problem."""
    return f"{PROMPT}\n{problem}"


def sample_seed(seed: int | None, problem_id: str, sample: int) -> int | None:
    """The seed of one (problem, sample): stable across runs, limits and resumes."""
    if seed is None:
        return None
    return zlib.crc32(f"{seed}:{problem_id}:{sample}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class EvalSettings:
    """The settings of one evaluation run; written into every record as ``run``.

    Attributes:
        dataset: Dataset name or path.
        grader: ``math`` or ``numeric``.
        small: Small model spec (``None`` in ``large`` mode).
        large: Large model spec (``None`` in ``small`` mode).
        mode: ``speculative``, ``small`` or ``large``.
        preset: Config preset (``reasoning`` or ``instruct``).
        max_tokens: Output token budget per answer.
        temperature: Sampling temperature (0 = greedy).
        top_p: Nucleus mass.
        top_k: Top-k cut.
        seed: Base seed (``None``: unseeded).
        samples: Answers per problem (pass@1 is averaged over them).
        overrides: Other config fields set on top of the preset.
    """

    dataset: str
    grader: GraderKind = "math"
    small: str | None = None
    large: str | None = None
    mode: Mode = "speculative"
    preset: str = DEFAULT_PRESET
    max_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 50
    seed: int | None = 0
    samples: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"samples must be >= 1, got {self.samples}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")

    def config(self) -> SpeculativeThinkingConfig:
        """The speculative-thinking config: the preset, the sampling, then the overrides."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return preset(self.preset, **{**sampling, **self.overrides})

    def to_json(self) -> dict[str, Any]:
        """The settings as a JSON object (what records carry as ``run``)."""
        data = asdict(self)
        data["prompt"] = PROMPT
        return data


@dataclass
class EvalResult:
    """What :func:`run_eval` did.

    Attributes:
        records: Every record of this run's problems and samples (resumed ones included), in
            problem then sample order.
        new: How many records this call wrote.
        resumed: How many were already in the output file.
        summary: Accuracy, lengths, shares and timings of :attr:`records`.
    """

    records: list[dict[str, Any]]
    new: int
    resumed: int
    summary: RunSummary


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a run file, skipping blank lines and a truncated last line (killed write).

    Raises:
        ConfigError: A malformed line that is not the last one.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # a write cut short by a kill: that answer is simply run again
            raise ConfigError(f"{path}, line {number}: not a JSON record ({exc})") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise ConfigError(f"{path}, line {number}: not an eval record")
        records.append(record)
    return records


def _repair_tail(path: Path) -> None:
    """Cut a partial last line (a killed write) so that appended records start on a new line."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        with path.open("rb+") as fh:
            fh.truncate(cut)
        return
    with path.open("ab") as fh:
        fh.write(b"\n")


def _check_compatible(
    records: Sequence[dict[str, Any]], settings: EvalSettings, path: Path
) -> None:
    want = json.loads(json.dumps(settings.to_json()))  # tuples -> lists, as read back
    for record in records:
        have = record.get("run") or {}
        diff = sorted(
            k
            for k in set(want) | set(have)
            if k not in _RESUMABLE_FIELDS and have.get(k) != want.get(k)
        )
        if diff:
            shown = ", ".join(f"{k}: {have.get(k)!r} there, {want.get(k)!r} now" for k in diff)
            raise ConfigError(
                f"{path} holds records of another run ({shown}); "
                "use another --out file (or delete it to start over)"
            )


def _resolve(backend: BackendLike | None) -> Backend | None:
    if backend is None or hasattr(backend, "new_session"):  # a backend, not a loader
        return cast(Backend | None, backend)
    return backend()


def _record(
    problem: Problem,
    sample: int,
    settings: EvalSettings,
    finish: FinishEvent,
    delegations: Sequence[DelegationEvent],
    fallback: FallbackEvent | None,
    seconds: float,
    seed: int | None,
) -> dict[str, Any]:
    verdict = grade(finish.text, problem.answer, settings.grader)
    kinds: Counter[str] = Counter(d.kind for d in delegations)
    return {
        "id": problem.id,
        "sample": sample,
        "dataset": settings.dataset,
        "mode": settings.mode,
        "correct": verdict.correct,
        "extracted": verdict.extracted,
        "extracted_from": verdict.source,
        "reference": problem.answer,
        "grading_error": verdict.error,
        "output_tokens": finish.output_tokens,
        "small_tokens": finish.small.kept_tokens,
        "large_tokens": finish.large.kept_tokens,
        "large_share": finish.large_share,
        "small_generated": finish.small.generated_tokens,
        "large_generated": finish.large.generated_tokens,
        "large_decoding": finish.large_decoding,
        "large_passes": finish.large.decode_passes,
        "proposed_tokens": finish.large.proposed_tokens,
        "accepted_tokens": finish.large.accepted_tokens,
        "delegations": len(delegations),
        "delegations_by_kind": {k: kinds.get(k, 0) for k in DELEGATION_KINDS},
        "large_steps_rejected": sum(1 for d in delegations if d.kept != "large"),
        "seconds": seconds,
        "engine_seconds": finish.seconds,
        "finish_reason": finish.stop_reason,
        "final_mode": finish.mode,
        "fallback": fallback.reason if fallback else None,
        "policy": settings.config().policy,
        "budgets": dict(finish.budgets),
        "seed": seed,
        "answer": finish.text,
        "run": settings.to_json(),
    }


class _Abandoned(Exception):
    """An answer in flight stopped because the run was interrupted or failed."""


def _answer(
    backends: dict[Role, Backend],
    problem: Problem,
    sample: int,
    settings: EvalSettings,
    config: SpeculativeThinkingConfig,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    seed = sample_seed(settings.seed, problem.id, sample)
    prepared = build_request(
        [{"role": "user", "content": build_prompt(problem.problem)}],
        backends,
        config,
        mode=settings.mode,
        max_tokens=settings.max_tokens,
        seed=seed,
    )
    delegations: list[DelegationEvent] = []
    fallback: FallbackEvent | None = None
    finish: FinishEvent | None = None
    events = prepared.engine.generate(prepared.request)
    try:
        for event in events:
            if stop is not None and stop.is_set():
                raise _Abandoned
            if isinstance(event, DelegationEvent):
                delegations.append(event)
            elif isinstance(event, FallbackEvent):
                fallback = event
            elif isinstance(event, FinishEvent):
                finish = event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # frees the sessions now, also when abandoned
    if finish is None:  # pragma: no cover - the engine always finishes
        raise RuntimeError("the engine ended without a finish event")
    seconds = time.perf_counter() - started
    return _record(problem, sample, settings, finish, delegations, fallback, seconds, seed)


def _progress(total: int, initial: int, settings: EvalSettings, stream: IO[str] | None) -> Any:
    if stream is None:
        return None
    from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

    label = Path(settings.dataset).stem if settings.dataset.endswith(".jsonl") else settings.dataset
    return tqdm(
        total=total,
        initial=initial,
        desc=f"{label} {settings.mode}",
        unit="answer",
        file=stream,
        dynamic_ncols=True,
    )


def _pairs(problems: Sequence[Problem], samples: int) -> Iterator[tuple[Problem, int]]:
    for problem in problems:
        for sample in range(samples):
            yield problem, sample


def _run_concurrently(
    pending: Sequence[tuple[Problem, int]],
    concurrency: int,
    backends: dict[Role, Backend],
    settings: EvalSettings,
    config: SpeculativeThinkingConfig,
    emit: Callable[[Problem, int, dict[str, Any]], None],
) -> None:
    """Answer ``pending`` in up to ``concurrency`` worker threads; ``emit`` each as it finishes.

    Work is handed out in problem order, at most ``concurrency`` in flight, and ``emit`` runs
    in the calling thread. On an error or an interrupt nothing new starts; the answers in flight
    stop at their next engine event (sessions closed, records not written) before this returns.
    """
    todo = iter(enumerate(pending))
    running: dict[Future[dict[str, Any]], tuple[int, Problem, int]] = {}
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="spthink-eval")

    def submit() -> bool:
        item = next(todo, None)
        if item is None:
            return False
        _, (problem, sample) = item
        future = pool.submit(_answer, backends, problem, sample, settings, config, stop)
        running[future] = (item[0], problem, sample)
        return True

    try:
        while len(running) < concurrency and submit():
            pass
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: running[f][0]):
                _, problem, sample = running.pop(future)
                emit(problem, sample, future.result())
                submit()
    finally:
        stop.set()  # answers still in flight end at their next event
        pool.shutdown(wait=True, cancel_futures=True)


def run_eval(
    problems: Sequence[Problem],
    settings: EvalSettings,
    *,
    small: BackendLike | None = None,
    large: BackendLike | None = None,
    out: str | Path | None = None,
    progress: IO[str] | bool | None = None,
    config: SpeculativeThinkingConfig | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    concurrency: int = 1,
) -> EvalResult:
    """Answer every (problem, sample) not yet in ``out`` and grade it.

    Args:
        problems: The problems (see :func:`~langchain_spthink.eval.datasets.load_dataset`).
        settings: Models, mode, preset, sampling, budget and samples; recorded in every record.
        small: The small model (needed unless ``settings.mode == "large"``), or its loader.
        large: The large model (needed unless ``settings.mode == "small"``), or its loader.
            Loaders are called only when something is left to run.
        out: JSONL file to append records to and resume from (``None``: keep them in memory).
        progress: A stream for a tqdm progress bar with the running accuracy, ``True`` for
            stderr, ``None``/``False`` for none.
        config: The speculative-thinking config (default: ``settings.config()``).
        on_record: Called with each new record after it is written (from the calling thread).
        concurrency: Answers generated at once, each in its own worker thread and request
            (1: one after the other). Records are graded, written and flushed as each finishes;
            :attr:`EvalResult.records` is in problem order regardless.

    Returns:
        All records of these problems and samples, and their summary.

    Raises:
        ConfigError: ``out`` holds records of a run with other settings, a model is missing, or
            ``concurrency < 1``.
        KeyboardInterrupt: Passed on; the records written so far stay in ``out``.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    config = config or settings.config()
    path = Path(out) if out is not None else None
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if path is not None and path.exists():
        existing = read_records(path)
        _check_compatible(existing, settings, path)
        for record in existing:
            done.setdefault((str(record["id"]), int(record.get("sample", 0))), record)
        _repair_tail(path)
    pairs = list(_pairs(problems, settings.samples))
    pending = [(p, s) for p, s in pairs if (p.id, s) not in done]
    kept: dict[tuple[str, int], dict[str, Any]] = {
        (p.id, s): done[(p.id, s)] for p, s in pairs if (p.id, s) in done
    }
    resumed = len(kept)
    stream = sys.stderr if progress is True else progress or None
    if pending:
        small_backend = _resolve(small) if settings.mode != "large" else None
        large_backend = _resolve(large) if settings.mode != "small" else None
        if settings.mode != "large" and small_backend is None:
            raise ConfigError(f"mode {settings.mode!r} needs a small model")
        if settings.mode != "small" and large_backend is None:
            raise ConfigError(f"mode {settings.mode!r} needs a large model")
        backends: dict[Role, Backend] = {}
        if small_backend is not None:
            backends["small"] = small_backend
        if large_backend is not None:
            backends["large"] = large_backend
        bar = _progress(len(pairs), resumed, settings, stream)
        correct = sum(bool(r.get("correct")) for r in kept.values())
        fh = path.open("a", encoding="utf-8") if path is not None else None
        lock = threading.Lock()  # one writer: records are written and counted under it

        def emit(problem: Problem, sample: int, record: dict[str, Any]) -> None:
            nonlocal correct
            with lock:
                if fh is not None:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                kept[(problem.id, sample)] = record
                correct += bool(record["correct"])
                if bar is not None:
                    bar.set_postfix(
                        acc=f"{100.0 * correct / len(kept):.1f}%",
                        share=f"{100.0 * record['large_share']:.0f}%",
                        refresh=False,
                    )
                    bar.update(1)
            if on_record is not None:
                on_record(record)

        try:
            if concurrency == 1:
                for problem, sample in pending:
                    emit(problem, sample, _answer(backends, problem, sample, settings, config))
            else:
                _run_concurrently(pending, concurrency, backends, settings, config, emit)
        finally:
            if fh is not None:
                fh.close()
            if bar is not None:
                bar.close()
    records = [kept[(p.id, s)] for p, s in pairs if (p.id, s) in kept]
    label = path.stem if path is not None else settings.mode
    return EvalResult(records, len(pending), resumed, summarize(records, label=label))
