"""Embedded real models, loaded once per test session and shared by every integration test."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_spthink.backends.transformers import TransformersBackend
from tests import tiny_models


@pytest.fixture(scope="session")
def small_backend() -> TransformersBackend:
    """SmolLM2-135M-Instruct (embedded, offline)."""
    return TransformersBackend.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def large_backend() -> TransformersBackend:
    """gemma-3-270m (embedded, offline)."""
    return TransformersBackend.load("gemma3-270m")


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """The real SmolLM2 tokenizer, from the embedded GGUF (offline)."""
    from langchain_spthink.models import load_model

    return load_model("smollm2-135m-instruct").tokenizer


@pytest.fixture(scope="session")
def tiny_pair_smol(smol_tokenizer: Any) -> tuple[Any, Any]:
    """Two tiny random Llama models sharing the real SmolLM2 tokenizer (small, large)."""
    return tiny_models.tiny_pair(smol_tokenizer)
