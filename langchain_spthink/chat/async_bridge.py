"""The async path's bridges: the synchronous engine generator read from the event loop.

Local generation (and loading weights) is synchronous and CPU/GPU bound: ``_astream`` runs the
same generator as ``_stream`` in a :class:`ThreadedRun` (a worker thread per request) so the
event loop never blocks on it. A request whose every model is remote only waits on the network:
it runs in a :class:`GreenletRun`, on the loop thread, where the remote sessions stream with the
async HTTP client and suspend on each read (:mod:`langchain_spthink.greenlet_bridge`), so
concurrent requests cost no thread each.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar, cast

from langchain_spthink.greenlet_bridge import greenlet_spawn

__all__ = ["GreenletRun", "ThreadedRun"]

_T = TypeVar("_T")


class ThreadedRun(Generic[_T]):
    """Runs a synchronous generator in a worker thread, handing its items to the event loop.

    The loop never blocks on generation (or on loading weights). :meth:`aclose` asks the worker
    to stop after the item in progress and waits until it has closed the generator, which
    closes the engine's sessions and frees their caches.

    Args:
        factory: Creates the generator (called in the worker thread).
    """

    def __init__(self, factory: Callable[[], Generator[_T, None, None]]) -> None:
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._finished = asyncio.Event()
        self._stop = threading.Event()
        self._drained = False
        self._thread = threading.Thread(target=self._work, name="spthink-astream", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _work(self) -> None:
        items: Generator[_T, None, None] | None = None
        try:
            items = self._factory()
            for item in items:
                if self._stop.is_set():
                    break
                self._post(self._queue.put_nowait, ("item", item))
        except BaseException as exc:  # noqa: BLE001 - handed over to the event loop
            self._post(self._queue.put_nowait, ("error", exc))
        finally:
            if items is not None:
                items.close()  # closes the engine's generator and its sessions
            self._post(self._queue.put_nowait, ("done", None))
            self._post(self._finished.set)

    def __aiter__(self) -> ThreadedRun[_T]:
        return self

    async def __anext__(self) -> _T:
        """The generator's next item; its exception, if it raised one, is raised here."""
        if self._drained:
            raise StopAsyncIteration
        kind, value = await self._queue.get()
        if kind == "error":
            raise value
        if kind == "done":
            self._drained = True
            raise StopAsyncIteration
        return cast(_T, value)

    async def aclose(self) -> None:
        """Stop the worker after its current item and wait until it closed the generator."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            await self._finished.wait()


class GreenletRun(Generic[_T]):
    """Runs a synchronous generator on the event loop thread, one greenlet per item.

    Same interface as :class:`ThreadedRun`. Each :meth:`__anext__` advances the generator inside
    :func:`~langchain_spthink.greenlet_bridge.greenlet_spawn`, so code under it may suspend on
    awaitables (:func:`~langchain_spthink.greenlet_bridge.await_only`: the remote sessions' HTTP
    reads) while other tasks run. Only for generators that never block the thread otherwise
    (every model remote). Cancelling the awaiting task throws ``CancelledError`` into the
    generator where it waits, which unwinds it: sessions and HTTP responses are closed by their
    ``finally`` blocks. :meth:`aclose` waits for an item in progress, then closes the generator.

    Args:
        factory: Creates the generator (called inside the first item's greenlet).
    """

    def __init__(self, factory: Callable[[], Generator[_T, None, None]]) -> None:
        self._factory = factory
        self._items: Generator[_T, None, None] | None = None
        self._done = False
        self._idle = asyncio.Event()  # set while no item is in progress
        self._idle.set()

    def start(self) -> None:
        """Nothing to start: the generator is created by the first item."""

    def _step(self) -> tuple[bool, _T | None]:
        if self._items is None:
            self._items = self._factory()
        for item in self._items:
            return True, item
        return False, None

    def __aiter__(self) -> GreenletRun[_T]:
        return self

    async def __anext__(self) -> _T:
        """The generator's next item; its exception, if it raised one, is raised here."""
        if self._done:
            raise StopAsyncIteration
        self._idle.clear()
        try:
            found, item = await greenlet_spawn(self._step)
        except BaseException:
            self._done = True
            raise
        finally:
            self._idle.set()
        if not found:
            self._done = True
            raise StopAsyncIteration
        return cast(_T, item)

    async def aclose(self) -> None:
        """Stop after the item in progress and close the generator (its sessions, responses)."""
        self._done = True
        await self._idle.wait()
        items, self._items = self._items, None
        if items is not None:
            await greenlet_spawn(items.close)
