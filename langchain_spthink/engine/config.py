"""Every knob of ALGORITHM.md with the paper's defaults, validated at construction."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from langchain_spthink.engine.cues import NEGATIVE_WORDS, POSITIVE_WORDS, VERIFY_WORDS
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import ConfigError

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "SpeculativeThinkingConfig",
    "paper_instruct",
    "paper_reasoning",
    "preset",
]


class SpeculativeThinkingConfig(BaseModel):
    """The speculative-thinking configuration of one chat model or engine.

    Defaults are the paper's reasoning configuration. Invalid values raise
    :class:`~langchain_spthink.errors.ConfigError` naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    triggers: tuple[str, ...] = Field(("\n\n",), description="Delimiters that end a step.")
    verify_words: tuple[str, ...] = Field(VERIFY_WORDS, description="Cues of a checking step.")
    negative_words: tuple[str, ...] = Field(NEGATIVE_WORDS, description="Cues of backtracking.")
    positive_words: tuple[str, ...] = Field(POSITIVE_WORDS, description="Cues of confirmation.")
    word_boundary: bool = Field(False, description="Match cue words as whole words only.")
    draft_tokens: int = Field(20, ge=1, description="Look-ahead draft / replacement step length.")
    verify_tokens: int = Field(
        125, ge=0, description="Tokens the large model adds after a step with a verify word."
    )
    recap_prompt: str = Field(
        "Let me check whether there are some wrong steps:",
        description="Text inserted before a forced recap.",
    )
    recap_after_negatives: int = Field(15, ge=1, description="Negative steps before a recap.")
    recap_after_step: int = Field(5, ge=0, description="Growth of the recap threshold per recap.")
    recap_after_max: int = Field(30, ge=1, description="Cap of the recap threshold.")
    recap_tokens: int = Field(125, ge=1, description="Large-model budget of the first recap.")
    recap_tokens_step: int = Field(25, ge=0, description="Growth of the recap budget per recap.")
    recap_tokens_max: int = Field(200, ge=1, description="Cap of the recap budget.")
    think_word: str | None = Field(None, description="Text appended at every boundary.")
    choose_large: bool = Field(True, description="Always keep the large step when both drafted.")
    begin: bool = Field(False, description="The large model writes the first tokens.")
    begin_tokens: int = Field(100, ge=1, description="Length of the large model's opening.")
    not_reasoning: bool = Field(False, description="Intervene at every boundary, not only cues.")
    temperature: float = Field(0.6, ge=0.0, le=10.0, description="Sampling temperature (0=greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus mass.")
    top_k: int = Field(50, ge=0, description="Top-k cut (0 disables).")
    time_out: float | None = Field(None, gt=0.0, description="Wall-clock cap of a request (s).")
    large_step_timeout: float | None = Field(
        None,
        gt=0.0,
        description="Wall-clock cap of one large-model step (s); over it: fallback.",
    )
    fallback: Literal["small", "raise"] = Field(
        "small", description="On a large-model failure: continue with the small model, or raise."
    )
    policy: Literal["keyword", "judge"] = Field(
        "keyword",
        description="Delegation policy: the paper's cue words, or the large model judging drafts.",
    )
    judge_threshold: float = Field(
        7.0, ge=0.0, le=9.0, description="Judge policy: delegate when the 0-9 score is below."
    )
    max_large_tokens: int | None = Field(
        None,
        ge=0,
        description="Cap on tokens the large model generates per request; then small mode.",
    )
    max_reasoning_tokens: int | None = Field(
        None,
        ge=1,
        description="Thinking budget: output tokens before the answer; then the answer is forced.",
    )
    verified_large: bool = Field(
        True,
        description=(
            "Where the models share a tokenizer, the large model writes by checking the small "
            "model's proposed tokens (several per forward pass) instead of decoding one at a "
            "time; the text is what it would write alone (greedy: the same ids; sampling: the "
            "same distribution)."
        ),
    )
    proposal_tokens: int = Field(
        8,
        ge=1,
        le=64,
        description=(
            "Tokens the small model proposes per verification at first; adapts between 1 and "
            "twice this (+2 after a fully accepted proposal, -1 after a rejection)."
        ),
    )
    reasoning_close: str | None = Field(
        None,
        description=(
            "Text inserted when the thinking budget runs out (default: the answer marker, "
            "e.g. '</think>', on its own line, or 'Final answer:' without one)."
        ),
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                for err in exc.errors()
            )
            if any(err["type"] == "extra_forbidden" for err in exc.errors()):
                problems += (
                    f"; valid keys: {', '.join(type(self).model_fields)}"
                    " (`spthink config` shows them with their values)"
                )
            raise ConfigError(f"invalid speculative-thinking config: {problems}") from exc

    @field_validator("triggers")
    @classmethod
    def _non_empty_triggers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not t for t in value):
            raise ValueError("needs at least one trigger and no empty trigger")
        return value

    @field_validator("verify_words", "negative_words", "positive_words")
    @classmethod
    def _no_empty_words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not w.strip() for w in value):
            raise ValueError("cue words must not be empty")
        return value

    @model_validator(mode="after")
    def _caps(self) -> SpeculativeThinkingConfig:
        if self.recap_tokens_max < self.recap_tokens:
            raise ValueError("recap_tokens_max must be >= recap_tokens")
        if self.recap_after_max < self.recap_after_negatives:
            raise ValueError("recap_after_max must be >= recap_after_negatives")
        return self

    def sampling(self, seed: int | None = None, **overrides: Any) -> SamplingParams:
        """The sampling parameters of this config, with per-request overrides (None ignored)."""
        values: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(seed=seed, **values)

    def with_updates(self, **changes: Any) -> SpeculativeThinkingConfig:
        """A validated copy with some fields changed."""
        return SpeculativeThinkingConfig(**{**self.model_dump(), **changes})


def paper_reasoning(**overrides: Any) -> SpeculativeThinkingConfig:
    """The paper's configuration for a reasoning small model (e.g. R1-Distill)."""
    return SpeculativeThinkingConfig(**overrides)


def paper_instruct(**overrides: Any) -> SpeculativeThinkingConfig:
    """The paper's configuration for a non-reasoning small model: ``begin`` + ``not_reasoning``."""
    return SpeculativeThinkingConfig(**{"begin": True, "not_reasoning": True, **overrides})


PRESETS = {"reasoning": paper_reasoning, "instruct": paper_instruct}

DEFAULT_PRESET = "reasoning"
"""The preset of every surface that does not name one: ``ChatSpeculativeThinking()`` (whose
default config is this preset), ``spthink run`` / ``eval`` / ``serve``. Chosen by measurement on
the embedded pair (first 50 GSM8K test problems, greedy, 384 tokens; docs/configuration.md
"Choosing the preset"): the only candidate not worse than the small model alone (6.0% vs 6.0%,
large share 3.0%), where ``instruct`` scored 4.0% with a 60.9% large share."""


def preset(name: str, **overrides: Any) -> SpeculativeThinkingConfig:
    """Build a named preset (``reasoning`` or ``instruct``) with overrides."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return factory(**overrides)
