"""Delegation policies and per-request budgets on scripted models with hand-computed outputs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_spthink import (
    BoundaryState,
    BudgetEvent,
    ConfigError,
    DelegationEvent,
    FinishEvent,
    JudgePolicy,
    KeywordPolicy,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine.cues import classify
from langchain_spthink.engine.events import Event
from langchain_spthink.engine.policies import (
    DIGITS,
    JUDGE_PROMPT,
    DelegationPolicy,
    expected_score,
    policy_from_config,
    resolve_policy,
)

GREEDY = SamplingParams(temperature=0.0)


def run(
    small: ScriptedBackend,
    large: ScriptedBackend,
    *,
    policy: DelegationPolicy | None = None,
    mode: str = "speculative",
    max_tokens: int = 200,
    answer_marker: str | None = None,
    **cfg: object,
) -> list[Event]:
    config = SpeculativeThinkingConfig(**{"draft_tokens": 3, "verify_tokens": 0, **cfg})
    engine = SpeculativeEngine(small, large, config, clock=lambda: 0.0)  # timings compare equal
    request = Request(
        small.encode("Q: go"),
        large.encode("Q: go"),
        max_tokens,
        GREEDY,
        (),
        mode,  # type: ignore[arg-type]
        answer_marker=answer_marker,
        policy=policy,
    )
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == finish.text
    return events


def finish_of(events: list[Event]) -> FinishEvent:
    last = events[-1]
    assert isinstance(last, FinishEvent)
    return last


def of_type(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


# ------------------------------------------------------------------ keyword policy
SCRIPTS = st.lists(
    st.lists(
        st.sampled_from(["a", "b", "Wait", "yes", "check", "hmm", "x."]), min_size=1, max_size=5
    ).map(lambda words: " ".join(words) + ".\n\n"),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(small=SCRIPTS, large=SCRIPTS, not_reasoning=st.booleans(), choose_large=st.booleans())
def test_keyword_policy_object_makes_the_default_decisions(
    small: list[str], large: list[str], not_reasoning: bool, choose_large: bool
) -> None:
    knobs = {"not_reasoning": not_reasoning, "choose_large": choose_large}
    default = run(ScriptedBackend(small), ScriptedBackend(large), **knobs)  # type: ignore[arg-type]
    explicit = run(
        ScriptedBackend(small),
        ScriptedBackend(large),
        policy=KeywordPolicy(),
        **knobs,  # type: ignore[arg-type]
    )
    assert default == explicit


# Hand-labelled by ALGORITHM.md's rule (case-insensitive substrings; pos = positive words,
# neg = negative + verify words; pos > neg: +1, neg > pos or a tie with cues: -1, no cue: 0):
# the keyword policy delegates exactly when the label is not 0.
KEYWORD_CASES = [
    ("Wait, no.", True, "cue: negative"),  # wait: neg 1
    ("So x = 2.", False, "no cue"),
    ("Let me check.", True, "cue: negative"),  # check is a verify word: neg 1
    ("Yes!", True, "cue: positive/verify"),  # yes: pos 1
    ("", False, "no cue"),
    ("Yes, wait.", True, "cue: negative"),  # pos 1 == neg 1 > 0: negative
    ("Her eyes were blue.", True, "cue: positive/verify"),  # "yes" inside "eyes"
    ("Hold on: yes, the final answer is 4.", True, "cue: positive/verify"),  # pos 2 > neg 1
    ("ANOTHERLY, we recap.", True, "cue: negative"),  # another + recap: neg 2
    ("We are sure and certain.", False, "no cue"),
]


@pytest.mark.parametrize(("draft", "delegate", "reason"), KEYWORD_CASES)
def test_keyword_policy_decides_by_the_cue_rule(draft: str, delegate: bool, reason: str) -> None:
    decision = KeywordPolicy().decide(BoundaryState(draft, "", 0, 0, 0, 0), None)
    assert (decision.delegate, decision.reason, decision.score) == (delegate, reason, None)


def test_custom_cue_words_for_another_language() -> None:
    small = ["A.\n\n", "Moment, x y.\n\n", "Ende.\n\n"]
    large = ["L.\n\n", "Gut p q.\n\n", "F.\n\n"]
    # Cue words are config knobs: the keyword policy decides with them and the engine labels
    # steps with them (one list).
    german = {"negative_words": ("moment", "warte"), "verify_words": (), "positive_words": ()}
    default = run(ScriptedBackend(small), ScriptedBackend(large))
    custom = run(ScriptedBackend(small), ScriptedBackend(large), **german)  # type: ignore[arg-type]
    assert of_type(default, DelegationEvent) == []
    (delegation,) = of_type(custom, DelegationEvent)
    assert delegation.small_draft == "Moment, x y." and delegation.reason == "cue: negative"
    assert delegation.small_label == -1  # labelled by the words that decided
    assert finish_of(custom).text == "A.\n\nGut p q.\n\nEnde.\n\n"
    # The same policy given explicitly, with the config's words, decides the same.
    explicit = KeywordPolicy.from_config(SpeculativeThinkingConfig(**german))
    again = run(ScriptedBackend(small), ScriptedBackend(large), policy=explicit, **german)  # type: ignore[arg-type]
    assert again == custom


WORDS = st.lists(
    st.sampled_from(["wait", "moment", "yes", "ja", "check", "prüfe", "x"]), max_size=3
)


@settings(max_examples=80, deadline=None)
@given(
    draft=st.lists(
        st.sampled_from(["Wait", "moment", "yes", "JA", "check", "prüfe", "x", "eyes"]), max_size=5
    ).map(" ".join),
    negative=WORDS,
    verify=WORDS,
    positive=WORDS,
    word_boundary=st.booleans(),
)
def test_deciding_and_labelling_read_one_list_of_cue_words(
    draft: str, negative: list[str], verify: list[str], positive: list[str], word_boundary: bool
) -> None:
    config = SpeculativeThinkingConfig(
        negative_words=tuple(negative),
        verify_words=tuple(verify),
        positive_words=tuple(positive),
        word_boundary=word_boundary,
    )
    label = classify(
        draft,
        positive=config.positive_words,
        negative=config.negative_words,
        verify=config.verify_words,
        word_boundary=config.word_boundary,
    )  # how the engine labels a step (engine/state.py) and counts negatives (label < 0)
    for policy in (policy_from_config(config), resolve_policy(config)):
        decision = policy.decide(BoundaryState(draft, "", 0, 0, 0, 0), None)
        assert decision.delegate == (label != 0)


def test_an_explicit_keyword_policy_must_carry_the_configs_cue_words() -> None:
    config = SpeculativeThinkingConfig(negative_words=("moment",), word_boundary=True)
    same = KeywordPolicy.from_config(config)
    assert resolve_policy(config, same) is same
    assert resolve_policy(config) == same
    judge = JudgePolicy()
    assert resolve_policy(config, judge) is judge  # other policies are not about cue words
    with pytest.raises(ConfigError, match=r"negative_words=\('wait',.*\(config: \('moment',\)\)"):
        resolve_policy(config, KeywordPolicy(word_boundary=True))
    with pytest.raises(ConfigError, match="word_boundary=False"):
        resolve_policy(config, KeywordPolicy(negative_words=("moment",)))


def test_word_boundary_option_ignores_cues_inside_words() -> None:
    substring, whole = KeywordPolicy(), KeywordPolicy(word_boundary=True)
    state = BoundaryState("The others were awaiting.", "", 0, 0, 0, 0)
    assert substring.decide(state, None).delegate  # "another" no, "wait" inside "awaiting": yes
    assert not whole.decide(state, None).delegate


# ------------------------------------------------------------------ judge policy
class JudgingBackend(ScriptedBackend):
    """A scripted large model that answers the judging prompt with a known score."""

    def __init__(self, script: Sequence[str], scores: dict[str, int], default: int) -> None:
        super().__init__(script, name="judge")
        self.scores, self.default, self.judged = scores, default, list[str]()

    def next_piece(self, output: str) -> str:
        if output.endswith(JUDGE_PROMPT):
            body = output[: -len(JUDGE_PROMPT)]
            draft = body[body.rfind("\n\n", 0, len(body) - 2) + 2 :] if "\n\n" in body else body
            self.judged.append(draft)
            return str(next((s for w, s in self.scores.items() if w in draft), self.default))
        return super().next_piece(output)


def test_judge_policy_delegates_exactly_the_low_scored_drafts() -> None:
    small = ScriptedBackend(["A.\n\n", "B wrong.\n\n", "C.\n\n"])
    large = JudgingBackend(["La.\n\n", "Lb fixed.\n\n", "Lc.\n\n"], {"wrong": 2}, default=8)
    events = run(small, large, policy=JudgePolicy(threshold=7))
    (delegation,) = of_type(events, DelegationEvent)
    # Boundary 1: draft "B wrong.\n" scores 2 < 7: the large step "Lb fixed.\n" replaces it;
    # the small model ends the paragraph; boundary 2: "C.\n\n" scores 8: kept; then EOS.
    assert finish_of(events).text == "A.\n\nLb fixed.\n\nC.\n\n"
    assert delegation.small_draft == "B wrong.\n" and delegation.large_text == "Lb fixed.\n"
    assert delegation.score == 2.0 and delegation.reason == "score 2.00 < 7"
    assert large.judged == ["B wrong.\n", "C.\n\n"]  # the empty final draft is not judged
    # The keyword policy sees no cue in either draft: no delegation.
    assert (
        of_type(run(ScriptedBackend(small.script), ScriptedBackend(large.script)), DelegationEvent)
        == []
    )
    # Judging generated nothing the request pays as large output, and crops the cache back.
    assert finish_of(events).large.generated_tokens == 3
    session = large.sessions[0]
    assert session.truncations and all(t <= len(session.ids) for t in session.truncations)


def test_judge_threshold_zero_never_delegates_and_nine_delegates_all_but_nines() -> None:
    script_s, script_l = ["A.\n\n", "B b.\n\n", "C.\n\n"], ["X.\n\n", "Y y.\n\n", "Z.\n\n"]
    never = run(
        ScriptedBackend(script_s), JudgingBackend(script_l, {}, 0), policy=JudgePolicy(threshold=0)
    )
    assert of_type(never, DelegationEvent) == []
    always = run(
        ScriptedBackend(script_s), JudgingBackend(script_l, {}, 8), policy=JudgePolicy(threshold=9)
    )
    assert [d.score for d in of_type(always, DelegationEvent)] == [8.0, 8.0]


def test_judge_failure_is_a_large_model_fault_with_fallback() -> None:
    small = ScriptedBackend(["A.\n\n", "B.\n\n", "C.\n\n"])
    large = JudgingBackend(["X.\n\n"], {}, 8)
    large.fail_after = 0
    events = run(small, large, policy=JudgePolicy())
    assert finish_of(events).text == "A.\n\nB.\n\nC.\n\n" and finish_of(events).mode == "small"
    assert len([e for e in events if type(e).__name__ == "FallbackEvent"]) == 1


def test_expected_score_and_policy_validation() -> None:
    assert expected_score([0.0] * 9 + [1.0]) == 9.0
    assert expected_score([0.5, 0.5] + [0.0] * 8) == 0.5
    with pytest.raises(ValueError):
        expected_score([1.0])
    with pytest.raises(ConfigError, match="threshold"):
        JudgePolicy(threshold=10)
    assert len(DIGITS) == 10


# ------------------------------------------------------------------ budgets
SMALL4 = ["A.\n\n", "B b b.\n\n", "C c c c.\n\n", "D.\n\n"]
LARGE4 = ["X.\n\n", "Y y y.\n\n", "Z z.\n\n", "W.\n\n"]


def test_max_large_tokens_caps_the_large_model_then_small_mode() -> None:
    events = run(
        ScriptedBackend(SMALL4), ScriptedBackend(LARGE4), not_reasoning=True, max_large_tokens=5
    )
    finish = finish_of(events)
    # Large writes 3 tokens ("Y y y.") then the 2 left ("Z z."); the small model finishes each
    # paragraph; at the third boundary the budget is spent: small mode writes "D.".
    assert finish.text == "A.\n\nY y y.\n\nZ z. c c.\n\nD.\n\n"
    assert [d.large_tokens for d in of_type(events, DelegationEvent)] == [3, 2]
    (budget,) = of_type(events, BudgetEvent)
    assert (budget.budget, budget.limit, budget.spent) == ("max_large_tokens", 5, 5)
    assert budget.position == len("A.\n\nY y y.\n\nZ z. c c.\n\n")
    assert finish.large.generated_tokens == 5 and finish.mode == "small"
    assert finish.budgets == {"max_large_tokens": 5, "large_tokens": 5, "large_exhausted": True}


@settings(max_examples=60, deadline=None)
@given(small=SCRIPTS, large=SCRIPTS, limit=st.integers(0, 12), begin=st.booleans())
def test_large_model_never_generates_more_than_its_budget(
    small: list[str], large: list[str], limit: int, begin: bool
) -> None:
    events = run(
        ScriptedBackend(small),
        ScriptedBackend(large),
        not_reasoning=True,
        begin=begin,
        begin_tokens=4,
        max_large_tokens=limit,
    )
    finish = finish_of(events)
    assert finish.large.generated_tokens <= limit
    budget_events = of_type(events, BudgetEvent)
    assert len(budget_events) <= 1
    assert finish.budgets["large_exhausted"] == bool(budget_events)


def test_budget_unset_reports_nothing() -> None:
    assert finish_of(run(ScriptedBackend(SMALL4), ScriptedBackend(LARGE4))).budgets == {}


def test_max_reasoning_tokens_closes_the_reasoning_and_the_answer_follows() -> None:
    small = ScriptedBackend(["R1 r r r r r.\n\n", "Answer: 42.\n\n"])
    events = run(
        small,
        ScriptedBackend(["X.\n\n"]),
        mode="small",
        max_reasoning_tokens=4,
        reasoning_close="\n\nAnswer:",
    )
    finish = finish_of(events)
    assert finish.text == "R1 r r r\n\nAnswer: 42.\n\n"
    (budget,) = of_type(events, BudgetEvent)
    assert (budget.budget, budget.limit, budget.spent, budget.position) == (
        "max_reasoning_tokens",
        4,
        4,
        len("R1 r r r"),
    )
    assert finish.budgets == {
        "max_reasoning_tokens": 4,
        "reasoning_tokens": 4,
        "reasoning_exhausted": True,
    }


def test_thinking_budget_closes_with_the_answer_marker_in_speculative_mode() -> None:
    small = ScriptedBackend(["R1 r r.\n\n", "Wait r r r r.\n\n", "The answer is 42.\n\n"])
    large = ScriptedBackend(["L.\n\n", "Hmm l l l l.\n\n", "No.\n\n"])
    events = run(small, large, answer_marker="</think>", max_reasoning_tokens=7)
    finish = finish_of(events)
    # 5 small tokens ("R1", " r", " r.", "\n", "\n"); the draft gets the 2 tokens left
    # ("Wait r"), the keyword policy delegates it, the large model writes its 2 ("Hmm l"), then
    # the reasoning closes and the small model answers alone.
    (budget,) = of_type(events, BudgetEvent)
    assert budget.spent == 7 and finish.budgets["reasoning_tokens"] == 7
    reasoning, _, answer = finish.text.partition("\n</think>\n\n")
    assert answer == "The answer is 42.\n\n"
    assert reasoning == "R1 r r.\n\nHmm l"
    assert [d.large_tokens for d in of_type(events, DelegationEvent)] == [2]


def test_default_reasoning_close_without_a_marker() -> None:
    small = ScriptedBackend(["R1 r r r r r.\n\n", "x.\n\n"])
    events = run(small, ScriptedBackend(["X.\n\n"]), mode="small", max_reasoning_tokens=2)
    assert finish_of(events).text.startswith("R1 r\n\nFinal answer: ")


def test_answer_marker_written_by_the_model_ends_the_reasoning_count() -> None:
    small = ScriptedBackend(["R r.\n\n", "</think> ok.\n\n"])
    events = run(
        small,
        ScriptedBackend(["X.\n\n"]),
        mode="small",
        answer_marker="</think>",
        max_reasoning_tokens=50,
    )
    finish = finish_of(events)
    assert finish.text == "R r.\n\n</think> ok.\n\n"
    assert of_type(events, BudgetEvent) == []
    assert finish.budgets["reasoning_tokens"] == 4 + 1 and not finish.budgets["reasoning_exhausted"]


def test_budget_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_reasoning_tokens"):
        SpeculativeThinkingConfig(max_reasoning_tokens=0)
    with pytest.raises(ConfigError, match="max_large_tokens"):
        SpeculativeThinkingConfig(max_large_tokens=-1)
    with pytest.raises(ConfigError, match="judge_threshold"):
        SpeculativeThinkingConfig(judge_threshold=9.5)


def test_judge_delegation_keeps_the_large_step_without_choose_large() -> None:
    # The judge delegates a draft without cue words: the large step replaces it even when
    # choose_large is off (the cue labels would otherwise keep the rejected draft).
    small = ScriptedBackend(["A.\n\n", "B wrong.\n\n", "C.\n\n"])
    large = JudgingBackend(["La.\n\n", "Lb fixed.\n\n", "Lc.\n\n"], {"wrong": 2}, default=8)
    events = run(small, large, policy=JudgePolicy(threshold=7), choose_large=False)
    assert finish_of(events).text == "A.\n\nLb fixed.\n\nC.\n\n"
    assert [d.kept for d in of_type(events, DelegationEvent)] == ["large"]


def test_judge_without_logits_asks_for_one_greedy_token() -> None:
    from langchain_spthink.engine.judge import next_token_probabilities

    class Session:  # a remote-like session: no next_logits, samples with its own settings
        def __init__(self) -> None:
            self.ids = [1, 2]
            self.sampling = SamplingParams(temperature=0.9, seed=3)
            self.seen: list[float] = []

        def extend(self, ids: Sequence[int]) -> None:
            self.ids.extend(ids)

        def truncate(self, length: int) -> None:
            del self.ids[length:]

        def stream(self, max_new: int):  # type: ignore[no-untyped-def]
            self.seen.append(self.sampling.temperature)
            yield backend.encode("7")[0]

    backend = ScriptedBackend(["x"])
    session = Session()
    probs = next_token_probabilities(session, backend, "draft" + JUDGE_PROMPT, DIGITS)  # type: ignore[arg-type]
    assert session.seen == [0.0] and session.sampling.temperature == 0.9
    assert probs == [1.0 if d == "7" else 0.0 for d in DIGITS] and session.ids == [1, 2]
