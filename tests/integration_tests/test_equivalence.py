"""Equivalence on real weights: the engine against ``generate()``, full re-prefill and the naive
reference algorithm. Greedy decoding throughout; tiny random models share the SmolLM2 tokenizer."""

from __future__ import annotations

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
from langchain_spthink.backends.transformers import TransformersBackend, TransformersSession
from tests.reference import reference_run

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["Question: what is 2+2?\nAnswer:", "Once upon a time", "def f(x):\n    return"]


def finish(events: list[Any]) -> FinishEvent:
    last = events[-1]
    assert isinstance(last, FinishEvent)
    return last


def hf_greedy(backend: TransformersBackend, prompt: list[int], n: int) -> str:
    ids = torch.tensor([prompt])
    out = backend.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=sorted(backend.eos_ids),
        pad_token_id=sorted(backend.eos_ids)[0],
    )
    return backend.decode(out[0, len(prompt) :].tolist())


@pytest.mark.parametrize("prompt", PROMPTS)
def test_small_mode_equals_generate_on_tiny_model(tiny_pair_smol: Any, prompt: str) -> None:
    small, _ = tiny_pair_smol
    ids = small.encode(prompt)
    events = list(
        SpeculativeEngine(small, None).generate(Request(ids, ids, 48, GREEDY, mode="small"))
    )
    assert finish(events).text == hf_greedy(small, ids, 48)
    assert finish(events).small.forwarded_tokens == len(ids) + 48 - 1


@pytest.mark.embedded
@pytest.mark.parametrize("which", ["small", "large"])
def test_solo_modes_equal_generate_on_embedded_models(
    small_backend: TransformersBackend, large_backend: TransformersBackend, which: str
) -> None:
    backend = small_backend if which == "small" else large_backend
    ids = backend.chat_prompt_ids([{"role": "user", "content": "What is 12 times 7?"}])
    engine = SpeculativeEngine(small_backend, large_backend)
    events = list(engine.generate(Request(ids, ids, 24, GREEDY, mode=which)))  # type: ignore[arg-type]
    assert finish(events).text == hf_greedy(backend, ids, 24)


def _random_walk(session: TransformersSession, model: Any, steps: int, seed: int) -> None:
    """Generate, crop back, append foreign ids; after each step compare with a full prefill."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    for _ in range(steps):
        list(session.stream(int(torch.randint(1, 6, (1,), generator=gen))))
        back = int(torch.randint(0, 5, (1,), generator=gen))
        session.truncate(max(1, len(session.ids) - back))
        session.extend(
            torch.randint(
                0, vocab, (int(torch.randint(0, 4, (1,), generator=gen)),), generator=gen
            ).tolist()
        )
        cached = session.next_logits()
        with torch.inference_mode():
            full = model(input_ids=torch.tensor([list(session.ids)])).logits[0, -1]
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_cache_catch_up_equals_full_prefill_llama(tiny_pair_smol: Any) -> None:
    small, _ = tiny_pair_smol
    session = small.new_session(small.encode("Hello there, friend."), GREEDY)
    _random_walk(session, small.model, 25, seed=0)
    assert session.forwarded < 25 * 12  # catch-up only, never a re-prefill of the prefix


def test_cache_crop_across_sliding_window_equals_full_prefill(tiny_gemma: Any) -> None:
    from transformers import PreTrainedTokenizerFast  # noqa: F401  (tokenizer not needed)

    backend = TransformersBackend(
        tiny_gemma, _NullTokenizer(), name="tiny-gemma", eos_ids=frozenset()
    )
    session = backend.new_session(list(range(1, 12)), GREEDY)  # longer than the window (8)
    _random_walk(session, tiny_gemma, 20, seed=1)
    assert len(session.ids) > 3 * 8


class _NullTokenizer:
    chat_template = None
    eos_token_id = None

    def decode(self, ids: list[int], **_: Any) -> str:
        return " ".join(map(str, ids))


CONFIGS = [
    {
        "triggers": ("an",),
        "negative_words": ("e",),
        "positive_words": ("o",),
        "verify_words": ("ing",),
    },
    {
        "triggers": ("s ",),
        "negative_words": ("er",),
        "positive_words": ("on",),
        "verify_words": ("at",),
        "choose_large": False,
        "not_reasoning": True,
    },
    {
        "triggers": ("a",),
        "negative_words": ("th", "er"),
        "positive_words": ("in", "on"),
        "verify_words": ("ic",),
        "choose_large": False,
    },
    {
        "triggers": ("a",),
        "negative_words": ("th",),
        "positive_words": ("in",),
        "verify_words": ("ic",),
        "begin": True,
        "begin_tokens": 5,
        "think_word": " so",
    },
]


@pytest.mark.parametrize("overrides", CONFIGS)
def test_speculative_equals_naive_reference_on_tiny_models(
    tiny_pair_smol: Any, overrides: dict[str, Any]
) -> None:
    small, large = tiny_pair_smol
    config = SpeculativeThinkingConfig(
        **{
            "draft_tokens": 4,
            "verify_tokens": 3,
            "recap_after_negatives": 2,
            "recap_tokens": 3,
            "recap_tokens_step": 1,
            "recap_tokens_max": 4,
            **overrides,
        }
    )
    prompt = small.encode(PROMPTS[0])
    events = list(
        SpeculativeEngine(small, large, config).generate(Request(prompt, prompt, 100, GREEDY))
    )
    assert SpeculativeEngine(small, large).share_ids

    def argmax(backend: TransformersBackend):  # type: ignore[no-untyped-def]
        def fn(ids: list[int]) -> int:
            with torch.inference_mode():
                return int(backend.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())

        return fn

    ref = reference_run(
        argmax(small),
        argmax(large),
        prompt,
        prompt,
        encode=small.encode,
        decode=small.decode,
        eos=small.eos_ids,
        cfg=config,
        max_tokens=100,
    )
    decisions = [(e.kind, e.kept, e.large_text) for e in events if isinstance(e, DelegationEvent)]
    assert len(decisions) >= 3
    assert decisions == ref.decisions
    assert finish(events).text == ref.text
    assert finish(events).stop_reason == ref.reason
