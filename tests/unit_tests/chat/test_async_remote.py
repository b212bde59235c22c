"""The async path of all-remote requests: the engine on the event loop, async HTTP, no threads.

Against the fake OpenAI-compatible server of ``tests/unit_tests/backends/test_remote.py``. That
server answers each connection in a thread of its own (``ThreadingHTTPServer``): those threads are
the server's, not the client's, and are left out of the thread counts (by name).

Wall time: the server waits ``DELAY`` s before answering each completion request, so a client that
blocked the loop on a read would stop a 10 ms ticker for at least that long; the bounds below are
far above the measured gaps and below ``DELAY``. The loop does run the requests' CPU work
(chat templates, tokenization, the engine's bookkeeping): 8 requests starting together stop the
ticker for 0.2-0.6 s measured on 2 loaded cores, never for a network wait.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from langchain_core.messages import AIMessage

from langchain_spthink import ChatSpeculativeThinking, LargeModelError, SamplingParams
from langchain_spthink.backends.loading import cached_backend
from langchain_spthink.backends.remote import RemoteBackend, RemoteSession
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.greenlet_bridge import in_bridge
from tests.unit_tests.backends.test_remote import NO_TIMEOUT, Action, FakeServer

DELAY = 2.0  # seconds the server waits before each answer
BATCH = 8
BEGIN = {"begin": True, "begin_tokens": 3}


class RecordingRemote(RemoteBackend):
    """A remote backend that keeps its sessions (to check that cancellation closed them)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sessions: list[RemoteSession] = []
        self.opened_in: list[tuple[str, bool]] = []  # (thread name, inside a greenlet bridge)

    def new_session(self, prompt_ids: Any, sampling: SamplingParams) -> RemoteSession:
        session = super().new_session(prompt_ids, sampling)
        self.sessions.append(session)
        self.opened_in.append((threading.current_thread().name, in_bridge()))
        return session


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def remote(server: FakeServer, tok: Any, served: str) -> RecordingRemote:
    return RecordingRemote(
        server.url, served, tokenizer=tok, name=served, timeout=NO_TIMEOUT, max_retries=0
    )


def answering(delay: float = DELAY) -> Any:
    """An action answering "The answer is N." for the question "Question N" in the prompt."""

    def act(body: dict[str, Any]) -> Action:
        time.sleep(delay)
        found = re.findall(r"Question (\d+)", body["prompt"])
        return ("stream", [" The answer", f" is {found[-1]}."], "stop", None)

    return act


def client_threads() -> int:
    """Live threads, less the fake server's per-connection handlers."""
    return sum("process_request" not in t.name for t in threading.enumerate())


async def sample_while(coro: Any) -> tuple[Any, int, float]:
    """Run ``coro`` while sampling the thread count and the gaps of a 10 ms ticker."""
    peak, gap, done = 0, 0.0, False

    async def ticker() -> None:
        nonlocal peak, gap
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            peak = max(peak, client_threads())

    tick = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        done = True
        await tick
    return result, peak, gap


def model(server: FakeServer, tok: Any, **kw: Any) -> ChatSpeculativeThinking:
    return ChatSpeculativeThinking(
        small_model=remote(server, tok, "small"),
        large_model=remote(server, tok, "large"),
        # begin: the large model writes the opening, the small one goes on: both are used
        **{"temperature": 0, "max_tokens": 40, "config": BEGIN, **kw},
    )


