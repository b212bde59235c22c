"""The ``spthink eval`` and ``spthink report`` subcommands.

:func:`add_eval_parsers` adds both to the ``spthink`` parser's subcommands; each sets
``handler`` to a function ``(args, ctx) -> exit code`` where ``ctx`` gives the output streams,
progress notes and backends (:class:`CliContext`). :func:`main` runs the two subcommands on their
own (``python -m langchain_spthink.eval``), with the same injectable backends as ``spthink``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from langchain_spthink.backends.base import Backend
from langchain_spthink.cli.argtypes import (
    add_knob_arguments,
    add_model_arguments,
    policy_overrides,
    positive_int,
)
from langchain_spthink.engine.config import PRESETS
from langchain_spthink.errors import ConfigError, ModelLoadError, SpThinkError
from langchain_spthink.eval.datasets import DATASETS, dataset_grader, load_dataset
from langchain_spthink.eval.report import format_table, run_labels, summarize, write_plots
from langchain_spthink.eval.runner import EvalSettings, read_records, run_eval

__all__ = ["CliContext", "add_eval_parsers", "cmd_eval", "cmd_report", "main"]


class CliContext(Protocol):
    """What the handlers need from ``spthink``'s context."""

    @property
    def stdout(self) -> IO[str]:
        """Where results go."""
        ...

    @property
    def stderr(self) -> IO[str]:
        """Where progress and notes go."""
        ...

    threads: int | None
    """CPU threads of the local models it loads (``None``: the default)."""

    def backend(self, spec: str) -> Backend:
        """The backend of a model spec (loaded once)."""
        ...

    def note(self, message: str) -> None:
        """A progress line on stderr."""
        ...


def _defaults() -> tuple[str, str]:
    from langchain_spthink.models import DEFAULT_LARGE_MODEL, DEFAULT_SMALL_MODEL

    return DEFAULT_SMALL_MODEL, DEFAULT_LARGE_MODEL


def add_eval_parsers(subparsers: Any) -> None:
    """Add ``eval`` and ``report`` to the subcommands of the ``spthink`` parser.

    Args:
        subparsers: The object ``ArgumentParser.add_subparsers()`` returned.
    """
    small_default, large_default = _defaults()
    ev = subparsers.add_parser(
        "eval",
        help="run a math benchmark with the paper's protocol; one JSONL record per answer",
        description="Answer a benchmark's problems with the paper's prompt and sampling, grade "
        "them (math-verify; GSM8K numerically) and append one JSON record per answer to --out. "
        "Re-running with the same --out skips the answers already there.",
    )
    ev.add_argument(
        "--dataset",
        required=True,
        help=f"one of {', '.join(DATASETS)}, or a JSONL file with id, problem, answer",
    )
    add_model_arguments(ev, small_default, large_default, sorted(PRESETS))
    ev.add_argument("--limit", type=positive_int, help="first N problems only (default: all)")
    ev.add_argument(
        "--samples", type=positive_int, default=1, help="answers per problem (pass@1 averaged)"
    )
    ev.add_argument(
        "--max-tokens", type=positive_int, default=1024, help="output budget per answer"
    )
    ev.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    add_knob_arguments(ev, "any config field (VALUE parsed as JSON when it is JSON; default: none)")
    ev.add_argument("--greedy", action="store_true", help="greedy decoding (temperature 0)")
    ev.add_argument(
        "--out",
        help="JSONL file of records, appended and resumed (default eval-DATASET-MODE.jsonl)",
    )
    ev.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="answers generated at once, each its own request (default 1); records are written "
        "as each finishes and the results do not depend on N. Worth raising for remote models; "
        "local ones share the CPU (see the docs' Concurrency section)",
    )
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(handler=cmd_eval)

    rep = subparsers.add_parser(
        "report",
        help="compare eval runs: a table like the paper's Table 2, and plots",
        description="Summarize eval runs (accuracy, average output length, large-model token "
        "share, delegations and wall time per problem) as a Markdown table; with --plots, write "
        "PNG plots too.",
    )
    rep.add_argument("runs", nargs="+", help="JSONL files written by spthink eval")
    rep.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR (default: no plots)")
    rep.add_argument("--json", action="store_true", help="JSON summaries instead of a table")
    rep.set_defaults(handler=cmd_report)


def _settings(args: argparse.Namespace) -> EvalSettings:
    overrides: dict[str, Any] = {**dict(args.overrides), **policy_overrides(args)}
    sampling = {"temperature": 0.6, "top_p": 0.95, "top_k": 50}
    for key in sampling:
        if key in overrides:
            sampling[key] = overrides.pop(key)
        if getattr(args, key) is not None:
            sampling[key] = getattr(args, key)
    if args.greedy:
        sampling["temperature"] = 0.0
    settings = EvalSettings(
        dataset=args.dataset,
        grader=dataset_grader(args.dataset),
        small=args.small if args.mode != "large" else None,
        large=args.large if args.mode != "small" else None,
        mode=args.mode,
        preset=args.preset,
        max_tokens=args.max_tokens,
        temperature=float(sampling["temperature"]),
        top_p=float(sampling["top_p"]),
        top_k=int(sampling["top_k"]),
        seed=args.seed,
        samples=args.samples,
        overrides=overrides,
    )
    settings.config()  # validate now, before loading models
    return settings


