"""The llama.cpp backend: session protocol, cache crops, equivalence with transformers, mixed pairs.

llama.cpp logits depend on how the prompt was batched (a token evaluated alone or inside a batch
differs by up to ~0.5), so logits are compared with a tolerance and greedy texts only where the
top-2 gap is clear (the prompts below were checked to have no near-tie in the compared span).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from langchain_spthink import (
    DelegationEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
)
from langchain_spthink.backends.transformers import TransformersBackend

llama_cpp = pytest.importorskip("llama_cpp")
from langchain_spthink.backends.llamacpp import LlamaCppBackend  # noqa: E402

pytestmark = pytest.mark.embedded
GREEDY = SamplingParams(temperature=0.0)
QUESTION = [{"role": "user", "content": "What is 12 times 7?"}]


@pytest.fixture(scope="module")
def llama_small() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend.load("smollm2-135m-instruct", n_ctx=2048)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def llama_large() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend.load("gemma3-270m", n_ctx=2048)
    yield backend
    backend.close()


def finish(events: list[Any]) -> FinishEvent:
    assert isinstance(events[-1], FinishEvent)
    return events[-1]


def test_same_vocabulary_as_transformers(
    llama_small: LlamaCppBackend, small_backend: TransformersBackend
) -> None:
    assert llama_small.tokenizer_fingerprint == small_backend.tokenizer_fingerprint
    assert llama_small.chat_prompt_ids(QUESTION) == small_backend.chat_prompt_ids(QUESTION)
    text = "Wait, 12 × 7 = 84.\n\nYes 日本 🙂"
    assert llama_small.encode(text) == small_backend.encode(text)
    assert llama_small.decode(llama_small.encode(text)) == text


def test_gemma_template_and_eos(
    llama_large: LlamaCppBackend, large_backend: TransformersBackend
) -> None:
    assert llama_large.chat_prompt_ids(QUESTION) == large_backend.chat_prompt_ids(QUESTION)
    assert 106 in llama_large.eos_ids  # <end_of_turn>


@pytest.mark.parametrize("which", ["small", "large"])
def test_small_mode_text_equals_transformers(
    which: str,
    llama_small: LlamaCppBackend,
    llama_large: LlamaCppBackend,
    small_backend: TransformersBackend,
    large_backend: TransformersBackend,
) -> None:
    llama, hf = (llama_small, small_backend) if which == "small" else (llama_large, large_backend)
    ids = hf.chat_prompt_ids(QUESTION)
    texts = []
    for backend in (llama, hf):
        events = list(
            SpeculativeEngine(backend, None).generate(Request(ids, ids, 16, GREEDY, mode="small"))
        )
        texts.append(finish(events).text)
    assert texts[0] == texts[1]


def test_crop_and_catch_up_logits_equal_a_token_by_token_evaluation(
    llama_small: LlamaCppBackend,
) -> None:
    # A cropped-and-extended session must hold exactly the KV state of evaluating the same ids
    # one by one after the prompt (llama.cpp logits depend on batch shapes, so the reference
    # uses the same shapes: prompt in one batch, then single tokens).
    prompt = llama_small.chat_prompt_ids(QUESTION)
    session = llama_small.new_session(prompt, GREEDY)
    try:
        gen = torch.Generator().manual_seed(0)
        for _ in range(8):
            list(session.stream(int(torch.randint(1, 6, (1,), generator=gen))))
            session.truncate(len(session.ids) - int(torch.randint(0, 4, (1,), generator=gen)))
            session.extend(llama_small.encode(" so"))
            cached = session.next_logits()
            ref = llama_small.new_session(prompt, GREEDY)
            try:
                ref.next_logits()
                for token in session.ids[len(prompt) :]:
                    ref.extend([token])
                    expected = ref.next_logits()
            finally:
                ref.close()
            torch.testing.assert_close(cached, expected, atol=1e-3, rtol=0.0)
        assert session.forwarded < len(prompt) + 8 * 10  # catch-up only, no re-prefill
    finally:
        session.close()


def test_prefix_of_an_earlier_request_is_reused(llama_small: LlamaCppBackend) -> None:
    prompt = llama_small.chat_prompt_ids(QUESTION)
    first = llama_small.new_session(prompt, GREEDY)
    list(first.stream(3))
    first.close()
    second = llama_small.new_session(prompt, GREEDY)
    try:
        list(second.stream(1))
        assert second.forwarded == 1  # only the last prompt id was re-evaluated
    finally:
        second.close()


def test_mixed_pair_llamacpp_small_transformers_large_hands_off_text(
    llama_small: LlamaCppBackend, large_backend: TransformersBackend
) -> None:
    config = SpeculativeThinkingConfig(
        begin=True, not_reasoning=True, begin_tokens=6, draft_tokens=6
    )
    engine = SpeculativeEngine(llama_small, large_backend, config)
    assert not engine.share_ids
    request = Request(
        llama_small.chat_prompt_ids(QUESTION), large_backend.chat_prompt_ids(QUESTION), 40, GREEDY
    )
    events = list(engine.generate(request))
    fin = finish(events)
    assert [e for e in events if isinstance(e, DelegationEvent)][0].kind == "begin"
    assert fin.small.kept_tokens > 0 and fin.large.kept_tokens > 0
    assert len(llama_small._idle) == llama_small._created  # contexts went back to the pool


def test_id_handoff_between_llamacpp_and_transformers(
    llama_small: LlamaCppBackend, small_backend: TransformersBackend
) -> None:
    # Same vocabulary on two runtimes: the engine hands off ids, and greedy speculative output
    # equals the single model's output (both "models" are SmolLM2).
    config = SpeculativeThinkingConfig(not_reasoning=True, draft_tokens=5)
    engine = SpeculativeEngine(llama_small, small_backend, config)
    assert engine.share_ids
    ids = small_backend.chat_prompt_ids(QUESTION)
    spec = finish(list(engine.generate(Request(ids, ids, 30, GREEDY)))).text
    solo = finish(
        list(
            SpeculativeEngine(small_backend, None).generate(
                Request(ids, ids, 30, GREEDY, mode="small")
            )
        )
    ).text
    assert spec == solo


def test_contexts_are_never_shared_between_live_sessions(llama_small: LlamaCppBackend) -> None:
    prompt = llama_small.encode("Hello")
    a = llama_small.new_session(prompt, GREEDY)
    b = llama_small.new_session(prompt, GREEDY)
    try:
        assert a._llama is not b._llama
    finally:
        a.close()
        b.close()


def test_chat_model_accepts_the_llamacpp_prefix(small_backend: TransformersBackend) -> None:
    from langchain_spthink import ChatSpeculativeThinking

    kwargs: dict[str, Any] = {"mode": "small", "temperature": 0.0, "max_tokens": 12}
    fast = ChatSpeculativeThinking(small_model="llamacpp:smollm2-135m-instruct", **kwargs)
    reference = ChatSpeculativeThinking(small_model=small_backend, **kwargs)
    answer = fast.invoke("What is 12 times 7?")
    assert answer.content and answer.content == reference.invoke("What is 12 times 7?").content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] == 12
