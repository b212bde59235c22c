"""The backends layer: model runtimes behind the engine, each owning its tokenizer and KV cache.

Modules: :mod:`.base` (the :class:`~langchain_spthink.backends.base.Backend` /
:class:`~langchain_spthink.backends.base.Session` protocol), :mod:`.transformers`,
:mod:`.llamacpp`, :mod:`.remote`, :mod:`.scripted` (scripted backends for tests and examples),
:mod:`.loading` (model specs to backends, the process-wide cache of loaded weights) and
:mod:`._common` (what the backends share: prompt checks, chat rendering, session bookkeeping).

May import: the standard library, torch, transformers, llama.cpp, numpy,
:mod:`langchain_spthink.errors`, :mod:`langchain_spthink.models`,
:mod:`langchain_spthink.threads` and the engine's leaf modules (``engine.sampling``,
``engine.handoff``). Must not import: the control loop (``engine.loop``, ``engine.steps``,
``engine.state``, ``engine.answer``, ``engine.concurrent``, ``engine.judge``, ``engine.report``),
:mod:`langchain_spthink.chat`, :mod:`langchain_spthink.cli`
(contracts in ``pyproject.toml``, checked by ``lint-imports``). ``Backend`` and ``Session`` are
exported lazily, so importing this package loads no runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Backend", "Session"]

if TYPE_CHECKING:
    from langchain_spthink.backends.base import Backend, Session


def __getattr__(name: str) -> Any:
    """Import ``Backend`` / ``Session`` from :mod:`.base` on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'langchain_spthink.backends' has no attribute {name!r}")
    value = getattr(importlib.import_module("langchain_spthink.backends.base"), name)
    globals()[name] = value
    return value
