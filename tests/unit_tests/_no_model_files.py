"""The guard that keeps unit tests off the embedded model files (used by ``conftest.py``).

The embedded models (:data:`langchain_spthink.models.EMBEDDED_MODELS`) are reached through two
choke points of :class:`~langchain_spthink.models.EmbeddedModel`: ``gguf_path()`` (locates the GGUF
in its package: SmolLM2's loads, every tokenizer-only load, llama.cpp loads) and ``_module()``
(imports the assembling package: gemma's loads and its conversion-cache lookup). Both are wrapped
for the embedded packages only (``EmbeddedModel`` instances over other packages still work), and
an import hook refuses the packages themselves (``import``, ``importlib.util.find_spec``).

An attempt calls :func:`pytest.fail` (a ``BaseException``: no ``except Exception`` in the code
under test swallows it) and is recorded, so the test also fails when the guard is left, even if
something caught the failure. The GGUF cache is pointed at an empty folder, so no converted model
is found either, and the in-memory model and backend caches are cleared.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from langchain_spthink import models
from langchain_spthink.backends import loading

EMBEDDED_PACKAGES = frozenset(m.package for m in models.EMBEDDED_MODELS.values())
MESSAGE = "unit test used the embedded model files"


@dataclass
class EmbeddedGuard:
    """What the guard refused so far."""

    attempts: list[str] = field(default_factory=list)

    def refuse(self, what: str) -> None:
        self.attempts.append(what)
        pytest.fail(
            f"{MESSAGE} ({what}): unit tests use tiny_tokenizer / tiny_pair / scripted backends; "
            "tests that need the real models belong in tests/integration_tests"
        )


class _RefuseEmbeddedPackages:
    """A ``sys.meta_path`` finder that refuses to find the embedded model packages."""

    def __init__(self, guard: EmbeddedGuard) -> None:
        self.guard = guard

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if name.partition(".")[0] in EMBEDDED_PACKAGES:
            self.guard.refuse(f"import of {name}")


@contextlib.contextmanager
def no_embedded_models(empty_cache: Path) -> Iterator[EmbeddedGuard]:
    """While open, any use of the embedded models fails; on exit, fail if any was attempted.

    Args:
        empty_cache: An empty folder used as the GGUF conversion cache (``SPTHINK_CACHE``).

    Yields:
        The guard (its ``attempts``).
    """
    guard = EmbeddedGuard()
    gguf_path, module = models.EmbeddedModel.gguf_path, models.EmbeddedModel._module

    def guarded_gguf_path(self: models.EmbeddedModel, *args: Any, **kwargs: Any) -> Path:
        if self.package in EMBEDDED_PACKAGES:
            guard.refuse(f"EmbeddedModel({self.alias!r}).gguf_path()")
        return gguf_path(self, *args, **kwargs)

    def guarded_module(self: models.EmbeddedModel) -> Any:
        if self.package in EMBEDDED_PACKAGES:
            guard.refuse(f"EmbeddedModel({self.alias!r})._module()")
        return module(self)

    finder = _RefuseEmbeddedPackages(guard)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.EmbeddedModel, "gguf_path", guarded_gguf_path)
        patch.setattr(models.EmbeddedModel, "_module", guarded_module)
        for name in list(sys.modules):  # imported before (an integration test): import again
            if name.partition(".")[0] in EMBEDDED_PACKAGES:
                patch.delitem(sys.modules, name)
        patch.setenv("SPTHINK_CACHE", str(empty_cache))
        models.clear_model_cache()  # nothing an integration test loaded is reused
        loading.clear_backend_cache()
        sys.meta_path.insert(0, finder)
        try:
            yield guard
        finally:
            sys.meta_path.remove(finder)
    if guard.attempts:
        pytest.fail(f"{MESSAGE}: {guard.attempts}", pytrace=False)
