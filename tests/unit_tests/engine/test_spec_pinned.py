r"""ALGORITHM.md's defaults and cue rule, pinned.

Every expected value below is written out literally, copied from the knob table and the "Cue
classification" and "Control loop" sections of ``docs/ALGORITHM.md``; nothing is taken from the
package's own constants. A change to a default in the code (or in the spec) fails here until
both agree again.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine import cues
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import (
    PRESETS,
    SpeculativeThinkingConfig,
    paper_instruct,
    paper_reasoning,
    preset,
)
from langchain_spthink.engine.events import DelegationEvent, FinishEvent, TextEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.policies import BoundaryState, KeywordPolicy, policy_from_config
from langchain_spthink.engine.sampling import SamplingParams

# ------------------------------------------------------------------ the spec, literally
SPEC_TRIGGERS = ("\n\n",)
SPEC_VERIFY_WORDS = ("verify", "think again", "recap", "check")
SPEC_NEGATIVE_WORDS = ("wait", "alternatively", "hold on", "another")
SPEC_POSITIVE_WORDS = ("yeah", "yes", "final answer", "confident")
SPEC_DRAFT_TOKENS = 20
SPEC_VERIFY_TOKENS = 125
SPEC_RECAP_PROMPT = "Let me check whether there are some wrong steps:"
SPEC_RECAP_AFTER_NEGATIVES = 15
SPEC_RECAP_AFTER_STEP = 5  # "recap threshold growth: +5 after each recap, capped at 30"
SPEC_RECAP_AFTER_MAX = 30
SPEC_RECAP_TOKENS = 125  # "125, +25 after each recap, capped at 200"
SPEC_RECAP_TOKENS_STEP = 25
SPEC_RECAP_TOKENS_MAX = 200
SPEC_THINK_WORD = None
SPEC_CHOOSE_LARGE = True
SPEC_BEGIN = False
SPEC_BEGIN_TOKENS = 100
SPEC_NOT_REASONING = False
SPEC_TEMPERATURE = 0.6
SPEC_TOP_P = 0.95
SPEC_TOP_K = 50
SPEC_TIME_OUT = None  # "time_out: off"

SPEC_DEFAULTS = {
    "triggers": SPEC_TRIGGERS,
    "verify_words": SPEC_VERIFY_WORDS,
    "negative_words": SPEC_NEGATIVE_WORDS,
    "positive_words": SPEC_POSITIVE_WORDS,
    "draft_tokens": SPEC_DRAFT_TOKENS,
    "verify_tokens": SPEC_VERIFY_TOKENS,
    "recap_prompt": SPEC_RECAP_PROMPT,
    "recap_after_negatives": SPEC_RECAP_AFTER_NEGATIVES,
    "recap_after_step": SPEC_RECAP_AFTER_STEP,
    "recap_after_max": SPEC_RECAP_AFTER_MAX,
    "recap_tokens": SPEC_RECAP_TOKENS,
    "recap_tokens_step": SPEC_RECAP_TOKENS_STEP,
    "recap_tokens_max": SPEC_RECAP_TOKENS_MAX,
    "think_word": SPEC_THINK_WORD,
    "choose_large": SPEC_CHOOSE_LARGE,
    "begin": SPEC_BEGIN,
    "begin_tokens": SPEC_BEGIN_TOKENS,
    "not_reasoning": SPEC_NOT_REASONING,
    "temperature": SPEC_TEMPERATURE,
    "top_p": SPEC_TOP_P,
    "top_k": SPEC_TOP_K,
    "time_out": SPEC_TIME_OUT,
}

# Knobs the spec lists as "where we deliberately do better" or not at all: off by default, so
# that the defaults run the paper's algorithm unchanged (substring cues, the keyword classifier,
# no extra caps or step timeouts).
EXTRAS_OFF = {
    "word_boundary": False,
    "policy": "keyword",
    "large_step_timeout": None,
    "max_large_tokens": None,
    "max_reasoning_tokens": None,
}


# ------------------------------------------------------------------ the default config
@pytest.mark.parametrize(("knob", "value"), sorted({**SPEC_DEFAULTS, **EXTRAS_OFF}.items()))
def test_default_config_is_the_papers(knob: str, value: object) -> None:
    assert getattr(SpeculativeThinkingConfig(), knob) == value


def test_reasoning_preset_is_the_default_config() -> None:
    expected = {**SPEC_DEFAULTS, **EXTRAS_OFF}
    for config in (preset("reasoning"), paper_reasoning(), PRESETS["reasoning"]()):
        assert {k: getattr(config, k) for k in expected} == expected
        assert config == SpeculativeThinkingConfig()


def test_instruct_preset_sets_begin_and_not_reasoning_only() -> None:
    # "configs for Qwen-2.5-7B-Instruct use begin=true, not_reasoning=true"
    expected = {**SPEC_DEFAULTS, **EXTRAS_OFF, "begin": True, "not_reasoning": True}
    for config in (preset("instruct"), paper_instruct(), PRESETS["instruct"]()):
        assert {k: getattr(config, k) for k in expected} == expected


def test_default_sampling_is_the_papers() -> None:
    expected = SamplingParams(temperature=0.6, top_p=0.95, top_k=50, seed=None)
    assert SpeculativeThinkingConfig().sampling() == expected
    assert (SamplingParams().temperature, SamplingParams().top_p, SamplingParams().top_k) == (
        0.6,
        0.95,
        50,
    )


# ------------------------------------------------------------------ cue words and classifier
def test_cue_module_word_lists_are_the_specs() -> None:
    assert cues.VERIFY_WORDS == ("verify", "think again", "recap", "check")
    assert cues.NEGATIVE_WORDS == ("wait", "alternatively", "hold on", "another")
    assert cues.POSITIVE_WORDS == ("yeah", "yes", "final answer", "confident")


def test_keyword_policy_defaults_are_the_specs() -> None:
    for policy in (KeywordPolicy(), policy_from_config(SpeculativeThinkingConfig())):
        assert isinstance(policy, KeywordPolicy)
        assert policy.verify_words == SPEC_VERIFY_WORDS
        assert policy.negative_words == SPEC_NEGATIVE_WORDS
        assert policy.positive_words == SPEC_POSITIVE_WORDS
        assert policy.word_boundary is False
        assert policy.needs_judge is False


# (text, label) by hand: pos = positive-word occurrences, neg = negative + verify occurrences,
# case-insensitive substrings; pos > neg: +1, neg > pos: -1, pos == neg > 0: -1, else 0.
CLASSIFY_CASES = [
    # pos > neg -> +1
    ("Yes, that is right.", 1),  # pos 1, neg 0
    ("I am confident this is the final answer.", 1),  # pos 2
    ("Yeah, yes, wait.", 1),  # pos 2 > neg 1
    ("yes yes yes, hold on, wait", 1),  # pos 3 > neg 2
    # neg > pos -> -1
    ("Wait, that is wrong.", -1),
    ("Alternatively, hold on.", -1),  # neg 2
    ("Another way: wait.", -1),  # neg 2
    ("Yes, but wait, let me check.", -1),  # pos 1 < neg 2 (check is a verify word)
    # pos == neg > 0 -> -1
    ("Yes, wait.", -1),
    ("I am confident; another idea though, yeah, alternatively.", -1),  # pos 2 == neg 2
    ("Yes, let me verify.", -1),  # a verify word ties with a positive word
    # no cue -> 0
    ("So x = 4.", 0),
    ("", 0),
    ("Hold the door; the final step; think.", 0),  # parts of multi-word cues do not count
    ("We are sure and certain.", 0),
    # verify words count as negative
    ("Let me verify.", -1),
    ("Think again about it.", -1),
    ("Recap: x = 2.", -1),
    ("Check the sum.", -1),
    # substrings (the reference behaviour), case-insensitive
    ("Her eyes were blue.", 1),  # "yes" inside "eyes"
    ("anotherly", -1),  # "another" inside a longer word
    ("They were awaiting us.", -1),  # "wait" inside "awaiting"
    ("It was rechecked.", -1),  # "check" inside "rechecked"
    ("WAIT", -1),
    ("FINAL ANSWER", 1),
    ("tHiNk AgAiN", -1),
    ("Yes-CHECK", -1),  # pos 1 == neg 1
]


@pytest.mark.parametrize(("text", "label"), CLASSIFY_CASES)
def test_classify_follows_the_specs_rule(text: str, label: int) -> None:
    assert cues.classify(text) == label


@pytest.mark.parametrize(("text", "label"), CLASSIFY_CASES)
def test_keyword_policy_delegates_exactly_on_a_cue(text: str, label: int) -> None:
    decision = KeywordPolicy().decide(BoundaryState(text, "", 0, 0, 0, 0), None)
    assert decision.delegate == (label != 0)


# ------------------------------------------------------------------ the recap schedule
# By hand from the control loop with the default knobs: the first recap comes after 15 negative
# steps with a budget of 125 tokens; each recap raises the threshold by 5 (capped at 30) and the
# budget by 25 (capped at 200).
EXPECTED_NEGATIVES_BEFORE_RECAP = [15, 20, 25, 30, 30, 30]
EXPECTED_RECAP_TOKENS = [125, 150, 175, 200, 200, 200]

# Scripted models (word tokens). Every small paragraph starts with "Wait" (a negative draft);
# every large paragraph starts with "another" (its replacement step is negative too, so each
# boundary adds exactly one negative step). The large paragraphs have 13 tokens, more than the
# 9 of the recap prompt, so a recap written after the prompt has text to write; the small
# paragraphs (17 tokens) are longer than any tail a recap leaves, so the small model always
# reaches the next "\n\n".
SMALL_PARAGRAPH = "Wait " + " ".join(f"a{i}" for i in range(1, 15)) + ".\n\n"
LARGE_PARAGRAPH = "another " + " ".join(f"r{i}" for i in range(1, 11)) + ".\n\n"


def test_recap_schedule_with_the_default_knobs() -> None:
    small = ScriptedBackend([SMALL_PARAGRAPH] * 1000, name="s")
    large = ScriptedBackend([LARGE_PARAGRAPH] * 1000, name="l")
    assert len(small.pieces(SMALL_PARAGRAPH)) == 17
    assert len(large.pieces(LARGE_PARAGRAPH)) == 13
    assert len(large.pieces(SPEC_RECAP_PROMPT)) == 9
    # Only the step length is shortened (2 tokens instead of 20) to keep the run small; every
    # recap knob is the default.
    config = SpeculativeThinkingConfig(draft_tokens=2)
    engine = SpeculativeEngine(small, large, config)
    request = Request(small.encode("Q: go"), large.encode("Q: go"), 100_000, SamplingParams(0.0))
    events = engine.generate(request)
    assert isinstance(events, Generator)  # stopped early below: closed by hand
    text, reflections, negatives_before, recaps, inserted = "", 0, [], [], []
    for event in events:
        assert not isinstance(event, FinishEvent), "the run ended before the sixth recap"
        if isinstance(event, TextEvent):
            text += event.text
            if event.author == "inserted":
                inserted.append(event.text)
        if not isinstance(event, DelegationEvent):
            continue
        if event.kind == "recap":
            # the prompt is inserted right before the recap, which the large model writes
            assert text[: event.position].endswith(SPEC_RECAP_PROMPT)
            assert text[event.position :] == event.large_text
            negatives_before.append(reflections)
            recaps.append(event.large_tokens)
            reflections = 0
            if len(recaps) == len(EXPECTED_RECAP_TOKENS):
                break
        else:
            assert event.kind == "reflection" and event.kept == "large"
            assert event.small_label == -1 and event.large_label == -1
            reflections += 1
    events.close()
    assert negatives_before == EXPECTED_NEGATIVES_BEFORE_RECAP
    assert recaps == EXPECTED_RECAP_TOKENS
    assert inserted == [SPEC_RECAP_PROMPT] * len(EXPECTED_RECAP_TOKENS)
