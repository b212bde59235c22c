"""One ``ChatSpeculativeThinking`` instance shared by 8 threads and by 8 asyncio tasks.

Greedy outputs must equal the same requests run one after the other, each request must get its
own sessions (and close them), and the instance must hold no per-request state: its fields are
the same objects with the same values before, *during* (checked from a callback while the
requests run) and after the concurrent requests.

The models are the tiny random-weight pair of ``tests/conftest.py`` (real transformers backends,
fast) with a trigger at every space, so every request delegates several times; and scripted
models with per-request ``max_tokens`` / ``stop`` to catch settings crossing between requests.
The embedded real pair is run once in ``tests/integration_tests/test_reliability_concurrency.py``.

Why exact equality is the guarantee here (not a lucky agreement): a request computes the same
forwards whether it runs alone or among others (its own cache, batch size 1, the same ids and
shapes: the prompt, then one token per step, then the same catch-ups), and every forward runs
with the backend's thread count in whichever thread calls it, so the same kernels reduce in the
same order and the logits are bit-identical (measured on an AMD EPYC AVX2 machine: a session's
logits equal ``generate()``'s at every step under ``torch.equal``, tiny and embedded models, 1 and
2 threads). Different thread counts are *not* compared with each other (1 vs 2 threads moves
logits by ~3e-5): each count is run on its own, sequential against concurrent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from tests.numerics import THREADS, torch_threads
from tests.unit_tests._reliability_fakes import Recording

N = 8
QUESTIONS = [f"Question {i}: what is {i} plus {3 * i + 1}?" for i in range(N)]


def instance_state(model: ChatSpeculativeThinking) -> dict[str, Any]:
    """The instance's fields and private attributes: (identity, repr) of each value."""
    state = {**model.__dict__, **(model.__pydantic_private__ or {})}
    return {k: (id(v), repr(v)) for k, v in state.items()}


class StateProbe(BaseCallbackHandler):
    """Compares the instance's state with ``expected`` at every token, while requests run."""

    def __init__(self, model: ChatSpeculativeThinking) -> None:
        self.model = model
        self.expected = instance_state(model)
        self.checks = 0
        self.changed: list[str] = []
        self._lock = threading.Lock()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        now = instance_state(self.model)
        with self._lock:
            self.checks += 1
            self.changed += [
                k for k in set(now) | set(self.expected) if now.get(k) != self.expected.get(k)
            ]


def tiny_model(tiny_pair: tuple[Any, Any]) -> tuple[ChatSpeculativeThinking, Recording, Recording]:
    small, large = Recording(tiny_pair[0]), Recording(tiny_pair[1])
    model = ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        preset="instruct",
        temperature=0,
        max_tokens=16,
        config={"begin_tokens": 4, "draft_tokens": 4, "triggers": [" ", "\n\n"]},
    )
    # One request first: LangChain caches the model's serialization on the instance on first
    # use (``_serialized``); a lazily computed constant, not per-request state.
    model.invoke("warm up")
    return model, small, large


def check_sessions(backend: Recording, start: int) -> None:
    """One session per request, each for one of the questions, all closed."""
    sessions = backend.sessions[start:]
    assert len(sessions) == N and len({id(s) for s in sessions}) == N
    assert all(s.closed for s in sessions)
    for question in QUESTIONS:
        prompt = backend.chat_prompt_ids([{"role": "user", "content": question}])
        assert sum(list(s.ids[: len(prompt)]) == prompt for s in sessions) == 1


@pytest.fixture(scope="module", params=THREADS, ids=lambda n: f"{n}-thread")
def n_threads(request: pytest.FixtureRequest, tiny_pair: tuple[Any, Any]) -> Iterator[int]:
    """Every forward of the tiny pair with this many torch threads, sequential and concurrent."""
    with torch_threads(request.param, *tiny_pair):
        yield request.param


@pytest.fixture(scope="module")
def sequential(tiny_pair: tuple[Any, Any], n_threads: int) -> list[tuple[str, int]]:
    """Each question run alone on a fresh instance: (text, delegations)."""
    model, _, _ = tiny_model(tiny_pair)
    results = []
    for q in QUESTIONS:
        reply = model.invoke(q)
        results.append((str(reply.content), len(reply.response_metadata["spthink"]["delegations"])))
    assert len({text for text, _ in results}) == N  # different prompts, different answers
    assert all(n >= 2 for _, n in results)  # both models write in every request
    return results


