"""Thread counts for the numerics-sensitive tests, shared by unit and integration tests.

Each numerics-sensitive test runs at every count in :data:`THREADS`, each count on its own:
results are compared only between runs at the same count (1 vs 2 torch threads moves logits by
~3e-5, measured on an AMD EPYC AVX2 machine; llama.cpp gave identical logits at 1 and 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["THREADS", "torch_threads"]

THREADS = (1, 2)
"""torch / llama.cpp thread counts the numerics-sensitive tests run under (each on its own)."""


@contextlib.contextmanager
def torch_threads(n: int, *backends: Any) -> Iterator[None]:
    """torch's intra-op pool ``n`` wide while the block runs, then as it was.

    For direct model calls (``torch.set_num_threads``) and for the forwards of ``backends``
    (transformers backends apply their own ``threads`` in whichever thread runs a forward).
    """
    before = torch.get_num_threads()
    saved = [b.threads for b in backends]
    torch.set_num_threads(n)
    for backend in backends:
        backend.threads = n
    try:
        yield
    finally:
        torch.set_num_threads(before)
        for backend, threads in zip(backends, saved, strict=True):
            backend.threads = threads


def until_stop(decode: Any, ids: list[int], stops: tuple[str, ...]) -> tuple[str, int]:
    """What an engine that ends a model's turn at its stop texts keeps of a generation.

    Args:
        decode: The tokenizer's decode (ids -> text).
        ids: The generated ids (EOS already removed).
        stops: The model's stop texts (``backend.stop_texts``).

    Returns:
        The text before the first stop text, and how many ids were generated up to the one that
        completed it (all of them when no stop text occurs).
    """
    for k in range(1, len(ids) + 1):
        text = decode(ids[:k])
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], k
    return decode(ids), len(ids)
