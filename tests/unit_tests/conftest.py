"""Unit tests use no model files: scripted backends, ``tiny_tokenizer`` and ``tiny_pair`` only.

An autouse guard (:mod:`tests.unit_tests._no_model_files`) makes any use of the embedded models
(SmolLM2 and gemma GGUFs, their packages, their converted cache) fail the test loudly. Tests that
need the real models belong in ``tests/integration_tests``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit_tests._no_model_files import EmbeddedGuard, no_embedded_models


@pytest.fixture(scope="session")
def empty_gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty GGUF conversion cache for the whole unit test session."""
    return tmp_path_factory.mktemp("empty-gguf-cache")


@pytest.fixture(autouse=True)
def embedded_guard(empty_gguf_cache: Path) -> Iterator[EmbeddedGuard]:
    """Autouse: any use of the embedded model files fails the test."""
    with no_embedded_models(empty_gguf_cache) as guard:
        yield guard


@pytest.fixture(scope="session")
def smol_tokenizer() -> None:
    """Not for unit tests: the real SmolLM2 tokenizer is an integration-test fixture."""
    pytest.fail(
        "smol_tokenizer (the real SmolLM2 tokenizer, from the embedded GGUF) is for "
        "tests/integration_tests only; unit tests use tiny_tokenizer"
    )
