"""The embedded real pair shared by 8 threads and by 8 asyncio tasks: greedy outputs equal the
same requests run one after the other (see ``tests/unit_tests/test_reliability_concurrency.py``
for the fast version on tiny models, with the per-request session checks).

Exact equality is the guarantee: a request computes the same forwards, on the same shapes, alone
or among others, with the backends' thread count in whichever thread runs them, so its logits
are bit-identical (the unit test module says why). Run at 1 and at 2 torch threads, each on its
own: at 2, the embedded models' matrix products really are split between threads (the tiny
models' mostly are not), and the split must not depend on what else is running.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from tests.unit_tests._reliability_fakes import Recording
from tests.unit_tests.test_reliability_concurrency import (
    THREADS,
    StateProbe,
    instance_state,
    torch_threads,
)

pytestmark = pytest.mark.embedded

N = 8
QUESTIONS = [f"What is {i} + {2 * i + 3}?" for i in range(N)]


@pytest.mark.parametrize("n_threads", THREADS)
def test_embedded_pair_from_threads_and_tasks(
    small_backend: TransformersBackend, large_backend: TransformersBackend, n_threads: int
) -> None:
    with torch_threads(n_threads, small_backend, large_backend):
        check_threads_and_tasks(Recording(small_backend), Recording(large_backend))


def check_threads_and_tasks(small: Recording, large: Recording) -> None:
    model = ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        preset="instruct",
        temperature=0,
        max_tokens=6,
        config={"begin_tokens": 3, "draft_tokens": 3, "triggers": [" ", "\n\n"]},
    )

    def answer(reply: Any) -> tuple[str, int]:
        return str(reply.content), len(reply.response_metadata["spthink"]["delegations"])

    sequential = [answer(model.invoke(q)) for q in QUESTIONS]
    assert len({text for text, _ in sequential}) > 1 and all(n >= 1 for _, n in sequential)
    probe = StateProbe(model)
    opened = len(small.sessions)

    barrier = threading.Barrier(N)

    def ask(q: str) -> tuple[str, int]:
        barrier.wait()
        return answer(model.invoke(q, config={"callbacks": [probe]}))

    with ThreadPoolExecutor(N) as pool:
        assert list(pool.map(ask, QUESTIONS)) == sequential

    async def tasks() -> list[tuple[str, int]]:
        replies = await asyncio.gather(
            *(model.ainvoke(q, config={"callbacks": [probe]}) for q in QUESTIONS)
        )
        return [answer(r) for r in replies]

    assert asyncio.run(tasks()) == sequential
    assert probe.checks > N and probe.changed == []
    assert instance_state(model) == probe.expected
    assert len(small.sessions) - opened == 2 * N  # one session per request and model
    assert small.all_closed() and large.all_closed()
    assert all(s.inner._cache is None for s in small.sessions + large.sessions)
