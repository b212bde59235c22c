"""Benchmark datasets: the JSONL files shipped in :mod:`langchain_spthink.data`, or your own.

A dataset is JSONL, one problem a line, with fields ``id``, ``problem`` and ``answer`` (the
reference final answer as a string; LaTeX for MATH500). Other fields are kept in
:attr:`Problem.extra`. Attribution of the shipped files: ``langchain_spthink/data/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from langchain_spthink.errors import ConfigError

__all__ = ["DATASETS", "GraderKind", "Problem", "dataset_grader", "load_dataset"]

GraderKind = Literal["math", "numeric"]
"""How answers are compared: LaTeX equivalence (math-verify) or GSM8K-style numbers."""

#: Shipped datasets: name -> (file in ``langchain_spthink/data``, grader).
DATASETS: dict[str, tuple[str, GraderKind]] = {
    "math500": ("math500.jsonl", "math"),
    "aime24": ("aime24.jsonl", "math"),
    "amc23": ("amc23.jsonl", "math"),
    "gsm8k": ("gsm8k.jsonl", "numeric"),
}


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes:
        id: Identifier, unique within the dataset.
        problem: The problem statement.
        answer: The reference final answer.
        extra: Any other fields of the JSONL row (e.g. ``subject``, ``level``).
    """

    id: str
    problem: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)


def dataset_grader(name_or_path: str) -> GraderKind:
    """The grader of a dataset: ``numeric`` for GSM8K (name or file name), else ``math``."""
    if name_or_path in DATASETS:
        return DATASETS[name_or_path][1]
    return "numeric" if "gsm8k" in Path(name_or_path).name.lower() else "math"


def _read_text(name_or_path: str) -> tuple[str, str]:
    """Return ``(text, source description)`` of a shipped dataset name or a JSONL path."""
    if name_or_path in DATASETS:
        filename = DATASETS[name_or_path][0]
        resource = resources.files("langchain_spthink") / "data" / filename
        try:
            return resource.read_text(encoding="utf-8"), f"{name_or_path} ({filename})"
        except OSError as exc:  # pragma: no cover - broken install
            raise ConfigError(
                f"dataset {name_or_path!r} is missing from the package: {exc}"
            ) from exc
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"unknown dataset {name_or_path!r}: not one of {sorted(DATASETS)} "
            "and not an existing JSONL file"
        )
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc}") from exc


def load_dataset(name_or_path: str, limit: int | None = None) -> list[Problem]:
    """Load a shipped dataset (``math500``, ``aime24``, ``amc23``, ``gsm8k``) or a JSONL file.

    Args:
        name_or_path: Dataset name or path of a JSONL file with ``id``, ``problem``, ``answer``
            (``id`` may be missing: the line number is used; ``question`` is accepted for
            ``problem``).
        limit: Keep only the first ``limit`` problems (``None``: all).

    Returns:
        The problems, in file order.

    Raises:
        ConfigError: Unknown name, unreadable file, a malformed line, a missing field or a
            duplicate id.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    text, source = _read_text(name_or_path)
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(problems) >= limit:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}, line {number}: not JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise ConfigError(f"{source}, line {number}: expected a JSON object")
        statement = row.pop("problem", None)
        if statement is None:
            statement = row.pop("question", None)
        answer = row.pop("answer", None)
        if not isinstance(statement, str) or not statement.strip():
            raise ConfigError(f"{source}, line {number}: missing 'problem' text")
        if answer is None or isinstance(answer, (dict, list)):
            raise ConfigError(f"{source}, line {number}: missing 'answer'")
        ident = str(row.pop("id", number))
        if ident in seen:
            raise ConfigError(f"{source}, line {number}: duplicate id {ident!r}")
        seen.add(ident)
        problems.append(Problem(ident, statement, str(answer), row))
    return problems