def cmd_eval(args: argparse.Namespace, ctx: CliContext) -> int:
    """Handler of ``spthink eval``."""
    settings = _settings(args)
    ctx.threads = args.threads
    problems = load_dataset(args.dataset, args.limit)
    if not problems:
        raise ConfigError(f"dataset {args.dataset!r} has no problems")
    out = args.out or f"eval-{Path(args.dataset).stem}-{args.mode}.jsonl"

    def loader(spec: str | None) -> Callable[[], Backend]:
        def load() -> Backend:
            if spec is None:  # pragma: no cover - guarded by the mode
                raise ModelLoadError("no model given")
            started = time.monotonic()
            backend = ctx.backend(spec)
            ctx.note(f"spthink: {spec} ready in {time.monotonic() - started:.1f} s")
            return backend

        return load

    started = time.monotonic()
    try:
        result = run_eval(
            problems,
            settings,
            small=loader(settings.small),
            large=loader(settings.large),
            out=out,
            progress=None if args.quiet else ctx.stderr,
            concurrency=args.concurrency,
        )
    except KeyboardInterrupt:
        ctx.note(f"spthink: stopped; finished answers are in {out}: rerun the command to resume")
        raise
    summary = result.summary
    print(format_table([summary]).split("\n\n")[0], file=ctx.stdout)
    print(
        f"{result.new} new answers, {result.resumed} already in {out}; "
        f"{time.monotonic() - started:.1f} s",
        file=ctx.stdout,
        flush=True,
    )
    return 0


def cmd_report(args: argparse.Namespace, ctx: CliContext) -> int:
    """Handler of ``spthink report``."""
    paths = [Path(p) for p in args.runs]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"no such run file: {path}")
    records = [read_records(p) for p in paths]
    summaries = [
        summarize(r, label=label) for r, label in zip(records, run_labels(paths), strict=True)
    ]
    if args.json:
        for s in summaries:
            print(json.dumps(asdict(s), ensure_ascii=False), file=ctx.stdout)
    else:
        print(format_table(summaries), file=ctx.stdout)
    if args.plots:
        for written in write_plots(summaries, records, args.plots):
            ctx.note(f"spthink: wrote {written}")
    return 0


@dataclass
class _Context:
    stdout: IO[str]
    stderr: IO[str]
    backends: Mapping[str, Backend] | Callable[[str], Backend] | None = None
    loaded: dict[str, Backend] = field(default_factory=dict)
    threads: int | None = None

    def backend(self, spec: str) -> Backend:
        if spec not in self.loaded:
            source = self.backends
            if source is None:
                from langchain_spthink.backends.loading import load_backend

                self.loaded[spec] = load_backend(spec, threads=self.threads)
            elif isinstance(source, Mapping):
                if spec not in source:
                    raise ModelLoadError(f"unknown model {spec!r}; available: {sorted(source)}")
                self.loaded[spec] = source[spec]
            else:
                self.loaded[spec] = source(spec)
        return self.loaded[spec]

    def note(self, message: str) -> None:
        print(message, file=self.stderr, flush=True)


def main(
    argv: Sequence[str] | None = None,
    *,
    backends: Mapping[str, Backend] | Callable[[str], Backend] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run ``eval`` or ``report`` on their own and return the exit code.

    Args:
        argv: Arguments, e.g. ``["eval", "--dataset", "gsm8k", ...]`` (default ``sys.argv[1:]``).
        backends: Backends to use instead of loading weights: spec -> backend, or a function.
        stdout: Where results go (default ``sys.stdout``).
        stderr: Where progress and errors go (default ``sys.stderr``).

    Returns:
        0 on success, 1 on an error, 2 on bad usage, 130 on Ctrl-C.
    """
    ctx = _Context(stdout or sys.stdout, stderr or sys.stderr, backends)
    parser = argparse.ArgumentParser(prog="spthink", exit_on_error=False)
    add_eval_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except argparse.ArgumentError as exc:
        print(f"spthink: error: {exc}", file=ctx.stderr)
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    handler: Callable[[argparse.Namespace, CliContext], int] = args.handler
    try:
        return handler(args, ctx)
    except KeyboardInterrupt:
        print("spthink: interrupted", file=ctx.stderr)
        return 130
    except (SpThinkError, OSError, ValueError) as exc:
        kind = "" if isinstance(exc, SpThinkError) else f"{type(exc).__name__}: "
        print(f"spthink: error: {kind}{exc}", file=ctx.stderr)
        return 1
