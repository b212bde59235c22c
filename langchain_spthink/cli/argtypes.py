"""argparse value types shared by the ``spthink`` subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Any

from langchain_spthink.engine.config import DEFAULT_PRESET

__all__ = [
    "add_model_arguments",
    "add_knob_arguments",
    "add_sampling_arguments",
    "add_set_argument",
    "add_threads_argument",
    "add_policy_arguments",
    "key_value",
    "policy_overrides",
    "positive_int",
]


def positive_int(text: str) -> int:
    """Parse a positive integer option value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def key_value(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE``; VALUE is JSON when it parses as JSON (lists become tuples)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), tuple(value) if isinstance(value, list) else value


def add_model_arguments(
    parser: argparse.ArgumentParser, small_default: str, large_default: str, presets: list[str]
) -> None:
    """The models, mode and paper preset of a request (``run`` and ``eval``)."""
    parser.add_argument(
        "--small", default=small_default, help=f"small model (default {small_default})"
    )
    parser.add_argument(
        "--large", default=large_default, help=f"large model (default {large_default})"
    )
    parser.add_argument(
        "--mode",
        choices=("speculative", "small", "large"),
        default="speculative",
        help="speculative (default), or one model alone",
    )
    parser.add_argument(
        "--preset",
        choices=presets,
        default=DEFAULT_PRESET,
        help="paper configuration: reasoning (intervene at cue words only) or instruct (the "
        f"large model opens the answer and writes a step at every boundary) (default "
        f"{DEFAULT_PRESET}, chosen by measurement: see the docs)",
    )
    add_threads_argument(parser)


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-p``, ``--top-k``: the sampling knobs (``run`` and ``eval``)."""
    for flag, kind, meaning, default in (
        ("--temperature", float, "sampling temperature, 0 = greedy", 0.6),
        ("--top-p", float, "nucleus mass", 0.95),
        ("--top-k", int, "top-k cut, 0 disables", 50),
    ):
        parser.add_argument(
            flag, type=kind, help=f"{meaning} (default: the preset's; paper: {default})"
        )


def add_knob_arguments(parser: argparse.ArgumentParser, set_help: str) -> None:
    """Sampling, ``--set``, the delegation policy and the budgets (``run`` and ``eval``)."""
    add_sampling_arguments(parser)
    add_set_argument(parser, set_help)
    add_policy_arguments(parser)


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE``: any config knob, repeatable (``run``, ``config`` and ``eval``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: CPU threads of each local model (``run``, ``eval`` and ``serve``)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads of each local model (default: half the cores, at most 4, or "
        "$SPTHINK_THREADS; fewer threads hold up better when the CPU is shared)",
    )


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the delegation policy and the per-request budgets (``run`` and ``eval``)."""
    parser.add_argument(
        "--policy",
        choices=("keyword", "judge"),
        help="delegation policy: keyword (the paper's cue words; default) or judge (the large "
        "model scores each small draft 0-9, SpecReason-style)",
    )
    parser.add_argument(
        "--judge-threshold",
        type=float,
        help="judge policy: delegate drafts scored below this (0-9, default 7)",
    )
    parser.add_argument(
        "--max-large-tokens",
        type=int,
        help="cap on tokens the large model generates per request; then small mode "
        "(default: no cap)",
    )
    parser.add_argument(
        "--max-reasoning-tokens",
        type=positive_int,
        help="thinking budget: output tokens before the answer is forced (default: no budget)",
    )


def policy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields set by :func:`add_policy_arguments` options (unset ones left out)."""
    names = ("policy", "judge_threshold", "max_large_tokens", "max_reasoning_tokens")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
