"""Delegation policies: at a reasoning boundary, should the large model write the next step?

The engine consults one :class:`DelegationPolicy` at every boundary where it has a small-model
draft (step 3 of ALGORITHM.md; with ``not_reasoning`` the engine delegates every step and asks
no policy). Two built-ins:

* :class:`KeywordPolicy` — the paper's classifier: delegate when the draft contains a cue word
  (negative, verify or positive). No model cost. The default. Its cue words are the config's
  (``verify_words``, ``negative_words``, ``positive_words``, ``word_boundary``): the same lists
  label the steps, count negatives for the recap and trigger verify steps, so deciding and
  labelling always agree. :func:`resolve_policy` refuses a keyword policy with other words.
* :class:`JudgePolicy` — after SpecReason (Pan et al., 2025): the large model scores the draft
  0-9 from its next-token distribution over the digits after a short judging prompt; delegate when
  the expected score is below a threshold. Costs one large-model prefill of the draft and the
  prompt per boundary (the large model's cache is cropped back afterwards), no generation.

A policy is any object with a ``decide`` method and a ``needs_judge`` attribute; policies must be
stateless across requests (per-request counts arrive in :class:`BoundaryState`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from langchain_spthink.engine.cues import NEGATIVE_WORDS, POSITIVE_WORDS, VERIFY_WORDS, classify
from langchain_spthink.errors import ConfigError

if TYPE_CHECKING:
    from langchain_spthink.engine.config import SpeculativeThinkingConfig

__all__ = [
    "DIGITS",
    "JUDGE_PROMPT",
    "BoundaryState",
    "Decision",
    "DelegationPolicy",
    "Judge",
    "JudgePolicy",
    "KeywordPolicy",
    "expected_score",
    "policy_from_config",
    "resolve_policy",
]

DIGITS = tuple(str(d) for d in range(10))
JUDGE_PROMPT = (
    "\n[Rate the last step above from 0 (wrong or useless) to 9 (correct and useful).] Score: "
)


@dataclass(frozen=True)
class BoundaryState:
    """What a policy sees at one boundary.

    Attributes:
        draft: The small model's drafted next step (text).
        output: The output so far, without the draft.
        delegations: Delegation events so far in this request.
        negatives: Kept steps with a negative cue since the last recap.
        tokens: Output tokens so far.
        large_tokens: Tokens the large model generated so far in this request.
    """

    draft: str
    output: str
    delegations: int
    negatives: int
    tokens: int
    large_tokens: int


@dataclass(frozen=True)
class Decision:
    """A policy's answer.

    Attributes:
        delegate: Let the large model write this step.
        reason: Why, for events and logs (e.g. ``"cue: negative"``, ``"score 3.2 < 7"``).
        score: The judge's expected score, for policies that score.
    """

    delegate: bool
    reason: str
    score: float | None = None


class Judge(Protocol):
    """Asks the large model about the draft, from its cached state at the boundary."""

    def __call__(self, draft: str, prompt: str, choices: Sequence[str]) -> list[float]:
        """Probabilities of each choice as the large model's next token after output+draft+prompt.

        Args:
            draft: The draft text to append after the output.
            prompt: The question text appended after the draft.
            choices: Candidate next tokens (each encodes to one token, e.g. the digits).

        Returns:
            One probability per choice, renormalised over the choices (they sum to 1).
        """
        ...


@runtime_checkable
class DelegationPolicy(Protocol):
    """Decides at a boundary whether the large model writes the next step."""

    @property
    def needs_judge(self) -> bool:
        """True if :meth:`decide` uses the judge (the engine then passes one)."""
        ...

    def decide(self, state: BoundaryState, judge: Judge | None) -> Decision:
        """Decide for one boundary.

        Args:
            state: The draft and the request's counts.
            judge: Access to the large model (``None`` unless :attr:`needs_judge`).

        Returns:
            The decision.
        """
        ...


@dataclass(frozen=True)
class KeywordPolicy:
    """The paper's cue classifier: delegate iff the draft contains a cue word.

    The cue words are knobs of the config, which also labels steps, counts negatives and triggers
    verify steps with them: build this policy with :meth:`from_config` (the engine does when
    ``config.policy`` is ``"keyword"``). A keyword policy given to an engine, request or chat
    model must carry its config's words (:func:`resolve_policy` raises otherwise): to use other
    cue words, set them in the config. The defaults are the config's defaults.

    Attributes:
        negative_words: Backtracking cues ("wait", "alternatively", ...).
        verify_words: Checking cues ("let me check", ...).
        positive_words: Confirmation cues ("yeah", ...).
        word_boundary: Match whole words only (for lists in languages or words where substring
            matches misfire; the paper matches substrings).
    """

    negative_words: tuple[str, ...] = NEGATIVE_WORDS
    verify_words: tuple[str, ...] = VERIFY_WORDS
    positive_words: tuple[str, ...] = POSITIVE_WORDS
    word_boundary: bool = False

    @classmethod
    def from_config(cls, config: SpeculativeThinkingConfig) -> KeywordPolicy:
        """The keyword policy over ``config``'s cue words."""
        return cls(
            negative_words=config.negative_words,
            verify_words=config.verify_words,
            positive_words=config.positive_words,
            word_boundary=config.word_boundary,
        )

    def _cues(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], bool]:
        """The cue words and matching (negative, verify, positive, word boundary)."""
        return self.negative_words, self.verify_words, self.positive_words, self.word_boundary

    @property
    def needs_judge(self) -> bool:
        """Never: the keyword policy costs nothing."""
        return False

    def decide(self, state: BoundaryState, judge: Judge | None) -> Decision:
        """Delegate when :func:`~langchain_spthink.engine.cues.classify` is not neutral."""
        label = classify(
            state.draft,
            positive=self.positive_words,
            negative=self.negative_words,
            verify=self.verify_words,
            word_boundary=self.word_boundary,
        )
        if label == 0:
            return Decision(False, "no cue")
        return Decision(True, "cue: negative" if label < 0 else "cue: positive/verify")


