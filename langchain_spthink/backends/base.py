"""The protocol every backend meets.

A :class:`Backend` is a loaded model plus its tokenizer, shared by all requests. Each request opens
a :class:`Session`: the token sequence of that request as this model sees it (prompt + output),
with whatever cache the runtime keeps for it. Invariants every session keeps:

* ``ids`` is the logical sequence. The runtime's cache may lag behind it (tokens appended with
  :meth:`Session.extend` or sampled but not yet forwarded); it is caught up by forwarding only the
  tokens it has not seen, never by re-forwarding the prefix.
* :meth:`Session.truncate` crops the cache; nothing is ever copied for rollback.
* :meth:`Session.stream` yields sampled ids one at a time, each already appended to ``ids``;
  the consumer stops whenever it likes (trigger, EOS, budget) by not asking for more.
* :meth:`Session.reseed` gives the next sampled step its own seed (the engine derives one per
  step from the request's seed), so no two steps of a request replay one random stream. Sessions
  written before it existed may lack it: the engine calls it through :func:`reseed`.

A backend may also carry ``stop_texts``: texts that end its model's turn like an EOS token (a
base model prompted in a completion format starts a new ``Question:``); the engine ends the
output before them. Backends without the attribute have none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from langchain_spthink.engine.sampling import SamplingParams, TokenConstraint

__all__ = [
    "Backend",
    "ConstraintFactory",
    "Session",
    "VerifyingSession",
    "close_stream",
    "reseed",
    "vocab_fingerprint",
]


@runtime_checkable
class Session(Protocol):
    """One request's token sequence and cache on one model."""

    @property
    def ids(self) -> Sequence[int]:
        """All token ids of the sequence: prompt then output."""
        ...

    @property
    def forwarded(self) -> int:
        """Number of token positions pushed through the model so far (for efficiency stats)."""
        ...

    def extend(self, ids: Sequence[int]) -> None:
        """Append ids written elsewhere; they are forwarded lazily by the next :meth:`stream`."""
        ...

    def truncate(self, length: int) -> None:
        """Drop every id at index ``>= length`` and crop the cache to match."""
        ...

    def stream(self, max_new: int, *, constraint: TokenConstraint | None = None) -> Iterator[int]:
        """Sample up to ``max_new`` ids, yielding each after appending it to :attr:`ids`.

        With a ``constraint``, each logits row is masked by it before sampling (before the
        sampling warpers) and each sampled id is passed to its ``accept``; the consumer stops
        when an EOS id is yielded or ``constraint.done``. Backends that sample elsewhere (remote
        servers) raise :class:`~langchain_spthink.errors.InvalidRequestError`.
        """
        ...

    def reseed(self, seed: int | None) -> None:
        """Sample from now on with a generator seeded by ``seed`` (``None``: a fresh one).

        The other sampling settings stay; a greedy session is unaffected.
        """
        ...

    def close(self) -> None:
        """Release the request's cache. The session must not be used afterwards."""
        ...


@runtime_checkable
class VerifyingSession(Session, Protocol):
    """A session whose model can check proposed ids in one forward pass (local runtimes)."""

    def verify(self, proposal: Sequence[int]) -> list[int]:
        """Score ``proposal`` in one forward; return the accepted prefix plus one id of its own.

        The returned ids are appended to :attr:`ids` (the rejected tail is cropped away). Greedy:
        the ids greedy decoding writes; sampling: distributed as plain sampling would draw them.
        """
        ...


@runtime_checkable
class Backend(Protocol):
    """A loaded model with its tokenizer; thread-safe to open sessions from."""

    @property
    def name(self) -> str:
        """Human-readable model name (alias, hub id or path)."""
        ...

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end generation."""
        ...

    @property
    def context_length(self) -> int:
        """Maximum sequence length (prompt + output) the model accepts."""
        ...

    @property
    def tokenizer_fingerprint(self) -> str:
        """Equal for two backends iff their tokenizers map text to the same ids."""
        ...

    def encode(self, text: str) -> list[int]:
        """Tokenize text without adding special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize ids, keeping special tokens out of the text."""
        ...

    def chat_prompt_ids(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Render OpenAI-style ``{"role", "content", ...}`` messages into prompt ids."""
        ...

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> Session:
        """Open a request's session whose sequence starts as ``prompt_ids``."""
        ...


ConstraintFactory = Callable[[Backend], TokenConstraint]
"""Builds a fresh constraint for the model (its tokenizer) that will write the answer."""


def vocab_fingerprint(pieces: Iterable[object]) -> str:
    """The tokenizer fingerprint every backend reports: sha256 of its id -> token-string table.

    One definition for all runtimes, so the same vocabulary loaded by transformers, llama.cpp or a
    remote backend's local tokenizer compares equal and the engine hands off ids.

    Args:
        pieces: Token strings in id order.

    Returns:
        A hex digest.
    """
    return hashlib.sha256(json.dumps([str(p) for p in pieces]).encode()).hexdigest()


def close_stream(stream: Iterator[int]) -> None:
    """Close a :meth:`Session.stream` iterator the consumer stopped reading.

    A generator runs its ``finally`` (a remote backend closes its HTTP response there); other
    iterators are left alone.
    """
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def reseed(session: Session, seed: int | None) -> None:
    """Call :meth:`Session.reseed` on a session that has it (older sessions are left alone)."""
    method = getattr(session, "reseed", None)
    if callable(method):
        method(seed)
