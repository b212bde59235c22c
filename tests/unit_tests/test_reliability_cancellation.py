"""Cancelling an async stream mid-generation: generation stops, caches are freed, and the next
request on the same instance is correct and not slowed down by the cancelled one.

The time bound is derived in the test from measured uncancelled requests, not a constant: the
next request (cancellation included) must finish within 3x the median time of the same request
run uncancelled, while the cancelled request, had it run on, would have needed about 40x that.

Also checked elsewhere: ``test_chat_model.py::test_sync_stream_close_stops_generation``,
``test_astream_aclose_stops_generation_and_frees_session``,
``test_astream_task_cancel_stops_generation`` (scripted models), and
``test_server.py::test_disconnect_*`` (a client hanging up on the server).
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from langchain_spthink.chat_models import ChatSpeculativeThinking
from langchain_spthink.testing import ScriptedBackend
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


@pytest.mark.usefixtures("single_thread")
async def test_cancelled_astream_frees_caches_and_next_request_is_correct_and_fast(
    tiny_pair: Any,
) -> None:
    question = "What is 6 times 7?"
    fresh, _, _ = tiny_model(tiny_pair)
    expected = str((await fresh.ainvoke(question)).content)  # a fresh greedy run

    model, small, large = tiny_model(tiny_pair)
    timings = []
    for _ in range(3):  # uncancelled: the reference time
        started = time.perf_counter()
        assert str((await model.ainvoke(question)).content) == expected
        timings.append(time.perf_counter() - started)
    reference = statistics.median(timings)

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
    await asyncio.wait_for(three.wait(), timeout=60)
    cancelled_at = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = str((await model.ainvoke(question)).content)
    elapsed = time.perf_counter() - cancelled_at

    print(f"next request after the cancel: {elapsed:.3f} s; uncancelled median {reference:.3f} s")
    assert answer == expected
    assert elapsed < 3 * reference, (elapsed, reference)
    # the cancelled request's sessions were closed and its KV caches dropped
    cancelled = [small.sessions[opened[0]], large.sessions[opened[1]]]
    assert all(s.closed and s.inner._cache is None for s in cancelled)
    written = [len(s.ids) for s in cancelled]
    await asyncio.sleep(10 * reference / SHORT)  # ~10 tokens' time: nothing more is written
    assert [len(s.ids) for s in cancelled] == written
    assert sum(written) < 2 * LONG  # it stopped long before its budget
    assert small.all_closed() and large.all_closed()
    assert astream_threads() == []  # the worker thread has ended


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
    deadline = time.monotonic() + 10
    while len(large.sessions) < 2 and time.monotonic() < deadline:  # a forked step started
        await asyncio.sleep(0.01)
    assert len(large.sessions) >= 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while not all(s.closed for s in small.sessions + large.sessions):
        assert time.monotonic() < deadline, "a session of the cancelled request stayed open"
        await asyncio.sleep(0.01)
    sampled = large.tokens_sampled
    await asyncio.sleep(0.3)
    assert large.tokens_sampled <= sampled + 1  # the abandoned step stopped
    assert str((await model.ainvoke("hi")).content) == expected
