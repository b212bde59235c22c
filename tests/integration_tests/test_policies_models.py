"""The judge policy on real transformer models: the distribution it reads, and the embedded pair."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from langchain_spthink import (
    DelegationEvent,
    FinishEvent,
    JudgePolicy,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
)
from langchain_spthink.engine.policies import DIGITS, BoundaryState, Decision, Judge, expected_score

pytestmark = pytest.mark.embedded
GREEDY = SamplingParams(temperature=0.0)
QUESTION = [{"role": "user", "content": "What is 12 times 7? Think step by step."}]


class Recording:
    """A JudgePolicy that records each boundary it sees and the decision it makes."""

    def __init__(self, policy: JudgePolicy) -> None:
        self.policy = policy
        self.decisions: list[tuple[BoundaryState, Decision]] = []

    @property
    def needs_judge(self) -> bool:
        return True

    def decide(self, state: BoundaryState, judge: Judge | None) -> Decision:
        decision = self.policy.decide(state, judge)
        self.decisions.append((state, decision))
        return decision


def _spy_next_logits(backend: Any) -> list[tuple[list[int], torch.Tensor]]:
    """Record (ids, logits) of every next_logits() call on sessions of ``backend``."""
    calls: list[tuple[list[int], torch.Tensor]] = []
    open_session = backend.new_session

    def new_session(prompt: Any, sampling: Any) -> Any:
        session = open_session(prompt, sampling)
        real = session.next_logits

        def next_logits() -> torch.Tensor:
            logits = real()
            calls.append((list(session.ids), logits.clone()))
            return logits

        session.next_logits = next_logits
        return session

    backend.new_session = new_session
    return calls


def test_judge_reads_the_large_models_digit_distribution(tiny_pair: Any) -> None:
    small, large = tiny_pair
    # Random weights write no "\n\n": a space is the trigger, so most tokens end a step.
    config = SpeculativeThinkingConfig(draft_tokens=3, verify_tokens=0, triggers=(" ",))
    prompt = small.chat_prompt_ids(QUESTION)
    never = Recording(JudgePolicy(threshold=0.0))  # scores >= 0: never delegates
    calls = _spy_next_logits(large)
    try:
        engine = SpeculativeEngine(small, large, config, policy=never)
        *_, finish = engine.generate(Request(prompt, prompt, 40, GREEDY))
    finally:
        del large.new_session  # back to the class method
    assert isinstance(finish, FinishEvent) and never.decisions
    digit_ids = [large.encode(d)[0] for d in DIGITS]
    judged = [(ids, logits) for ids, logits in calls if len(ids) > len(prompt)]
    assert len(judged) == len([s for s, _ in never.decisions if s.draft.strip()])
    decisions = [decision for state, decision in never.decisions if state.draft.strip()]
    for (ids, logits), decision in zip(judged, decisions, strict=True):
        with torch.inference_mode():
            full = large.model(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(logits, full, atol=1e-4)  # cache catch-up == full prefill
        probs = full[torch.tensor(digit_ids)].float().softmax(-1).tolist()
        assert decision.score == pytest.approx(expected_score(probs), abs=1e-4)
    # Never delegating, the output is the small model's own greedy text: judging forwarded the
    # large model's cache and cropped it back without touching the output.
    alone = SpeculativeEngine(small, None, config)
    *_, small_only = alone.generate(Request(prompt, prompt, 40, GREEDY, mode="small"))
    assert isinstance(small_only, FinishEvent) and finish.text == small_only.text
    assert finish.large.generated_tokens == 0


def judged_score(model: Any, tokenizer: Any, ids: list[int]) -> float:
    """Expected digit of ``model``'s next token after ``ids``, over the digits 0-9.

    Computed here from scratch: one full forward pass (no cache), the logits of the ten digit
    tokens, softmax, then the expectation.
    """
    digit_ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    assert all(len(i) == 1 for i in digit_ids)  # each digit is one token
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    probs = logits[torch.tensor([i[0] for i in digit_ids])].double().softmax(-1)
    return float(sum(d * p for d, p in enumerate(probs.tolist())))


def test_judge_policy_on_the_embedded_pair(small_backend: Any, large_backend: Any) -> None:
    threshold = 7.0
    policy = Recording(JudgePolicy(threshold=threshold))
    config = SpeculativeThinkingConfig(draft_tokens=12, verify_tokens=0)
    engine = SpeculativeEngine(small_backend, large_backend, config, policy=policy)
    large_prompt = large_backend.chat_prompt_ids(QUESTION)
    request = Request(small_backend.chat_prompt_ids(QUESTION), large_prompt, 80, GREEDY)
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent) and finish.stop_reason in ("eos", "length")
    scored = [(s, d) for s, d in policy.decisions if d.score is not None]
    assert scored
    # The two models have different tokenizers: the large model reads the output as text, in
    # its own tokens, after its chat prompt; then the draft and the judging prompt.
    tokenizer = large_backend.tokenizer
    for state, decision in scored:
        ids = list(large_prompt) + tokenizer.encode(state.output, add_special_tokens=False)
        ids += tokenizer.encode(state.draft + policy.policy.prompt, add_special_tokens=False)
        expected = judged_score(large_backend.model, tokenizer, ids)
        assert decision.score == pytest.approx(expected, abs=1e-3), state.draft
        assert decision.delegate == (decision.score < threshold)
    delegated = [e for e in events if isinstance(e, DelegationEvent)]
    assert [(e.small_draft, e.score) for e in delegated] == [
        (s.draft, d.score) for s, d in policy.decisions if d.delegate
    ]
    for event in delegated:
        assert event.score is not None and event.score < threshold
        assert event.reason == f"score {event.score:.2f} < 7"
