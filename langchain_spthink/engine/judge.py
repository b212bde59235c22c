"""The judge's question to the large model, asked on its cached sequence (crop, never copy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from langchain_spthink.backends.base import Backend, Session, close_stream
from langchain_spthink.engine.sampling import SamplingParams

__all__ = ["next_token_probabilities"]


def next_token_probabilities(
    session: Session, backend: Backend, text: str, choices: Sequence[str]
) -> list[float]:
    """Probabilities of ``choices`` as the next token after ``session.ids`` + ``text``.

    Forwards only ``text`` on the session's cache, then crops the session back to its length on
    entry. With next-token logits (local backends) the probabilities are the softmax over the
    choices' first tokens; without (remote models) one greedy token decides: one-hot on the
    choice it starts, uniform when it starts none of them.

    Args:
        session: The large model's session, synced to the output.
        backend: Its backend (tokenizer).
        text: Appended after the sequence (the draft and the judging prompt).
        choices: Candidate next tokens, e.g. the digits.

    Returns:
        One probability per choice, summing to 1.
    """
    firsts = []
    for choice in choices:
        ids = backend.encode(choice)
        if not ids:
            raise ValueError(f"a judge choice encodes to no token: {choice!r}")
        firsts.append(ids[0])
    base = len(session.ids)
    session.extend(backend.encode(text))
    try:
        next_logits = getattr(session, "next_logits", None)
        if callable(next_logits):
            import torch

            logits: torch.Tensor = next_logits()
            probs = logits[torch.tensor(firsts)].float().softmax(dim=-1)
            return [float(p) for p in probs]
        # One greedy token, whatever the request samples with (restored below).
        sampling = getattr(session, "sampling", None)
        if isinstance(sampling, SamplingParams):
            session.sampling = replace(sampling, temperature=0.0)  # type: ignore[attr-defined]
        try:
            stream = session.stream(1)
            token = next(iter(stream), None)
            close_stream(stream)
        finally:
            if isinstance(sampling, SamplingParams):
                session.sampling = sampling  # type: ignore[attr-defined]
        if token in firsts:
            return [1.0 if f == token else 0.0 for f in firsts]
        return [1.0 / len(firsts)] * len(firsts)
    finally:
        session.truncate(base)
