"""Equivalence on real weights: the engine against ``generate()``, full re-prefill and the naive
reference algorithm. Greedy decoding throughout; tiny random models share the SmolLM2 tokenizer.

Numerics (DESIGN.md, "Float reality"), measured on this machine (AMD EPYC, AVX2, 2 cores):

* The engine and ``generate()`` both forward the prompt, then one token per step, through a KV
  cache: the same kernels on the same shapes, so their logits are bit-identical (measured with
  ``torch.equal`` at every step, tiny and embedded models, 1 and 2 threads) and exact text
  equality is what is guaranteed.
* A catch-up forward and a full re-prefill compute the same logits on other shapes: float32
  rounding, compared with a tolerance relative to the logits' scale.
* The naive reference re-prefills everything for every token. In float32 its logits differ from
  the engine's by up to 3.8e-4 (tiny models, 170 tokens), while the reference meets top-2 margins
  down to 0.002: too close to call a greedy decision portable. That comparison runs the tiny
  models in float64 (difference ~1e-14) and checks every margin the reference met.
* Every comparison runs at 1 and at 2 torch threads (each count on its own: 1 vs 2 threads moves
  float32 logits by ~3e-5).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
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
from tests.numerics import THREADS, torch_threads, until_stop
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
    new = [int(t) for t in out[0, len(prompt) :].tolist() if int(t) not in backend.eos_ids]
    # The engine ends a turn at the model's stop texts too (gemma: a new "Question:").
    return until_stop(backend.decode, new, backend.stop_texts)[0]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_small_mode_equals_generate_on_tiny_model(
    tiny_pair_smol: Any, prompt: str, n_threads: int
) -> None:
    small, _ = tiny_pair_smol
    ids = small.encode(prompt)
    with torch_threads(n_threads, small):  # same shapes and threads: bit-identical logits
        events = list(
            SpeculativeEngine(small, None).generate(Request(ids, ids, 48, GREEDY, mode="small"))
        )
        assert finish(events).text == hf_greedy(small, ids, 48)
    assert finish(events).small.forwarded_tokens == len(ids) + 48 - 1


@pytest.mark.embedded
@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("which", ["small", "large"])
def test_solo_modes_equal_generate_on_embedded_models(
    small_backend: TransformersBackend,
    large_backend: TransformersBackend,
    which: str,
    n_threads: int,
) -> None:
    backend = small_backend if which == "small" else large_backend
    ids = backend.chat_prompt_ids([{"role": "user", "content": "What is 12 times 7?"}])
    engine = SpeculativeEngine(small_backend, large_backend)
    with torch_threads(n_threads, backend):  # same shapes and threads: bit-identical logits
        events = list(engine.generate(Request(ids, ids, 24, GREEDY, mode=which)))  # type: ignore[arg-type]
        assert finish(events).text == hf_greedy(backend, ids, 24)


# Catch-up vs full prefill, float32: measured max |difference| / max |logit| 4.6e-6 on the tiny
# Llama walk (7.6e-5 at logits up to 16.5; 1.7e-5 on a 170-token walk of the larger tiny model)
# and 8.5e-7 on the tiny Gemma (4.9e-7 at 0.58), at 1 and 2 threads. 1e-4 of the scale leaves
# a factor of >5 over the worst of these; a cache that keeps cropped entries is off by 1.3-1.6
# of the scale (measured with a truncate that does not crop).
CATCH_UP_RTOL = 1e-4


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
        scale = float(full.abs().max())
        torch.testing.assert_close(cached, full, atol=CATCH_UP_RTOL * scale, rtol=0.0)


@pytest.mark.parametrize("n_threads", THREADS)
def test_cache_catch_up_equals_full_prefill_llama(tiny_pair_smol: Any, n_threads: int) -> None:
    small, _ = tiny_pair_smol
    with torch_threads(n_threads, small):
        session = small.new_session(small.encode("Hello there, friend."), GREEDY)
        _random_walk(session, small.model, 25, seed=0)
    assert session.forwarded < 25 * 12  # catch-up only, never a re-prefill of the prefix


@pytest.mark.parametrize("n_threads", THREADS)
def test_cache_crop_across_sliding_window_equals_full_prefill(
    tiny_gemma: Any, n_threads: int
) -> None:
    backend = TransformersBackend(
        tiny_gemma, _NullTokenizer(), name="tiny-gemma", eos_ids=frozenset()
    )
    with torch_threads(n_threads, backend):
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


# The engine (cached, catch-up shapes) and the naive reference (a full prefill per token) agree on
# every greedy decision only if no decision is closer than their rounding difference: measured
# in float64 at most 1.4e-14 (tiny models, 170 tokens of catch-ups vs full prefills, 1 and 2
# threads), against reference margins of 0.002 and up. 1e-8 is the least margin accepted (~1e6x
# the difference); below it the prompt or config would need changing, not the tolerance.
MIN_MARGIN = 1e-8


@pytest.fixture(scope="module")
def tiny_pair_f64(tiny_pair_smol: Any) -> tuple[TransformersBackend, TransformersBackend]:
    """The tiny pair in float64 (copies: the session fixture stays float32)."""
    small, large = (
        TransformersBackend(
            copy.deepcopy(b.model).double(), b.tokenizer, name=b.name, eos_ids=b.eos_ids
        )
        for b in tiny_pair_smol
    )
    return small, large


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("overrides", CONFIGS)
def test_speculative_equals_naive_reference_on_tiny_models(
    tiny_pair_f64: tuple[TransformersBackend, TransformersBackend],
    overrides: dict[str, Any],
    n_threads: int,
) -> None:
    small, large = tiny_pair_f64
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
    assert SpeculativeEngine(small, large).share_ids
    margins: list[float] = []

    def argmax(backend: TransformersBackend) -> Callable[[list[int]], int]:
        def fn(ids: list[int]) -> int:
            with torch.inference_mode():
                logits = backend.model(input_ids=torch.tensor([ids])).logits[0, -1]
            top = torch.topk(logits, 2).values
            margins.append(float(top[0] - top[1]))
            return int(logits.argmax())

        return fn

    with torch_threads(n_threads, small, large):
        events = list(
            SpeculativeEngine(small, large, config).generate(Request(prompt, prompt, 100, GREEDY))
        )
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
    assert min(margins) > MIN_MARGIN, "a near-tie in the reference: pick another prompt"
    decisions = [(e.kind, e.kept, e.large_text) for e in events if isinstance(e, DelegationEvent)]
    assert len(decisions) >= 3
    assert decisions == ref.decisions
    assert finish(events).text == ref.text
    assert finish(events).stop_reason == ref.reason
