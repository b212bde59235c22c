"""The contract between the engine, the backends and constrained decoding.

A :class:`TokenConstraint` restricts which token ids one model may sample next, e.g. a grammar
compiled from a JSON schema. It is stateful and belongs to one session: the backend masks the
logits row with :meth:`TokenConstraint.mask` before sampling and reports the sampled id with
:meth:`TokenConstraint.accept`. The engine creates one with a :data:`ConstraintFactory` for the
model that writes the answer, at the position where the answer starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from langchain_spthink.backends.base import Backend

__all__ = ["ConstraintFactory", "TokenConstraint"]


@runtime_checkable
class TokenConstraint(Protocol):
    """Allowed-token state of one constrained generation."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Return ``logits`` (``[vocab]``) with every id the constraint forbids set to ``-inf``."""
        ...

    def accept(self, token: int) -> None:
        """Advance the constraint by the sampled id (which :meth:`mask` allowed)."""
        ...

    @property
    def done(self) -> bool:
        """True once the constrained text is complete: nothing but an end token may follow."""
        ...


ConstraintFactory = Callable[["Backend"], TokenConstraint]
"""Builds a fresh constraint for the model (its tokenizer) that will write the answer."""
