"""Cancelling an async stream mid-generation: generation stops, caches are freed, and the next
request on the same instance is correct and not burdened by the cancelled one.

"Not burdened" is checked without a clock (a timing ratio would depend on how loaded the machine
is): when the cancel returns, the cancelled request's sessions are closed, their KV caches
dropped and its worker thread gone, so nothing of it runs alongside the next request; and the
next request does exactly the work of the same request run uncancelled (the same positions
forwarded and tokens written by each model).

Also checked elsewhere: ``test_chat_model.py::test_sync_stream_close_stops_generation``,
``test_astream_aclose_stops_generation_and_frees_session``,
``test_astream_task_cancel_stops_generation`` (scripted models), and
``test_server.py::test_disconnect_*`` (a client hanging up on the server).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from tests.unit_tests._reliability_fakes import Recording, one_torch_thread

SHORT = 8  # tokens of the request timed after the cancel
LONG = 40 * SHORT  # tokens the cancelled request asks for


@pytest.fixture
def single_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def tiny_model(tiny_pair: Any) -> tuple[ChatSpeculativeThinking, Recording, Recording]:
    small, large = Recording(tiny_pair[0]), Recording(tiny_pair[1])
    model = ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        preset="instruct",
        temperature=0,
        max_tokens=SHORT,
        config={"begin_tokens": 3, "draft_tokens": 3, "triggers": [" ", "\n\n"]},
    )
    return model, small, large


def astream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spthink-astream" and t.is_alive()]


# Upper bound of the waits below. Generous on purpose: each thing waited for normally takes
# milliseconds to a second, so 60 s holds on a CPU loaded 10x; only a hang reaches it.
TIMEOUT = 60.0


def work(backend: Recording, first: int) -> list[tuple[int, int]]:
    """(tokens in the sequence, positions forwarded) of each session opened since ``first``."""
    return [(len(s.ids), s.forwarded) for s in backend.sessions[first:]]


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.usefixtures("single_thread")
async def test_cancelled_astream_frees_caches_and_next_request_is_correct_and_unburdened(
    tiny_pair: Any,
) -> None:
    question = "What is 6 times 7?"
    fresh, _, _ = tiny_model(tiny_pair)
    expected = str((await fresh.ainvoke(question)).content)  # a fresh greedy run

    model, small, large = tiny_model(tiny_pair)
    first = len(small.sessions), len(large.sessions)
    assert str((await model.ainvoke(question)).content) == expected
    uncancelled = work(small, first[0]), work(large, first[1])
    assert uncancelled[0] and uncancelled[1]

    chunks = 0
    three = asyncio.Event()

    async def long_request() -> None:
        nonlocal chunks
        async for _ in model.astream("Count to a thousand, slowly.", max_tokens=LONG):
            chunks += 1
            if chunks == 3:
                three.set()

    opened = len(small.sessions), len(large.sessions)
    task = asyncio.create_task(long_request())
    await asyncio.wait_for(three.wait(), timeout=TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # When the cancel returns, the cancelled request's sessions are closed and their KV caches
    # dropped; its worker thread ends right after handing that over.
    cancelled = [small.sessions[opened[0]], large.sessions[opened[1]]]
    assert all(s.closed and s.inner._cache is None for s in cancelled)
    await until(lambda: astream_threads() == [], "the worker thread did not end")
    written = [len(s.ids) for s in cancelled]
    assert sum(written) < 2 * LONG  # it stopped long before its budget

    following = len(small.sessions), len(large.sessions)
    answer = str((await model.ainvoke(question)).content)
    assert answer == expected
    # the same work as uncancelled: no stale cache reused, nothing left over to redo
    assert (work(small, following[0]), work(large, following[1])) == uncancelled
    assert [len(s.ids) for s in cancelled] == written  # nothing written meanwhile
    assert small.all_closed() and large.all_closed()
    await until(lambda: astream_threads() == [], "a worker thread did not end")


class SlowRemote(ScriptedBackend):
    """A slow scripted large model marked remote: the chat model overlaps its steps."""

    is_remote = True


async def test_cancel_while_a_large_step_runs_in_the_draft_pool() -> None:
    small_script = ["One two.\n\n", "Wait, three four.\n\n", "Five six."]
    large_script = ["One two.\n\n", "Check three four.\n\n", "Five six."]
    small = ScriptedBackend(small_script, name="s", on_token=lambda: time.sleep(0.05))
    large = SlowRemote(large_script, name="l", on_token=lambda: time.sleep(0.05))
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    expected = str(
        ChatSpeculativeThinking(
            small_model=ScriptedBackend(small_script),
            large_model=ScriptedBackend(large_script),
            temperature=0,
        )
        .invoke("hi")
        .content
    )

    async def consume() -> None:
        async for _ in model.astream("hi"):
            pass

    task = asyncio.create_task(consume())
    await until(lambda: len(large.sessions) >= 2, "no forked large step started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(
        lambda: all(s.closed for s in small.sessions + large.sessions),
        "a session of the cancelled request stayed open",
    )
    sampled = large.tokens_sampled
    await asyncio.sleep(0.3)  # a stopped step writes nothing more (waiting longer is stricter)
    assert large.tokens_sampled <= sampled + 1  # the abandoned step stopped
    assert str((await model.ainvoke("hi")).content) == expected