def expected_score(probabilities: Sequence[float]) -> float:
    """Expected digit ``sum(i * p_i)`` of a distribution over the digits 0-9."""
    if len(probabilities) != len(DIGITS):
        raise ValueError(f"expected {len(DIGITS)} probabilities, got {len(probabilities)}")
    return sum(i * p for i, p in enumerate(probabilities))


@dataclass(frozen=True)
class JudgePolicy:
    """SpecReason-style judging: the large model scores each draft; low scores are delegated.

    Attributes:
        threshold: Delegate when the expected score (0-9) is below this.
        prompt: Judging text appended after the draft; the next token is read as the score.
        min_draft_chars: Drafts shorter than this (after stripping) are kept without judging.
    """

    threshold: float = 7.0
    prompt: str = JUDGE_PROMPT
    min_draft_chars: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 9.0:
            raise ConfigError(f"judge threshold must be within [0, 9], got {self.threshold}")
        if not self.prompt:
            raise ConfigError("the judge prompt must not be empty")

    @property
    def needs_judge(self) -> bool:
        """Always: the large model scores the draft."""
        return True

    def decide(self, state: BoundaryState, judge: Judge | None) -> Decision:
        """Score the draft with the large model and delegate below the threshold."""
        if judge is None:
            raise ConfigError("the judge policy needs a large model")
        if len(state.draft.strip()) < self.min_draft_chars:
            return Decision(False, "empty draft")
        score = expected_score(judge(state.draft, self.prompt, DIGITS))
        if score < self.threshold:
            return Decision(True, f"score {score:.2f} < {self.threshold:g}", score)
        return Decision(False, f"score {score:.2f} >= {self.threshold:g}", score)


def policy_from_config(config: SpeculativeThinkingConfig) -> DelegationPolicy:
    """The built-in policy a configuration names (``policy`` and its knobs)."""
    if config.policy == "judge":
        return JudgePolicy(threshold=config.judge_threshold)
    return KeywordPolicy.from_config(config)


def resolve_policy(
    config: SpeculativeThinkingConfig, policy: DelegationPolicy | None = None
) -> DelegationPolicy:
    """The policy a request runs with: ``policy`` if given, else the one ``config`` names.

    Args:
        config: The request's configuration (its cue words label the steps).
        policy: A policy given explicitly (to an engine, a request or a chat model).

    Returns:
        The policy.

    Raises:
        ConfigError: ``policy`` is a :class:`KeywordPolicy` whose cue words (or
            ``word_boundary``) differ from ``config``'s: it would delegate on words the labels,
            the negative count and the verify step do not see. Cue words are set in the config.
    """
    if policy is None:
        return policy_from_config(config)
    if isinstance(policy, KeywordPolicy):
        own = KeywordPolicy.from_config(config)._cues()
        if policy._cues() != own:
            names = ("negative_words", "verify_words", "positive_words", "word_boundary")
            diff = ", ".join(
                f"{name}={mine!r} (config: {theirs!r})"
                for name, mine, theirs in zip(names, policy._cues(), own, strict=True)
                if mine != theirs
            )
            raise ConfigError(
                f"the KeywordPolicy's cue words disagree with the config's: {diff}. Cue words "
                "are config knobs (the same lists decide, label steps, count negatives and "
                "trigger verify steps): set them in the config, e.g. "
                "config={'negative_words': [...]}, and leave policy unset"
            )
    return policy
