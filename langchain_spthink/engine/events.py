"""Typed events the engine yields. Everything reported above the engine is built from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Author",
    "DelegationKind",
    "StopReason",
    "TextEvent",
    "DelegationEvent",
    "FallbackEvent",
    "BudgetEvent",
    "ModelUsage",
    "FinishEvent",
    "Event",
]

Author = Literal["small", "large", "inserted"]
"""Who wrote a piece of output: one of the models, or the engine (recap prompt, think word)."""

DelegationKind = Literal["begin", "reflection", "verify", "recap"]
StopReason = Literal["eos", "length", "stop", "timeout", "context"]


@dataclass(frozen=True)
class TextEvent:
    """Output text, in order; concatenating every ``text`` gives the answer.

    Attributes:
        text: The new text (may be a fragment of a token's text, never split inside a character).
        author: Who wrote it.
    """

    text: str
    author: Author


@dataclass(frozen=True)
class DelegationEvent:
    """A step the large model wrote (whether or not it was kept).

    Attributes:
        kind: ``begin`` (answer opening), ``reflection`` (a cue step at a boundary), ``verify``
            (continuation after a verify word) or ``recap`` (forced after many negative steps).
        position: Character offset in the output where the step starts.
        small_draft: The small model's draft at this boundary (``None`` if it drafted nothing).
        large_text: What the large model wrote.
        kept: Which text went into the output: ``large`` or ``small``.
        small_label: Cue class of the small draft (-1/0/+1), ``None`` without a draft.
        large_label: Cue class of the large text.
        small_tokens: Tokens in the small draft.
        large_tokens: Tokens the large model generated for this step.
        seconds: Wall time the large model spent on this step.
        reason: Why the step was delegated (the policy's reason, or the kind's rule).
        score: The judge policy's score of the small draft (``None`` for other policies).
    """

    kind: DelegationKind
    position: int
    small_draft: str | None
    large_text: str
    kept: Literal["large", "small"]
    small_label: int | None
    large_label: int
    small_tokens: int
    large_tokens: int
    seconds: float
    reason: str = ""
    score: float | None = None


@dataclass(frozen=True)
class FallbackEvent:
    """The request left speculative mode because the large model failed.

    Attributes:
        reason: What went wrong (exception text or ``timeout``).
        error_type: Class name of the underlying exception, or ``"timeout"``.
        new_mode: The mode the request continues in.
        position: Character offset in the output where the switch happened.
    """

    reason: str
    error_type: str
    new_mode: Literal["small"]
    position: int


@dataclass(frozen=True)
class BudgetEvent:
    """A per-request budget ran out (emitted once per budget).

    Attributes:
        budget: ``max_large_tokens`` (the request goes on in small mode) or
            ``max_reasoning_tokens`` (the reasoning is closed and the answer follows).
        limit: The configured limit.
        spent: Tokens counted against it when it ran out.
        position: Character offset in the output where it happened.
    """

    budget: Literal["max_large_tokens", "max_reasoning_tokens"]
    limit: int
    spent: int
    position: int


@dataclass
class ModelUsage:
    """Token accounting of one model in one request.

    Attributes:
        prompt_tokens: Tokens of the prompt in this model's tokenizer.
        generated_tokens: Tokens this model sampled (kept or not).
        kept_tokens: Tokens of this model that are in the output.
        forwarded_tokens: Token positions pushed through the model (prompt + catch-up + drafts).
        seconds: Wall time spent in this model's forward/sampling (a verified large step counts
            the small model's proposals too; ``FinishEvent.extra["proposal_seconds"]`` says how
            much).
        decode_passes: Forward passes that produced this model's generated tokens: one per token
            in plain decoding, one per verification of proposed tokens.
        proposed_tokens: Tokens the other model proposed for this model to verify (large model,
            verified steps only).
        accepted_tokens: Proposed tokens this model accepted.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0
    kept_tokens: int = 0
    forwarded_tokens: int = 0
    seconds: float = 0.0
    decode_passes: int = 0
    proposed_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / proposed tokens (``None`` when nothing was proposed)."""
        return self.accepted_tokens / self.proposed_tokens if self.proposed_tokens else None


@dataclass(frozen=True)
class FinishEvent:
    """The last event of every request.

    Attributes:
        stop_reason: ``eos``, ``length`` (max_tokens), ``stop`` (a stop string), ``timeout`` or
            ``context`` (the model's context window is full).
        text: The complete output text.
        small: Usage of the small model.
        large: Usage of the large model.
        delegations: Number of delegation events.
        seconds: Wall time of the whole request.
        mode: The mode the request ended in.
        extra: Timing numbers: ``boundaries`` and ``boundary_seconds`` (wall time spent at
            boundaries: drafting, judging, large steps), and with concurrent drafts
            ``concurrent_seconds_saved``, ``concurrent_steps``, ``concurrent_steps_discarded``;
            with verified large steps ``proposal_seconds`` (the small model proposing).
        budgets: For each configured budget, its limit, what was spent and whether it ran out
            (keys ``max_large_tokens``, ``large_tokens``, ``large_exhausted``,
            ``max_reasoning_tokens``, ``reasoning_tokens``, ``reasoning_exhausted``).
        large_decoding: How the large model wrote its steps: ``verified`` (it checked the small
            model's proposed tokens, several per forward pass; ``large.decode_passes``,
            ``large.proposed_tokens`` and ``large.accepted_tokens`` count them) or ``plain``
            (one forward pass per token).
        large_decoding_reason: Why (e.g. the tokenizers differ, the config turned it off, the
            remote server cannot score given tokens).
    """

    stop_reason: StopReason
    text: str
    small: ModelUsage
    large: ModelUsage
    delegations: int
    seconds: float
    mode: str
    extra: dict[str, float] = field(default_factory=dict)
    budgets: dict[str, int | bool] = field(default_factory=dict)
    large_decoding: Literal["verified", "plain"] = "plain"
    large_decoding_reason: str = ""

    @property
    def output_tokens(self) -> int:
        """Tokens in the output written by either model."""
        return self.small.kept_tokens + self.large.kept_tokens

    @property
    def large_share(self) -> float:
        """Fraction of output tokens written by the large model (0 when there is no output)."""
        total = self.output_tokens
        return self.large.kept_tokens / total if total else 0.0


Event = TextEvent | DelegationEvent | FallbackEvent | BudgetEvent | FinishEvent
