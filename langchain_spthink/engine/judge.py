"""The policy's call at a boundary, and the judge's question to the large model.

:func:`decide` asks the request's delegation policy about a small draft; a judging policy asks
the large model through :func:`next_token_probabilities`, on its cached sequence (crop, never
copy). A failure while judging is a large-model fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from langchain_spthink.backends.base import Backend, Session, close_stream
from langchain_spthink.engine.policies import BoundaryState, Decision
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.engine.state import RunBase
from langchain_spthink.engine.steps import _LargeFault

__all__ = ["decide", "next_token_probabilities"]


def decide(run: RunBase, draft: str) -> Decision:
    """Ask the run's policy about a small draft (a judge runs on the large model's cache).

    Raises:
        _LargeFault: The large model failed while judging.
    """
    large = run.tracks.get("large")
    state = BoundaryState(
        draft=draft,
        output=run.out.text,
        delegations=run.delegations,
        negatives=run.negatives,
        tokens=run.kept_tokens,
        large_tokens=large.usage.generated_tokens if large else 0,
    )
    if not run.policy.needs_judge:
        return run.policy.decide(state, None)

    def judge(draft: str, prompt: str, choices: Sequence[str]) -> list[float]:
        track = run.tracks["large"]
        run._sync(track)
        try:
            return next_token_probabilities(track.session, track.backend, draft + prompt, choices)
        finally:
            run._mark_synced(track)  # cropped back to the synced sequence

    try:
        return run.policy.decide(state, judge)
    except _LargeFault:
        raise
    except Exception as exc:
        raise _LargeFault(exc) from exc


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
