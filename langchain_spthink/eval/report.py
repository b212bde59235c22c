"""Summaries of eval runs: the paper's Table 2 (as Markdown) and PNG plots.

Definitions (over the records of one run, one record per problem-sample):

* accuracy: pass@1 averaged over samples, i.e. the mean over problems of the fraction of that
  problem's samples graded correct;
* average length: mean output tokens per answer (both models' kept tokens);
* large share: tokens written by the large model / all output tokens, summed over the run;
* delegations / problem: mean delegation events per answer (also split by kind);
* s / problem: mean wall time per answer (seconds); total: their sum.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunSummary", "accuracy_axes", "format_table", "summarize", "run_labels", "write_plots"]

_KINDS = ("begin", "reflection", "verify", "recap")


@dataclass(frozen=True)
class RunSummary:
    """The numbers of one run.

    Attributes:
        label: Name of the run (e.g. its file's stem).
        mode: ``speculative``, ``small`` or ``large`` (``mixed`` if records disagree).
        dataset: Dataset of the records.
        problems: Distinct problems.
        answers: Records (problem-samples).
        accuracy: pass@1 averaged over samples, in ``[0, 1]``.
        avg_length: Mean output tokens per answer.
        large_share: Large-model tokens / all output tokens.
        delegations_per_problem: Mean delegations per answer.
        delegations_by_kind: Mean delegations per answer, by kind.
        seconds_per_problem: Mean wall time per answer.
        total_seconds: Sum of the answers' wall times.
        finish_reasons: How answers ended (``eos``, ``length``, ...), counted.
        answered: Fraction of answers from which an answer could be extracted.
        policy: The delegation policy of the run (``mixed`` if records disagree).
        large_generated_per_problem: Mean tokens the large model generated per answer (its
            cost: kept or not, judged drafts excluded).
        budget_spent: Fraction of answers in which a budget (``max_large_tokens`` or
            ``max_reasoning_tokens``) ran out.
        passes_per_large_token: Large-model decode passes / tokens it generated (1.0 in plain
            decoding; lower when it verified the small model's proposals).
        acceptance_rate: Proposed tokens the large model accepted / proposed (``None``: nothing
            was proposed).
    """

    label: str
    mode: str
    dataset: str
    problems: int
    answers: int
    accuracy: float
    avg_length: float
    large_share: float
    delegations_per_problem: float
    delegations_by_kind: dict[str, float] = field(default_factory=dict)
    seconds_per_problem: float = 0.0
    total_seconds: float = 0.0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    answered: float = 0.0
    policy: str = "keyword"
    large_generated_per_problem: float = 0.0
    budget_spent: float = 0.0
    passes_per_large_token: float = 1.0
    acceptance_rate: float | None = None


def _one(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else ("mixed" if values else "")


def summarize(records: Sequence[Mapping[str, Any]], *, label: str = "run") -> RunSummary:
    """Summarize the records of one run (see the module docstring for the definitions)."""
    n = len(records)
    by_problem: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        by_problem[str(record["id"])].append(bool(record.get("correct")))
    accuracy = (
        sum(sum(v) / len(v) for v in by_problem.values()) / len(by_problem) if by_problem else 0.0
    )
    out_tokens = sum(int(r.get("output_tokens", 0)) for r in records)
    large_tokens = sum(int(r.get("large_tokens", 0)) for r in records)
    kinds: Counter[str] = Counter()
    for record in records:
        kinds.update({k: int(v) for k, v in (record.get("delegations_by_kind") or {}).items()})
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    return RunSummary(
        label=label,
        mode=_one({str(r.get("mode", "")) for r in records}),
        dataset=_one({str(r.get("dataset", "")) for r in records}),
        problems=len(by_problem),
        answers=n,
        accuracy=accuracy,
        avg_length=out_tokens / n if n else 0.0,
        large_share=large_tokens / out_tokens if out_tokens else 0.0,
        delegations_per_problem=sum(int(r.get("delegations", 0)) for r in records) / n
        if n
        else 0.0,
        delegations_by_kind={k: kinds.get(k, 0) / n if n else 0.0 for k in _KINDS},
        seconds_per_problem=seconds / n if n else 0.0,
        total_seconds=seconds,
        finish_reasons=dict(Counter(str(r.get("finish_reason", "")) for r in records)),
        answered=sum(r.get("extracted") is not None for r in records) / n if n else 0.0,
        policy=_one({str(r.get("policy", "keyword")) for r in records}),
        large_generated_per_problem=(
            sum(int(r.get("large_generated", 0)) for r in records) / n if n else 0.0
        ),
        budget_spent=sum(_budget_spent(r) for r in records) / n if n else 0.0,
        **_verification(records),
    )


def _verification(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Passes per large token and acceptance rate over records (records without counts: plain)."""
    generated = sum(int(r.get("large_generated", 0)) for r in records)
    passes = sum(int(r.get("large_passes", r.get("large_generated", 0))) for r in records)
    proposed = sum(int(r.get("proposed_tokens", 0)) for r in records)
    accepted = sum(int(r.get("accepted_tokens", 0)) for r in records)
    return {
        "passes_per_large_token": passes / generated if generated else 1.0,
        "acceptance_rate": accepted / proposed if proposed else None,
    }


def _budget_spent(record: Mapping[str, Any]) -> bool:
    budgets = record.get("budgets") or {}
    return bool(budgets.get("large_exhausted") or budgets.get("reasoning_exhausted"))


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short unique labels for run files: the stem, or ``parent/stem`` where stems repeat."""
    stems = [Path(p).stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    labels = [
        f"{Path(p).parent.name}/{Path(p).stem}" if s in repeated else s
        for p, s in zip(paths, stems, strict=True)
    ]
    return [
        label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)
    ]


def format_table(summaries: Sequence[RunSummary]) -> str:
    """The paper's Table 2 for these runs, delegations by kind, policy and cost, as Markdown."""
    lines = [
        "| run | mode | problems | answers | accuracy | avg length (tokens) | large share "
        "| delegations / problem | s / problem | total s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.label} | {s.mode} | {s.problems} | {s.answers} | {100 * s.accuracy:.1f}% "
            f"| {s.avg_length:.1f} | {100 * s.large_share:.1f}% | {s.delegations_per_problem:.2f} "
            f"| {s.seconds_per_problem:.1f} | {s.total_seconds:.0f} |"
        )
    lines += ["", "| run | " + " | ".join(_KINDS) + " |", "| --- |" + " ---: |" * len(_KINDS)]
    for s in summaries:
        cells = " | ".join(f"{s.delegations_by_kind.get(k, 0.0):.2f}" for k in _KINDS)
        lines.append(f"| {s.label} | {cells} |")
    lines += [
        "",
        "| run | policy | large tokens generated / problem | large passes / token "
        "| acceptance | budget spent |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        accept = "-" if s.acceptance_rate is None else f"{100 * s.acceptance_rate:.1f}%"
        lines.append(
            f"| {s.label} | {s.policy} | {s.large_generated_per_problem:.1f} "
            f"| {s.passes_per_large_token:.2f} | {accept} | {100 * s.budget_spent:.1f}% |"
        )
    return "\n".join(lines)


def write_plots(
    summaries: Sequence[RunSummary],
    records: Sequence[Sequence[Mapping[str, Any]]],
    directory: str | Path,
) -> list[Path]:
    """Write the three PNG plots of these runs (matplotlib, no display needed).

    * ``accuracy_vs_length.png``: accuracy against average output length, one point per run;
    * ``large_share.png``: distribution of the large model's share of each answer;
    * ``delegations_by_kind.png``: mean delegations per answer, by kind, per run.

    The last two show the speculative runs only (single-model runs are trivially 0 or 100% and
    never delegate), or every run when none is speculative.

    Args:
        summaries: One summary per run.
        records: The records of each run, in the same order.
        directory: Where to write (created if missing).

    Returns:
        The paths written.
    """
    from matplotlib.figure import Figure

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    colors = [f"C{i % 10}" for i in range(len(summaries))]
    written: list[Path] = []

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    # Points are named in the legend, not beside them: runs often share a point (same accuracy).
    for s, color in zip(summaries, colors, strict=True):
        ax.scatter([s.avg_length], [100 * s.accuracy], s=70, color=color, label=s.label, zorder=3)
    ax.set_xlabel("average output length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs. average output length")
    ax.grid(True, alpha=0.3)
    xlim, ylim = accuracy_axes(summaries)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    written.append(_save(fig, folder / "accuracy_vs_length.png"))

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    bins = [i / 20 for i in range(21)]
    # Single-model runs are 0% or 100% by definition: show the speculative runs, if any.
    shown = [i for i, s in enumerate(summaries) if s.mode not in ("small", "large")] or list(
        range(len(summaries))
    )
    for i in shown:
        s, rows, color = summaries[i], records[i], colors[i]
        shares = [100 * float(r.get("large_share", 0.0)) for r in rows]
        if shares:
            ax.hist(
                shares,
                bins=[100 * b for b in bins],
                histtype="step",
                linewidth=1.8,
                color=color,
                label=f"{s.label} (overall {100 * s.large_share:.1f}%)",
            )
    ax.set_xlabel("large-model share of an answer's tokens (%)")
    ax.set_ylabel("answers")
    ax.set_title("Distribution of the large model's share")
    ax.set_xlim(0, 100)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    written.append(_save(fig, folder / "large_share.png"))

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(shown))
    for j, i in enumerate(shown):
        s, color = summaries[i], colors[i]
        xs = [k + (j - (len(shown) - 1) / 2) * width for k in range(len(_KINDS))]
        ax.bar(
            xs,
            [s.delegations_by_kind.get(k, 0.0) for k in _KINDS],
            width,
            label=s.label,
            color=color,
        )
    ax.set_xticks(range(len(_KINDS)), list(_KINDS))
    ax.set_ylabel("delegations per answer")
    ax.set_title("Delegations by kind")
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    written.append(_save(fig, folder / "delegations_by_kind.png"))
    return written


def accuracy_axes(
    summaries: Sequence[RunSummary],
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges of the accuracy-vs-length plot: both from 0, with room above the points.

    Args:
        summaries: The runs plotted.

    Returns:
        ``((0, x_max), (0, y_max))`` with ``x_max`` 15% past the longest run and ``y_max`` 20%
        past the best accuracy (in %, at most 100, at least 10).
    """
    longest = max((s.avg_length for s in summaries), default=0.0)
    best = max((100 * s.accuracy for s in summaries), default=0.0)
    return (0.0, max(1.0, 1.15 * longest)), (0.0, min(100.0, max(10.0, 1.2 * best)))


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
