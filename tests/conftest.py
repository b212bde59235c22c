"""Fixtures shared by the whole suite: a tiny local tokenizer and tiny random-weight models.

Nothing here reads a model file: the tokenizer is trained offline from text in this repository
(:mod:`tests.tiny_models`). Fixtures over the embedded real models (``smol_tokenizer``,
``small_backend``, ...) live in ``tests/integration_tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings

from tests import tiny_models

# CI (CI=true) draws the same hypothesis examples on every run and machine, so a landing never
# depends on the luck of a random draw; local runs keep exploring new examples (and a failure
# found there is kept as an @example, e.g. in test_reliability_fuzz.py).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (~1k tokens, ChatML, EOS ``<|im_end|>``), built offline."""
    return tiny_models.build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer saved as a local model directory (a spec for ``load_tokenizer``)."""
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pair(tiny_tokenizer: Any) -> tuple[Any, Any]:
    """Two tiny random Llama models sharing the tiny tokenizer (small, large)."""
    return tiny_models.tiny_pair(tiny_tokenizer)


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
