"""Fixtures shared by the whole suite: tokenizers and tiny random-weight models, built once."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """The SmolLM2 tokenizer, from the embedded GGUF (offline)."""
    from langchain_spthink.models import load_model

    return load_model("smollm2-135m-instruct").tokenizer


def _tiny_llama(vocab: int, seed: int, hidden: int, layers: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_pair(smol_tokenizer: Any) -> tuple[Any, Any]:
    """Two tiny random Llama models sharing the SmolLM2 tokenizer (small, large)."""
    from langchain_spthink.backends.transformers import TransformersBackend

    vocab = len(smol_tokenizer)
    eos = frozenset({int(smol_tokenizer.eos_token_id)})
    small = TransformersBackend(
        _tiny_llama(vocab, 0, 64, 2), smol_tokenizer, name="tiny-small", eos_ids=eos
    )
    large = TransformersBackend(
        _tiny_llama(vocab, 1, 96, 3), smol_tokenizer, name="tiny-large", eos_ids=eos
    )
    return small, large


@pytest.fixture(scope="session")
def tiny_gemma() -> Any:
    """A tiny random Gemma 3 model with a sliding window of 8 (local/global layers)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(3)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        max_position_embeddings=512,
        layer_types=[
            "sliding_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
        ],
    )
    return Gemma3ForCausalLM(config).eval()
