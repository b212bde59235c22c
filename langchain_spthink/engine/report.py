"""The finish event of a run: its text, each model's usage, the counters and the budgets."""

from __future__ import annotations

from langchain_spthink.engine.concurrent import count_discarded
from langchain_spthink.engine.events import FinishEvent, ModelUsage, StopReason
from langchain_spthink.engine.state import RunBase

__all__ = ["budgets", "finish_event"]


def budgets(run: RunBase) -> dict[str, int | bool]:
    """Limits, spending and exhaustion of the configured budgets (for the finish event)."""
    cfg, report = run.cfg, dict[str, int | bool]()
    if cfg.max_large_tokens is not None:
        large = run.tracks.get("large")
        report["max_large_tokens"] = cfg.max_large_tokens
        report["large_tokens"] = large.usage.generated_tokens if large else 0
        report["large_exhausted"] = run.large_exhausted
    if cfg.max_reasoning_tokens is not None:
        report["max_reasoning_tokens"] = cfg.max_reasoning_tokens
        spent = run.kept_tokens if run.reasoning_tokens is None else run.reasoning_tokens
        report["reasoning_tokens"] = spent
        report["reasoning_exhausted"] = run.reasoning_exhausted
    return report


def finish_event(run: RunBase, reason: StopReason) -> FinishEvent:
    """The last event of a run that ended with ``reason`` (its output fully drained)."""
    count_discarded(run)
    for track in run.tracks.values():
        track.usage.forwarded_tokens = track.session.forwarded + track.forked_forwarded
    concurrent = (
        {
            "concurrent_seconds_saved": run.saved,
            "concurrent_steps": float(run.concurrent_steps),
            "concurrent_steps_discarded": float(run.discarded_steps),
        }
        if run.engine.concurrent_drafts
        else {}
    )
    return FinishEvent(
        stop_reason=reason,
        text=run.out.text,
        small=run.tracks["small"].usage if "small" in run.tracks else ModelUsage(),
        large=run.tracks["large"].usage if "large" in run.tracks else ModelUsage(),
        delegations=run.delegations,
        seconds=run.clock() - run.started,
        mode=run.mode,
        extra={
            "boundaries": float(run.boundaries),
            "boundary_seconds": run.boundary_seconds,
            **concurrent,
            **({"proposal_seconds": run.proposer.seconds} if run.proposer is not None else {}),
        },
        budgets=budgets(run),
        large_decoding="verified" if run.verified else "plain",
        large_decoding_reason=run.verified_reason,
    )
