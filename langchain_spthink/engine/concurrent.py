"""Concurrent drafts: the large model's step of a boundary runs while the small model drafts.

:func:`start_large_step` submits the step to the engine's executor on a throw-away session opened
from a snapshot of the large model's ids; :func:`finish_large_step` waits for it and replays its
ids into the request's real session as a draft. A step whose draft turns out neutral is discarded
(:meth:`_PendingStep.discard`) without touching the real session.
"""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

from langchain_spthink.backends.base import close_stream
from langchain_spthink.engine.detok import IncrementalDetokenizer
from langchain_spthink.engine.state import RunBase
from langchain_spthink.engine.steps import Halt, _LargeFault, _PendingStep, _Step
from langchain_spthink.greenlet_bridge import wait_future

__all__ = ["count_discarded", "finish_large_step", "start_large_step"]


def start_large_step(run: RunBase, max_new: int) -> _PendingStep | Halt | None:
    """Start the large model's step of this boundary in the executor.

    The step runs on a throw-away session opened from a snapshot of the large model's ids
    (synced to the output now: the small draft does not change the output), so the real
    session is untouched until the step is kept.

    Returns:
        The pending step; ``None`` when steps do not run concurrently (the caller writes the
        large step itself); or the :data:`Halt` that keeps the large model from writing now.
    """
    engine = run.engine
    if not engine.concurrent_drafts or engine.executor is None or run.mode != "speculative":
        return None
    if run.verified:
        return None  # a verified step starts from the draft: it cannot run beside it
    if run.cfg.max_large_tokens is not None:
        return None  # a capped large model runs no step that may be discarded unseen
    track = run.tracks["large"]
    halt = run._budget_stop(track)
    if halt is not None:
        return halt
    run._sync(track)
    run._mark_draft(track)
    snapshot = list(track.session.ids)
    budget = run._room(track, max_new)
    stop, eos, clock = threading.Event(), track.backend.eos_ids, run.clock
    seed = run._step_seed(track)  # a fork is a step of its own: never the session's seed again
    sampling = track.sampling if seed is None else replace(track.sampling, seed=seed)

    def work() -> tuple[list[int], int, float]:
        started = clock()
        fork = track.backend.new_session(snapshot, sampling)
        ids: list[int] = []
        stream = fork.stream(budget)
        try:
            for token in stream:
                if stop.is_set():
                    break
                ids.append(token)
                if token in eos:
                    break
        finally:
            close_stream(stream)
            fork.close()
        return ids, fork.forwarded, clock() - started

    run.concurrent_steps += 1
    return _PendingStep(engine.executor.submit(work), stop, run.clock())


def finish_large_step(run: RunBase, pending: _PendingStep) -> _Step:
    """Wait for a started large step and replay it into the real session as a draft.

    Returns:
        The draft; or an empty step halted by ``timeout`` when the request's deadline passed.

    Raises:
        _LargeFault: The step failed, or ran over ``large_step_timeout``.
    """
    cfg, track = run.cfg, run.tracks["large"]
    limits = []
    if cfg.large_step_timeout:
        limits.append(pending.started + cfg.large_step_timeout)
    if run.deadline is not None:
        limits.append(run.deadline)
    wait = max(0.0, min(limits) - run.clock()) if limits else None
    try:
        # on the greenlet path the step is a task on this loop: wait there, never block it
        ids, forwarded, seconds = wait_future(pending.future, wait)
    except FutureTimeout:
        pending.discard()
        if run.deadline is not None and run.clock() > run.deadline:
            return _Step(stop="timeout", halt="timeout")
        cause = TimeoutError(f"large-model step exceeded {cfg.large_step_timeout} s")
        raise _LargeFault(cause) from None
    except Exception as exc:
        raise _LargeFault(exc) from exc
    session = track.session
    step = _Step(start=len(session.ids), seconds=seconds)
    detok = IncrementalDetokenizer(track.backend.decode, session.ids[-6:])
    track.forked_forwarded += forwarded
    track.usage.seconds += seconds
    for token in ids:
        session.extend([token])
        track.usage.generated_tokens += 1
        track.usage.decode_passes += 1
        if token in track.backend.eos_ids:
            step.eos = True
            break
        step.ids.append(token)
        step.text += detok.push(token)
        step.ends.append(len(step.text))
    tail = detok.flush()
    if tail:
        step.text += tail
        if step.ends:
            step.ends[-1] = len(step.text)
    return step


def count_discarded(run: RunBase) -> None:
    """Add the tokens of finished, discarded concurrent steps to the large model's usage.

    They were generated (and paid for) even though nobody saw them; steps still stopping
    when the request ends are not counted.
    """
    large = run.tracks.get("large")
    for pending in run.discarded:
        future = pending.future
        if large is None or not future.done() or future.exception() is not None:
            continue
        ids, forwarded, _ = future.result()
        large.usage.generated_tokens += len(ids)
        large.usage.decode_passes += len(ids)  # plain decoding: one pass per token
        large.forked_forwarded += forwarded
    run.discarded.clear()