async def test_abatch_all_remote_runs_on_the_loop(server: FakeServer, tiny_tokenizer: Any) -> None:
    server.default = answering()
    chat = model(server, tiny_tokenizer)
    prompts = [f"Question {i}" for i in range(BATCH)]
    # warm-up, as many requests: the loop's default executor (a bounded pool, used by
    # generate_strict) has its threads already; the thread path's workers end with each request.
    await chat.abatch(prompts)
    base = client_threads()
    replies, peak, gap = await sample_while(chat.abatch(prompts))
    for i, reply in enumerate(replies):
        assert isinstance(reply, AIMessage)
        assert f"answer is {i}." in reply.text and set(re.findall(r"\d+", reply.text)) == {str(i)}
        assert reply.response_metadata["spthink"]["stop_reason"] == "eos"
    # 8 ThreadedRuns would add 8 worker threads; the greenlet path adds none (the default
    # executor's threads for generate_strict already exist after the warm-up). Measured: +0.
    assert peak <= base + 2, (base, peak)
    # Each HTTP request waits DELAY s on the server: a loop blocked on a read would not tick for
    # that long (8 such reads one after the other: 8 * DELAY). Measured max gap: 0.2-0.6 s.
    assert gap < DELAY, gap
    assert not [t for t in threading.enumerate() if t.name == "spthink-astream"]


