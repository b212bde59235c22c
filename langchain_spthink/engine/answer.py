"""The answer phase: after the reasoning, one model writes the answer (under a constraint if any).

The reasoning ends at the request's answer marker (e.g. ``"</think>"``; seen by
:meth:`~langchain_spthink.engine.state.RunBase._append`, and a step that writes it is cut after it
when a constraint follows), or when the thinking budget ``max_reasoning_tokens`` is spent: then
:func:`close_reasoning` inserts the closing text. :func:`write_answer` lets one model write the
rest: the small model, or the large one in large mode, with the request's grammar constraint.
The loop (:mod:`langchain_spthink.engine.loop`) calls both; they write through the run's
primitives.
"""

from __future__ import annotations

from collections.abc import Generator

from langchain_spthink.engine.events import BudgetEvent, Event
from langchain_spthink.engine.state import RunBase
from langchain_spthink.engine.steps import Halt

__all__ = ["close_reasoning", "reasoning_close_text", "write_answer"]


def reasoning_close_text(close: str | None, marker: str | None) -> str:
    r"""The text that closes the reasoning when the thinking budget is spent.

    Args:
        close: The config's ``reasoning_close`` (used as is when set).
        marker: The request's answer marker.

    Returns:
        ``close``; else the marker on its own line; else ``"\n\nFinal answer: "``.
    """
    if close is not None:
        return close
    return f"\n{marker}\n\n" if marker else "\n\nFinal answer: "


def close_reasoning(run: RunBase) -> Generator[Event, None, Halt | None]:
    """The thinking budget is spent: close the reasoning; the answer follows.

    Returns:
        ``None``, or how the request ended when the closing text completes a stop string.
    """
    limit = run.cfg.max_reasoning_tokens
    assert limit is not None  # only this budget halts with "reasoning_budget"
    run.reasoning_exhausted = True
    run._end_reasoning()
    run.answer_switch = True
    yield BudgetEvent(
        budget="max_reasoning_tokens",
        limit=limit,
        spent=run.kept_tokens,
        position=len(run.out.text),
    )
    close = reasoning_close_text(run.cfg.reasoning_close, run.request.answer_marker)
    return (yield from run._insert(close))


def write_answer(run: RunBase) -> Generator[Event, None, Halt]:
    """One model writes the rest (the answer), under the request's constraint if any.

    Returns:
        How the request ended (EOS, a complete constraint, a stop string, a budget, the
        deadline).
    """
    run.answering = True
    if run.in_reasoning:
        run._end_reasoning()  # the whole output is the answer
    track = run.tracks["large"] if run.mode == "large" else run.tracks["small"]
    factory = run.request.constraint
    constraint = factory(track.backend) if factory is not None else None
    limit = getattr(constraint, "limit", None)
    if callable(limit):  # optional: lets the constraint finish within the tokens left
        limit(run._room(track, run.request.max_tokens))
    while True:  # a step ends without a halt only when the model's stream ran dry
        step = yield from run._write(
            track,
            run.request.max_tokens,
            live=True,
            constraint=constraint,
        )
        if step.halt is not None:
            return step.halt
