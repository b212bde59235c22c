"""The remote backend against a real OpenAI-compatible server: llama-cpp-python's, on loopback.

The server serves the embedded SmolLM2 GGUF; the local side uses the same model through
transformers, so the two share a tokenizer and hand off ids. llama.cpp's text can differ from
transformers' at greedy near-ties (logits depend on batching), so texts are not compared across
runtimes; decisions, completeness and fault handling are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp.server.app  # noqa: F401  (``make setup`` installs it: a broken install fails)
import pytest

from langchain_spthink import (
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.remote import load_tokenizer
from langchain_spthink.backends.transformers import TransformersBackend
from tests.integration_tests.peers import ALIAS, LlamaServer, free_port, remote, run

pytestmark = pytest.mark.embedded

GREEDY = SamplingParams(temperature=0.0)
QUESTION = [{"role": "user", "content": "What is 12 times 7? Explain step by step."}]


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    srv = LlamaServer()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def smol_tok() -> Any:
    """Only the tokenizer of the served model (loaded once for the module)."""
    return load_tokenizer(ALIAS)[0]


def test_large_only_mode_via_remote(server: LlamaServer, smol_tok: Any) -> None:
    large = remote(server.url, smol_tok)
    ids = large.chat_prompt_ids(QUESTION)
    events, fin = run(SpeculativeEngine(None, large), Request(ids, ids, 24, GREEDY, mode="large"))
    assert fin.text.strip() and fin.stop_reason in ("eos", "length")
    assert 0 < fin.large.kept_tokens <= 24 and fin.mode == "large"
    assert not [e for e in events if isinstance(e, FallbackEvent)]


def test_speculative_with_remote_large(
    server: LlamaServer, small_backend: TransformersBackend, smol_tok: Any
) -> None:
    large = remote(server.url, smol_tok)
    assert large.tokenizer_fingerprint == small_backend.tokenizer_fingerprint
    config = SpeculativeThinkingConfig(
        begin=True, not_reasoning=True, begin_tokens=8, draft_tokens=8
    )
    engine = SpeculativeEngine(small_backend, large, config)
    assert engine.share_ids  # same vocabulary: ids are handed off (the server still gets text)
    ids = small_backend.chat_prompt_ids(QUESTION)
    events, fin = run(engine, Request(ids, ids, 40, GREEDY))
    delegations = [e for e in events if isinstance(e, DelegationEvent)]
    assert delegations and delegations[0].kind == "begin"
    assert not [e for e in events if isinstance(e, FallbackEvent)]
    assert fin.stop_reason in ("eos", "length") and fin.mode == "speculative"
    assert fin.large.kept_tokens > 0 and fin.text.strip()
    assert fin.output_tokens <= 40


def test_server_killed_mid_request_falls_back(
    small_backend: TransformersBackend, smol_tok: Any
) -> None:
    own = LlamaServer()  # not the shared one: this test kills it
    try:
        large = remote(own.url, smol_tok, timeout=10.0)
        config = SpeculativeThinkingConfig(
            begin=True, not_reasoning=True, begin_tokens=32, draft_tokens=8
        )
        engine = SpeculativeEngine(small_backend, large, config)
        ids = small_backend.chat_prompt_ids(QUESTION)
        events: list[Any] = []
        for event in engine.generate(Request(ids, ids, 40, GREEDY)):
            events.append(event)
            if isinstance(event, TextEvent) and event.author == "large":
                own.kill()  # while the large model's opening is streaming
    finally:
        own.stop()
    fin = events[-1]
    assert isinstance(fin, FinishEvent)
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1 and fallbacks[0].new_mode == "small"
    assert fin.mode == "small" and fin.stop_reason in ("eos", "length")
    assert fin.small.kept_tokens > 0 and fin.text.strip()


def test_nothing_listening_falls_back(small_backend: TransformersBackend, smol_tok: Any) -> None:
    large = remote(f"http://127.0.0.1:{free_port()}/v1", smol_tok, timeout=5.0)
    config = SpeculativeThinkingConfig(begin=True, not_reasoning=True, begin_tokens=8)
    ids = small_backend.chat_prompt_ids(QUESTION)
    events, fin = run(
        SpeculativeEngine(small_backend, large, config), Request(ids, ids, 12, GREEDY)
    )
    assert len([e for e in events if isinstance(e, FallbackEvent)]) == 1
    assert fin.mode == "small" and fin.small.kept_tokens == 12


def test_chat_model_with_a_url_spec(
    server: LlamaServer, small_backend: TransformersBackend
) -> None:
    from langchain_spthink import ChatSpeculativeThinking

    spec = f"openai+http://127.0.0.1:{server.port}/v1?model=smol&tokenizer={ALIAS}&timeout=30"
    chat = ChatSpeculativeThinking(
        small_model=small_backend, large_model=spec, mode="large", temperature=0.0, max_tokens=12
    )
    answer = chat.invoke("What is 12 times 7?")
    assert isinstance(answer.content, str) and answer.content.strip()