def test_eight_threads_equal_sequential(tiny_pair: Any, sequential: list[Any]) -> None:
    model, small, large = tiny_model(tiny_pair)
    start = len(small.sessions), len(large.sessions)
    probe = StateProbe(model)
    barrier = threading.Barrier(N)

    def ask(i: int) -> tuple[str, int]:
        barrier.wait()  # all 8 start together
        if i % 2:  # half stream, half invoke
            chunks = list(model.stream(QUESTIONS[i], config={"callbacks": [probe]}))
            text = "".join(str(c.content) for c in chunks)
            meta = chunks[-1].response_metadata
        else:
            reply = model.invoke(QUESTIONS[i], config={"callbacks": [probe]})
            text, meta = str(reply.content), reply.response_metadata
        return text, len(meta["spthink"]["delegations"])

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(ask, range(N)))
    assert results == sequential
    assert probe.checks > N and probe.changed == []
    assert instance_state(model) == probe.expected
    check_sessions(small, start[0])
    check_sessions(large, start[1])


async def test_eight_async_tasks_equal_sequential(tiny_pair: Any, sequential: list[Any]) -> None:
    model, small, large = tiny_model(tiny_pair)
    start = len(small.sessions), len(large.sessions)
    probe = StateProbe(model)

    async def ask(i: int) -> tuple[str, int]:
        if i % 2:
            chunks = [c async for c in model.astream(QUESTIONS[i], config={"callbacks": [probe]})]
            text = "".join(str(c.content) for c in chunks)
            meta = chunks[-1].response_metadata
        else:
            reply = await model.ainvoke(QUESTIONS[i], config={"callbacks": [probe]})
            text, meta = str(reply.content), reply.response_metadata
        return text, len(meta["spthink"]["delegations"])

    results = await asyncio.gather(*(ask(i) for i in range(N)))
    assert list(results) == sequential
    assert probe.checks > N and probe.changed == []
    assert instance_state(model) == probe.expected
    check_sessions(small, start[0])
    check_sessions(large, start[1])


def test_batch_of_eight_equals_sequential(tiny_pair: Any, sequential: list[Any]) -> None:
    """``batch`` runs the inputs in a thread pool: same answers, in order."""
    model, _, _ = tiny_model(tiny_pair)
    replies = model.batch(QUESTIONS, config={"max_concurrency": N})
    assert [str(r.content) for r in replies] == [text for text, _ in sequential]


# ----------------------------------------------------- per-request settings do not cross
SMALL = ["Alpha beta gamma.\n\n", "Wait, delta epsilon.\n\n", "Zeta eta theta iota kappa."]
LARGE = ["Alpha beta gamma.\n\n", "Check: delta epsilon.\n\n", "Zeta eta theta iota kappa."]
SETTINGS: list[dict[str, Any]] = [
    {"max_tokens": 3},
    {"max_tokens": 9},
    {"stop": ["delta"]},
    {"stop": ["eta", "\n\n"]},
    {"mode": "small"},
    {"mode": "large", "max_tokens": 5},
    {},
    {"stop": ["kappa"], "max_tokens": 40},
]


def test_per_request_settings_do_not_cross_between_threads() -> None:
    small, large = ScriptedBackend(SMALL, name="s"), ScriptedBackend(LARGE, name="l")
    model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    expected = [str(model.invoke("hi", **kw).content) for kw in SETTINGS]
    assert len(set(expected)) == len(SETTINGS)  # every setting changes the answer
    before = instance_state(model)
    jobs = [i % len(SETTINGS) for i in range(20 * N)]
    with ThreadPoolExecutor(N) as pool:
        got = list(pool.map(lambda i: str(model.invoke("hi", **SETTINGS[i]).content), jobs))
    assert got == [expected[i] for i in jobs]
    assert instance_state(model) == before
    assert all(s.closed for s in small.sessions + large.sessions)