async def test_url_specs_load_off_the_loop_then_run_on_it(
    server: FakeServer, tiny_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridged: list[bool] = []
    opened = RemoteBackend.new_session

    def new_session(self: RemoteBackend, ids: Any, sampling: SamplingParams) -> RemoteSession:
        bridged.append(in_bridge())
        return opened(self, ids, sampling)

    monkeypatch.setattr(RemoteBackend, "new_session", new_session)
    server.default = answering(0.0)
    url = f"openai+http://127.0.0.1:{server.port}/v1?tokenizer={quote(str(tiny_tokenizer_dir))}"
    small, large = f"{url}&model=small&name=s-{server.port}", f"{url}&model=large"
    chat = ChatSpeculativeThinking(
        small_model=small, large_model=large, temperature=0, max_tokens=40, config=BEGIN
    )
    assert cached_backend(small) is None  # first call: loaded in the default executor
    reply = await chat.ainvoke("Question 5")
    assert "answer is 5." in reply.text
    assert isinstance(cached_backend(small), RemoteBackend)
    assert len(bridged) >= 2 and all(bridged)  # both models' sessions, on the greenlet path


async def test_concurrent_drafts_are_loop_tasks(server: FakeServer, tiny_tokenizer: Any) -> None:
    # not_reasoning without choose_large: at every boundary the large model's step starts while
    # the small model drafts (concurrent drafts); on this path each step is a task on the loop.
    def act(body: dict[str, Any]) -> Action:
        time.sleep(0.05)
        if body["model"] == "large":
            return ("stream", [" Step", " one.\n\n"], "length", None)
        return ("stream", [" Draft", " two.\n\n", " Done", " now."], "stop", None)

    server.default = act
    config = {"not_reasoning": True, "choose_large": False, "draft_tokens": 4}
    chat = model(server, tiny_tokenizer, config=config, max_tokens=24)
    base = client_threads()
    replies, peak, _ = await sample_while(chat.abatch(["Question 1", "Question 2"]))
    for reply in replies:
        meta = reply.response_metadata["spthink"]
        assert meta["extra"]["concurrent_steps"] >= 1 and not meta["fallbacks"], meta
        assert reply.text.strip()
    large = chat.large_model
    assert isinstance(large, RecordingRemote)
    loop_thread = threading.current_thread().name
    # the request sessions and the forks of concurrent steps: all opened on the loop thread,
    # inside a greenlet (the thread path would open the forks in spthink-draft threads)
    assert len(large.opened_in) > 2 and set(large.opened_in) == {(loop_thread, True)}
    assert peak <= base + 2, (base, peak)


async def test_concurrent_step_timeout_falls_back(server: FakeServer, tiny_tokenizer: Any) -> None:
    # The large server hangs: the concurrent step, a task on the loop, is waited for on the loop
    # (wait_future) until large_step_timeout, then cancelled; the request falls back to the small
    # model, as on the thread path.
    def act(body: dict[str, Any]) -> Action:
        if body["model"] == "large":
            return ("hang",)
        return ("stream", [" Draft", " two.\n\n", " Done", " now."], "stop", None)

    server.default = act
    config = {"not_reasoning": True, "choose_large": False, "draft_tokens": 4}
    chat = model(server, tiny_tokenizer, config={**config, "large_step_timeout": 1.0})
    started = time.monotonic()
    reply = await chat.ainvoke("Question 1")
    meta = reply.response_metadata["spthink"]
    assert len(meta["fallbacks"]) == 1 and "Done now." in reply.text, meta
    assert meta["fallbacks"][0]["reason"] == "large-model step exceeded 1.0 s"
    assert meta["extra"]["concurrent_steps"] == 1
    # 1 s timeout; the hang lasts 60 s: 30 s is room for a loaded CPU.
    assert time.monotonic() - started < 30


async def test_cancelling_astream_closes_the_response_and_sessions(
    server: FakeServer, tiny_tokenizer: Any
) -> None:
    server.default = ("slow", [f" w{i}" for i in range(300)])  # 20 ms per chunk: 6 s at least
    chat = model(server, tiny_tokenizer, mode="large", max_tokens=500)
    got: list[str] = []

    async def consume() -> None:
        async for chunk in chat.astream("Question 1"):
            got.append(chunk.text)

    task = asyncio.create_task(consume())
    while len("".join(got).split()) < 3:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server notices at its next write after the close (every 20 ms); 30 s is room for a
    # loaded CPU. A connection kept open would stream all 300 chunks and never set the event.
    assert await asyncio.to_thread(server.disconnected.wait, 30), "the response stayed open"
    large = chat.large_model
    assert isinstance(large, RecordingRemote) and large.sessions
    assert all(s._closed for s in large.sessions)


async def test_server_error_same_fallback_as_sync(server: FakeServer, tiny_tokenizer: Any) -> None:
    def act(body: dict[str, Any]) -> Action:
        if body["model"] == "large":
            return ("status", 500)
        return answering(0.0)(body)

    server.default = act
    chat = model(server, tiny_tokenizer)
    sync = chat.invoke("Question 3")
    reply = await chat.ainvoke("Question 3")
    assert reply.text == sync.text and "answer is 3." in reply.text
    meta, sync_meta = reply.response_metadata["spthink"], sync.response_metadata["spthink"]
    assert meta["mode"] == sync_meta["mode"]
    assert meta["stop_reason"] == sync_meta["stop_reason"]
    assert len(meta["fallbacks"]) == len(sync_meta["fallbacks"]) == 1


async def test_server_error_large_mode_same_typed_error(
    server: FakeServer, tiny_tokenizer: Any
) -> None:
    server.default = ("status", 502)
    chat = model(server, tiny_tokenizer, mode="large")
    with pytest.raises(LargeModelError, match="HTTP 502") as sync_error:
        chat.invoke("Question 3")
    with pytest.raises(LargeModelError, match="HTTP 502") as async_error:
        await chat.ainvoke("Question 3")
    assert str(async_error.value) == str(sync_error.value)


async def test_mixed_local_and_remote_uses_the_thread_path(
    server: FakeServer, tiny_tokenizer: Any
) -> None:
    server.default = ("slow", [f" w{i}" for i in range(30)])
    small = ScriptedBackend(["Draft words here. " * 20], name="s")
    chat = ChatSpeculativeThinking(
        small_model=small,
        large_model=remote(server, tiny_tokenizer, "large"),
        temperature=0,
        max_tokens=30,
    )
    reply = await chat.ainvoke("Question 1")
    assert reply.text.strip()
    large = chat.large_model
    assert isinstance(large, RecordingRemote) and large.opened_in
    # the scripted small model is local: the request runs in a worker thread, not on the loop
    # (or in the draft pool's threads, for concurrent drafts)
    loop_thread = threading.current_thread().name
    assert all(name != loop_thread and not bridged for name, bridged in large.opened_in)
    assert large.opened_in[0][0] == "spthink-astream", large.opened_in
