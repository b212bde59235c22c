"""The pure decision functions of the control loop, with hand-computed expectations."""

from __future__ import annotations

import pytest

from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.decisions import (
    BEGIN_SHARE,
    Recap,
    begin_budget,
    carry_text,
    ids_covering,
    keep_large,
    label,
    marker_end,
    step_seed,
    trigger_end,
    wants_verify,
)

CFG = SpeculativeThinkingConfig()


# ------------------------------------------------------------------ begin
@pytest.mark.parametrize(
    ("begin_tokens", "max_tokens", "expected"),
    [(100, 512, 100), (100, 20, 10), (100, 201, 100), (100, 199, 99), (5, 1, 0), (5, 2, 1)],
)
def test_begin_budget_is_capped_at_half_the_budget(
    begin_tokens: int, max_tokens: int, expected: int
) -> None:
    assert BEGIN_SHARE == 2
    assert begin_budget(begin_tokens, max_tokens) == expected


# ------------------------------------------------------------------ labels and verify
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain step", 0),
        ("Yes, that works", 1),
        ("Wait, no", -1),
        ("yes but wait", -1),  # a tie with cues is negative
        ("let me check: yes, yes", 1),  # 2 positive > 1 verify
        ("eyes", 1),  # substring matching, as the reference
    ],
)
def test_label_under_the_default_words(text: str, expected: int) -> None:
    assert label(text, CFG) == expected


def test_label_follows_the_configs_words_and_word_boundary() -> None:
    cfg = CFG.with_updates(positive_words=("ok",), negative_words=("hmm",), verify_words=())
    assert (label("ok ok hmm", cfg), label("hmm", cfg), label("wait", cfg)) == (1, -1, 0)
    bounded = CFG.with_updates(word_boundary=True)
    assert (label("eyes", bounded), label("eyes", CFG)) == (0, 1)


def test_wants_verify_needs_a_verify_word_and_verify_tokens() -> None:
    assert wants_verify("Let me check that.", CFG)
    assert wants_verify("RECAP:", CFG)
    assert not wants_verify("Wait, no.", CFG)
    assert not wants_verify("Let me check that.", CFG.with_updates(verify_tokens=0))
    assert not wants_verify("checks", CFG.with_updates(word_boundary=True))


# ------------------------------------------------------------------ keep-large rule
@pytest.mark.parametrize(
    ("small", "large", "choose_large", "not_reasoning", "expected"),
    [
        (-1, -1, True, False, True),  # choose_large keeps the large step whatever the labels
        (1, 1, True, True, True),
        (None, 1, False, True, True),  # no draft (not_reasoning + choose_large skipped it)
        (0, -1, False, False, True),  # a policy delegated a neutral draft: its call decides
        (0, 1, False, True, False),  # not_reasoning: neutral draft, labels do not disagree
        (-1, 0, False, False, True),  # s < 0 <= l
        (-1, 1, False, False, True),
        (-1, -1, False, False, False),
        (1, -1, False, False, True),  # s > 0 > l
        (1, 0, False, False, False),
        (1, 1, False, False, False),
    ],
)
def test_keep_large_rule(
    small: int | None, large: int, choose_large: bool, not_reasoning: bool, expected: bool
) -> None:
    got = keep_large(small, large, choose_large=choose_large, not_reasoning=not_reasoning)
    assert got is expected


# ------------------------------------------------------------------ recap schedule
def test_recap_schedule_grows_to_its_caps() -> None:
    recap = Recap.first(CFG)
    assert recap == Recap(125, 15)
    assert not recap.due(14) and recap.due(15) and recap.due(16)
    schedule = [recap]
    for _ in range(5):
        schedule.append(schedule[-1].next(CFG))
    assert schedule == [
        Recap(125, 15),
        Recap(150, 20),
        Recap(175, 25),
        Recap(200, 30),
        Recap(200, 30),
        Recap(200, 30),
    ]
    assert not schedule[1].due(19) and schedule[1].due(20)


def test_recap_schedule_follows_the_config() -> None:
    cfg = CFG.with_updates(
        recap_tokens=10,
        recap_tokens_step=7,
        recap_tokens_max=20,
        recap_after_negatives=2,
        recap_after_step=0,
        recap_after_max=2,
    )
    assert Recap.first(cfg).next(cfg).next(cfg) == Recap(20, 2)
    assert Recap.first(cfg).next(cfg) == Recap(17, 2)


# ------------------------------------------------------------------ triggers and rounds
def test_trigger_end_finds_the_first_complete_trigger() -> None:
    assert trigger_end("a\n\nb\n\n", ("\n\n",)) == 3
    assert trigger_end("a\n\nb\n\n", ("\n\n",), 2) == 6
    assert trigger_end("abc", ("\n\n",)) is None
    # Two triggers: the one that ends first wins, whatever their order in the config.
    assert trigger_end("x. \n\ny", ("\n\n", ". ")) == 3
    assert trigger_end("x\n\n. y", (". ", "\n\n")) == 3
    assert trigger_end("", ("\n\n",)) is None


def test_carry_text_is_the_round_after_its_last_trigger() -> None:
    assert carry_text("step one\n\nstep two\n\nhalf", ("\n\n",)) == "half"
    assert carry_text("no trigger yet", ("\n\n",)) == "no trigger yet"
    assert carry_text("ends on one\n\n", ("\n\n",)) == ""
    assert carry_text("a. b\n\nc. d", ("\n\n", ". ")) == "d"
    assert carry_text("", ("\n\n",)) == ""


def test_ids_covering_counts_the_ids_that_write_up_to_an_offset() -> None:
    ends = [2, 5, 5, 9]  # an id may write no text
    assert ids_covering(ends, 1) == 1
    assert ids_covering(ends, 2) == 1
    assert ids_covering(ends, 3) == 2
    assert ids_covering(ends, 5) == 2
    assert ids_covering(ends, 9) == 4
    assert ids_covering(ends, 10, default=3) == 4
    with pytest.raises(ValueError, match="offset 10"):
        ids_covering(ends, 10)


def test_marker_end_finds_a_marker_split_over_the_seam() -> None:
    assert marker_end("", "abc</think>x", "</think>") == 11
    assert marker_end("reasoning </th", "ink> answer", "</think>") == 4
    assert marker_end("</think> before", "after", "</think>") is None  # not written by the step
    assert marker_end("abc", "no marker", "</think>") is None
    assert marker_end("ab", "c|d", "|") == 2  # one-character marker: no tail
    assert marker_end("a|", "b", "|") is None


# ------------------------------------------------------------------ seeds
def test_step_zero_keeps_the_session_seeds() -> None:
    assert step_seed(3, "small", 0) == 3
    assert step_seed(3, "large", 0) == 4
    assert step_seed(None, "small", 0) is None
    assert step_seed(None, "large", 7) is None


def test_later_steps_get_their_own_stable_seeds() -> None:
    import zlib

    assert step_seed(3, "small", 1) == zlib.crc32(b"3:small:1") & 0x7FFFFFFF
    assert step_seed(3, "large", 2) == zlib.crc32(b"3:large:2") & 0x7FFFFFFF
    seeds = {step_seed(3, role, k) for role in ("small", "large") for k in range(50)}
    assert len(seeds) == 100  # no two steps of a request share a seed
    assert step_seed(3, "small", 5) == step_seed(3, "small", 5)  # reproducible
    assert step_seed(3, "small", 5) != step_seed(4, "small", 5)
    assert all(0 <= s < 2**31 for s in seeds if s is not None)
