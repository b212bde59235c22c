"""Synchronous code on the event loop: a greenlet that suspends on awaitables (no thread).

The engine is a synchronous generator (one control loop). For requests whose every model is
remote, its work is network waits, so the async path runs it on the event loop thread inside a
greenlet, as SQLAlchemy's asyncio extension does: :func:`greenlet_spawn` runs a synchronous
function in a new greenlet from a coroutine, and inside it :func:`await_only` hands an awaitable
to that coroutine, which awaits it on the loop and switches back with its result (or throws its
exception, ``CancelledError`` included, into the synchronous code).

Invariants: a switch to the loop happens only inside :func:`await_only`, so synchronous code
between two awaits runs atomically with respect to other tasks (a ``threading.Lock`` taken and
released without an :func:`await_only` in between cannot deadlock); :func:`in_bridge` is true
exactly where :func:`await_only` may be called.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any, TypeVar, cast

from greenlet import getcurrent
from greenlet import greenlet as Greenlet

__all__ = ["LoopExecutor", "await_only", "greenlet_spawn", "in_bridge", "wait_future"]

_T = TypeVar("_T")


class _BridgeGreenlet(Greenlet):  # type: ignore[misc]
    """A greenlet run by :func:`greenlet_spawn`; ``driver`` is the greenlet awaiting for it."""

    def __init__(self, fn: Callable[..., Any], driver: Greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver


def in_bridge() -> bool:
    """Whether the caller runs inside :func:`greenlet_spawn` (so may call :func:`await_only`)."""
    return isinstance(getcurrent(), _BridgeGreenlet)


def await_only(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` on the event loop from synchronous code run by :func:`greenlet_spawn`.

    Raises:
        RuntimeError: Not called inside :func:`greenlet_spawn`.
        BaseException: Whatever awaiting raised (``asyncio.CancelledError`` when the task running
            the greenlet was cancelled).
    """
    current = getcurrent()
    if not isinstance(current, _BridgeGreenlet):
        if hasattr(awaitable, "close"):
            awaitable.close()  # never awaited: no "coroutine was never awaited" warning
        raise RuntimeError("await_only() called outside greenlet_spawn()")
    return cast(_T, current.driver.switch(awaitable))


async def greenlet_spawn(fn: Callable[..., _T], *args: Any) -> _T:
    """Run ``fn(*args)`` in a greenlet, awaiting on the loop what it passes to :func:`await_only`.

    The greenlet runs in a copy of the caller's context (its context variables).

    Returns:
        What ``fn`` returned.

    Raises:
        BaseException: What ``fn`` raised.
    """
    child = _BridgeGreenlet(fn, getcurrent())
    child.gr_context = contextvars.copy_context()
    result: Any = child.switch(*args)
    while not child.dead:
        try:
            value = await result  # the awaitable the child handed over in await_only
        except BaseException:  # noqa: BLE001 - thrown into the child, which may handle it
            result = child.throw(*sys.exc_info())
        else:
            result = child.switch(value)
    return cast(_T, result)


class LoopExecutor(Executor):
    """Runs each submitted function in a greenlet of its own, as a task on the running loop.

    For work that only waits on remote models (the engine's concurrent drafts on the greenlet
    path): no thread. ``submit`` must be called on the loop thread; wait for the futures with
    :func:`wait_future` (``Future.result`` there would block the loop that runs them). Cancelling
    a future cancels its task (``CancelledError`` is thrown into the function where it awaits);
    a task cancelled otherwise fails its future with ``concurrent.futures.CancelledError``.
    """

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Start ``fn(*args, **kwargs)`` in a greenlet task; its future resolves on the loop."""
        future: Future[_T] = Future()
        task = asyncio.get_running_loop().create_task(greenlet_spawn(partial(fn, *args, **kwargs)))

        def settle(done: asyncio.Task[_T]) -> None:
            if future.cancelled():
                return
            if done.cancelled():
                future.set_exception(FutureCancelled())
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())

        task.add_done_callback(settle)
        future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        return future


def wait_future(future: Future[_T], timeout: float | None) -> _T:
    """``future.result(timeout)``; inside :func:`greenlet_spawn` it waits on the loop instead.

    Raises:
        concurrent.futures.TimeoutError: Not done within ``timeout`` seconds (inside a bridge the
            future is then cancelled, as ``asyncio.wait_for`` does).
        BaseException: What the future's work raised.
    """
    if not in_bridge():
        return future.result(timeout=timeout)
    try:
        return await_only(asyncio.wait_for(asyncio.wrap_future(future), timeout))
    except asyncio.TimeoutError:
        raise FutureTimeout() from None
