"""Embedded real models, loaded once per test session and shared by every integration test."""

from __future__ import annotations

import pytest

from langchain_spthink.backends.transformers import TransformersBackend


@pytest.fixture(scope="session")
def small_backend() -> TransformersBackend:
    """SmolLM2-135M-Instruct (embedded, offline)."""
    return TransformersBackend.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def large_backend() -> TransformersBackend:
    """gemma-3-270m (embedded, offline)."""
    return TransformersBackend.load("gemma3-270m")
