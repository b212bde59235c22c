"""Pure sampling helpers: temperature, top-k and top-p (nucleus) over one logits row.

The order of the warpers matches transformers' ``generate()`` (temperature, then top-k, then
top-p), so a seeded request samples from the same distribution as ``generate()`` would.
:class:`SamplingParams` is importable without torch (the CLI's parser and the config use it);
the helpers import torch when called. :class:`TokenConstraint` is the protocol of constrained
decoding that the backends mask their logits with (its grammar implementation is
:class:`langchain_spthink.tools.constraints.GrammarConstraint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "SamplingParams",
    "TokenConstraint",
    "warp_logits",
    "sample_token",
    "sample_constrained",
    "request_generator",
    "speculative_accept",
    "verify_proposal",
]


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


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings.

    Attributes:
        temperature: Softmax temperature; ``0`` means greedy (argmax) decoding.
        top_p: Nucleus mass kept, in ``(0, 1]``; ``1`` disables it.
        top_k: Number of most likely tokens kept; ``0`` disables it.
        seed: Seed of the request's random generator; ``None`` draws a fresh one.
    """

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 50
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """Whether decoding is deterministic argmax."""
        return self.temperature <= 0.0


def warp_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Apply temperature, top-k and top-p to a ``[vocab]`` logits row.

    Args:
        logits: Float tensor of shape ``[vocab]``.
        params: Sampling settings; must not be greedy.

    Returns:
        A new ``[vocab]`` float32 tensor where removed tokens are ``-inf``.
    """
    import torch

    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        # Remove the low-probability tail whose mass is <= 1 - top_p; always keep the best token.
        remove_sorted = cum <= (1.0 - params.top_p)
        remove_sorted[-1] = False
        remove = remove_sorted.scatter(0, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def sample_token(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> int:
    """Pick the next token id from a ``[vocab]`` logits row.

    Args:
        logits: Float tensor of shape ``[vocab]``.
        params: Sampling settings; greedy when ``temperature <= 0``.
        generator: Random generator of the request (ignored when greedy).

    Returns:
        The chosen token id.
    """
    import torch

    if params.greedy:
        return int(torch.argmax(logits).item())
    probs = warp_logits(logits, params).softmax(dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def request_generator(
    params: SamplingParams, device: torch.device | str = "cpu"
) -> torch.Generator | None:
    """The random generator of one request: seeded when ``params.seed`` is set, ``None`` if greedy.

    Args:
        params: The request's sampling settings.
        device: Device of the logits the generator samples from.

    Returns:
        A generator, or ``None`` for greedy decoding.
    """
    import torch

    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def sample_constrained(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    constraint: TokenConstraint | None,
) -> int:
    """:func:`sample_token` over the ids ``constraint`` allows, advancing it by the choice.

    Args:
        logits: Raw logits ``[vocab]`` (the mask applies before warping).
        params: Sampling settings.
        generator: Random generator of the request.
        constraint: The constraint of the session's step, or ``None``.

    Returns:
        The chosen id.
    """
    if constraint is None:
        return sample_token(logits, params, generator)
    token = sample_token(constraint.mask(logits), params, generator)
    constraint.accept(token)
    return token


def speculative_accept(
    p: torch.Tensor,
    token: int,
    generator: torch.Generator | None,
    q: torch.Tensor | None = None,
) -> int | None:
    """The speculative-sampling acceptance rule for one proposed token.

    ``token`` was proposed from the distribution ``q`` (``None``: a given token, as if ``q`` were
    one-hot on it); the target distribution is ``p``. The proposal is kept with probability
    ``min(1, p[token] / q[token])``; otherwise a token is drawn from ``max(0, p - q)``
    renormalised. Whatever ``q`` is, the returned token is distributed as ``p`` (Leviathan et
    al. 2023, Chen et al. 2023); with ``q = None`` this holds for any way the proposal was chosen,
    as long as the choice does not depend on this call's random draw.

    Args:
        p: Target probabilities ``[vocab]`` (after temperature, top-k, top-p).
        token: The proposed id.
        generator: Random generator of the request.
        q: Proposal probabilities ``[vocab]``, or ``None`` for a given token.

    Returns:
        ``None`` when the proposal is accepted, else the replacement id.
    """
    import torch

    q_token = 1.0 if q is None else float(q[token])
    p_token = float(p[token])
    u = float(torch.rand((), generator=generator, device=p.device))
    if q_token > 0.0 and u * q_token < p_token:
        return None
    if q is None:
        residual = p.clone()
        residual[token] = 0.0
    else:
        residual = (p - q).clamp_min(0.0)
    if float(residual.sum()) <= 0.0:  # p == q up to rounding: p itself is the residual
        residual = p
    return int(torch.multinomial(residual, 1, generator=generator).item())


def verify_proposal(
    logits: torch.Tensor,
    proposal: Sequence[int],
    params: SamplingParams,
    generator: torch.Generator | None,
) -> list[int]:
    """The target model's next ids given its logits over a proposal: accepted prefix + one id.

    Row ``i`` of ``logits`` is the target's logits for the position of ``proposal[i]``; the last
    row is for the position after the whole proposal. Greedy: each proposed id is kept while it
    is the argmax, and the first argmax that differs (or the one after a fully kept proposal)
    ends the list, so the result is exactly what greedy decoding would write. Sampling: each
    proposed id goes through :func:`speculative_accept` as a given token (``q = None``) against
    the warped distribution of its row, so every returned id is distributed as plain sampling
    from the target would draw it.

    Args:
        logits: ``[len(proposal) + 1, vocab]`` raw logits of the target model.
        proposal: Proposed ids.
        params: The target's sampling settings.
        generator: The target's random generator (``None`` when greedy).

    Returns:
        ``proposal[:n] + [next_id]`` for the number ``n`` of accepted ids.
    """
    import torch

    if logits.shape[0] != len(proposal) + 1:
        raise ValueError(f"{logits.shape[0]} logits rows for a proposal of {len(proposal)} ids")
    for i, token in enumerate(proposal):
        if params.greedy:
            best = int(torch.argmax(logits[i]).item())
            if best != token:
                return [*proposal[:i], best]
            continue
        probs = warp_logits(logits[i], params).softmax(dim=-1)
        replacement = speculative_accept(probs, token, generator)
        if replacement is not None:
            return [*proposal[:i], replacement]
    return [*proposal, sample_token(logits[len(proposal)], params, generator)]
