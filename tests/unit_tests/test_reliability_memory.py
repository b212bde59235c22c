"""Memory: 200 sequential requests on one instance leak neither RSS nor KV caches.

The tiny random-weight pair of ``tests/conftest.py`` (real transformers backends and
``DynamicCache`` s) answers 200 requests through ``invoke``, ``stream`` and ``astream``. After a
warm-up, the process's RSS may grow by less than 5 %, and no session or KV cache may outlive its
request: every session is closed, and once garbage-collected none is still referenced from
anywhere (the instance, LangChain's callbacks, a global), which weak references show.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import psutil
import pytest
import torch

from langchain_spthink.backends.transformers import TransformersBackend, TransformersSession
from langchain_spthink.chat.model import ChatSpeculativeThinking
from tests.unit_tests._reliability_fakes import one_torch_thread

WARM_UP = 20
REQUESTS = 200


class Tracked:
    """Wraps a backend, keeping only weak references to the sessions and caches it opens."""

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner = inner
        self.sessions: list[weakref.ref[TransformersSession]] = []
        self.caches: list[weakref.ref[Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def new_session(self, prompt_ids: Any, sampling: Any) -> TransformersSession:
        session = self.inner.new_session(prompt_ids, sampling)
        self.sessions.append(weakref.ref(session))
        self.caches.append(weakref.ref(session._cache))
        return session

    def alive(self) -> tuple[int, int]:
        return (
            sum(r() is not None for r in self.sessions),
            sum(r() is not None for r in self.caches),
        )


def ask(model: ChatSpeculativeThinking, i: int) -> str:
    question = f"Request {i}: what is {i} times {i % 7 + 2}?"
    if i % 4 == 1:
        return "".join(str(c.content) for c in model.stream(question))
    if i % 4 == 3:

        async def consume() -> str:
            return "".join([str(c.content) async for c in model.astream(question)])

        return asyncio.run(consume())
    return str(model.invoke(question).content)


@pytest.mark.slow
def test_two_hundred_requests_keep_rss_and_release_every_cache(tiny_pair: Any) -> None:
    small, large = Tracked(tiny_pair[0]), Tracked(tiny_pair[1])
    model = ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        preset="instruct",
        temperature=0,
        max_tokens=8,
        config={"begin_tokens": 3, "draft_tokens": 3, "triggers": [" ", "\n\n"]},
    )
    process = psutil.Process()
    with one_torch_thread():
        first = [ask(model, i) for i in range(WARM_UP)]
        gc.collect()
        rss_before = process.memory_info().rss
        answers = [ask(model, i) for i in range(REQUESTS)]
        gc.collect()
        rss_after = process.memory_info().rss
    growth = (rss_after - rss_before) / rss_before
    print(f"RSS {rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB ({growth:+.2%})")
    # Generous (measured here: +0.2 %); no clock is involved, so a busy CPU changes nothing.
    # The weak references below are the exact leak check.
    assert growth < 0.05

    assert answers[:WARM_UP] == first  # the 200 requests still answer as the first ones did
    assert len(small.sessions) == len(large.sessions) == WARM_UP + REQUESTS
    # every session and every DynamicCache is gone: nothing kept a request's KV cache
    assert small.alive() == (0, 0) and large.alive() == (0, 0)
    assert torch.is_grad_enabled()  # inference_mode never leaked out of a request
