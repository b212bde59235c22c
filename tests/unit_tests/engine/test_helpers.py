"""Pure helpers: cue classifier, sampling warpers, config validation, shared output, detokenizer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_spthink import ConfigError, SpeculativeThinkingConfig, paper_instruct, preset
from langchain_spthink.engine.cues import classify, count_words
from langchain_spthink.engine.detok import IncrementalDetokenizer
from langchain_spthink.engine.output import SharedOutput
from langchain_spthink.engine.sampling import SamplingParams, sample_token, warp_logits


# ---------------------------------------------------------------- cues
@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("So x = 4.", 0),
        ("Wait, that is wrong.", -1),
        ("Yes, that works.", 1),
        ("Let me check this.", -1),  # verify words count as negative
        ("Yes, but wait.", -1),  # tie with cues -> negative
        ("Yes yes, wait.", 1),
        ("YEAH, I am CONFIDENT", 1),  # case-insensitive
        ("Her eyes were blue", 1),  # substring: "yes" in "eyes" (reference behaviour)
        ("anotherly", -1),  # substring: "another"
        ("", 0),
    ],
)
def test_classify_reference_cases(text: str, label: int) -> None:
    assert classify(text) == label


def test_word_boundary_option() -> None:
    assert classify("Her eyes were blue", word_boundary=True) == 0
    assert classify("anotherly", word_boundary=True) == 0
    assert classify("Hold on, another way", word_boundary=True) == -1
    assert count_words("final answer: final answer", ["final answer"], word_boundary=True) == 2


# Words of a generated step, each with its hand-counted (positive, negative) cue occurrences
# under ALGORITHM.md's default lists (verify words count as negative; substring matching).
# Joined by spaces, no cue can span two parts (no part ends in "final", "hold" or "think"), so
# a text's counts are the sums over its parts.
PART_CUES: dict[str, tuple[int, int]] = {
    "yeah": (1, 0),
    "yes": (1, 0),
    "final answer": (1, 0),
    "confident": (1, 0),
    "eyes": (1, 0),  # "yes" inside a word
    "wait": (0, 1),
    "alternatively": (0, 1),
    "hold on": (0, 1),
    "another": (0, 1),
    "awaiting": (0, 1),  # "wait" inside a word
    "verify": (0, 1),
    "think again": (0, 1),
    "recap": (0, 1),
    "check": (0, 1),
    "rechecked": (0, 1),  # "check" inside a word
    "yes-check": (1, 1),
    "x": (0, 0),
    "2": (0, 0),
    "the answer": (0, 0),
    "hold": (0, 0),
    " ": (0, 0),
}


# deadline=None: hypothesis' default 200 ms per example is a wall-time limit that a busy CPU
# can exceed; these are pure functions, so only the outcome matters.
@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(PART_CUES)), st.sampled_from(["lower", "upper", "title"]))
    )
)
def test_classify_agrees_with_hand_counted_cues(parts: list[tuple[str, str]]) -> None:
    text = " ".join(getattr(part, case)() for part, case in parts)
    pos = sum(PART_CUES[part][0] for part, _ in parts)
    neg = sum(PART_CUES[part][1] for part, _ in parts)
    expected = 1 if pos > neg else -1 if neg > pos else -1 if pos > 0 else 0
    assert classify(text) == expected, (text, pos, neg)


@settings(max_examples=200, deadline=None)  # as above
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_classify_is_total_and_bounded(text: str) -> None:
    assert classify(text) in (-1, 0, 1)
    assert classify(text, word_boundary=True) in (-1, 0, 1)


# ---------------------------------------------------------------- sampling
def test_warpers_match_transformers() -> None:
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(0)
    for temperature, top_k, top_p in [(0.6, 50, 0.95), (1.0, 0, 0.5), (1.3, 5, 1.0), (0.2, 1, 0.9)]:
        logits = torch.randn(1, 300, generator=gen) * 3
        ref = TemperatureLogitsWarper(temperature)(None, logits.clone())  # type: ignore[arg-type]
        if top_k:
            ref = TopKLogitsWarper(top_k)(None, ref)  # type: ignore[arg-type]
        if top_p < 1:
            ref = TopPLogitsWarper(top_p)(None, ref)  # type: ignore[arg-type]
        ours = warp_logits(logits[0], SamplingParams(temperature, top_p, top_k))
        assert torch.equal(torch.isinf(ours), torch.isinf(ref[0]))
        torch.testing.assert_close(ours[~torch.isinf(ours)], ref[0][~torch.isinf(ref[0])])


def test_greedy_and_seeded_sampling() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    assert sample_token(logits, SamplingParams(temperature=0)) == 1
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=7)
    draws = [sample_token(logits, params, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    g = torch.Generator().manual_seed(1)
    counts = torch.bincount(
        torch.tensor([sample_token(logits, params, g) for _ in range(4000)]), minlength=4
    )
    expected = logits.softmax(-1) * 4000
    assert torch.all((counts - expected).abs() < 5 * expected.sqrt() + 5)
    top1 = SamplingParams(temperature=1.0, top_p=1.0, top_k=1)
    assert {sample_token(logits, top1, g) for _ in range(50)} == {1}


# ---------------------------------------------------------------- config
def test_config_defaults_are_the_papers() -> None:
    cfg = SpeculativeThinkingConfig()
    assert cfg.triggers == ("\n\n",) and cfg.draft_tokens == 20 and cfg.verify_tokens == 125
    assert (
        cfg.recap_after_negatives == 15 and cfg.recap_tokens == 125 and cfg.recap_tokens_max == 200
    )
    assert cfg.recap_after_max == 30 and cfg.recap_tokens_step == 25 and cfg.recap_after_step == 5
    assert cfg.recap_prompt == "Let me check whether there are some wrong steps:"
    assert cfg.choose_large and not cfg.begin and cfg.begin_tokens == 100 and not cfg.not_reasoning
    assert (cfg.temperature, cfg.top_p, cfg.top_k) == (0.6, 0.95, 50)
    assert cfg.think_word is None and cfg.time_out is None
    instruct = paper_instruct()
    assert instruct.begin and instruct.not_reasoning
    assert preset("instruct", draft_tokens=5).draft_tokens == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("draft_tokens", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("temperature", -1),
        ("triggers", ()),
        ("triggers", ("",)),
        ("negative_words", ("wait", " ")),
        ("recap_tokens_max", 10),
        ("fallback", "retry"),
        ("time_out", 0),
        ("unknown_knob", 1),
    ],
)
def test_config_errors_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        SpeculativeThinkingConfig(**{field: value})
    assert field in str(info.value) or "recap_tokens_max" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_config_is_frozen_and_unknown_preset_fails() -> None:
    cfg = SpeculativeThinkingConfig()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.draft_tokens = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="preset"):
        preset("fast")
    assert cfg.with_updates(draft_tokens=3).draft_tokens == 3


# ---------------------------------------------------------------- shared output
def test_stop_string_split_over_appends_is_held_back() -> None:
    out = SharedOutput(["STOP"], share_ids=False)
    emitted = ""
    for piece in ["Hello S", "TO", "P world"]:
        hit = out.append("small", piece, [])
        emitted += "".join(e.text for e in out.drain(final=False))
        if hit:
            break
    assert hit and out.text == "Hello "
    emitted += "".join(e.text for e in out.drain(final=True))
    assert emitted == "Hello "


def test_output_segments_by_author() -> None:
    out = SharedOutput(share_ids=True)
    out.append("small", "ab", [1, 2])
    out.append("large", "cd", [3])
    out.append("small", "e", [4])
    assert out.segments() == [("small", "ab"), ("large", "cd"), ("small", "e")]
    assert [(e.author, e.text) for e in out.drain(final=True)] == out.segments()
    assert out.ids == [1, 2, 3, 4] and out.version == 3


# ---------------------------------------------------------------- detokenizer
def test_detokenizer_holds_back_partial_characters() -> None:
    raw = "é🙂".encode()
    table = {i: bytes([b]) for i, b in enumerate(raw)}

    def decode(ids: list[int]) -> str:
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    detok = IncrementalDetokenizer(decode)  # type: ignore[arg-type]
    deltas = [detok.push(i) for i in range(len(raw))]
    assert deltas == ["", "é", "", "", "", "🙂"]
    assert detok.flush() == ""


def test_request_generator_is_seeded_or_absent() -> None:
    from langchain_spthink.engine.sampling import request_generator

    assert request_generator(SamplingParams(temperature=0.0, seed=3)) is None
    params = SamplingParams(temperature=1.0, seed=3)
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    runs = [
        [sample_token(logits, params, g) for _ in range(20)]
        for g in (request_generator(params), request_generator(params))
    ]
    assert runs[0] == runs[1]
    unseeded = SamplingParams(temperature=1.0)
    assert request_generator(unseeded) is not None


def test_end_texts_end_only_their_authors_run() -> None:
    out = SharedOutput(share_ids=False, end_texts={"large": ["\nQ:"]})
    assert out.append("small", "a\nQ: b", []) is None  # the small model may write it
    assert out.append("large", "\nQ", []) is None  # split over a hand-off: not its own run
    out2 = SharedOutput(["STOP"], share_ids=False, end_texts={"large": ["\nQ:"]})
    emitted = ""
    for piece in ["x", "y\n", "Q", ": next"]:
        ended = out2.append("large", piece, [])
        emitted += "".join(e.text for e in out2.drain(final=False))
        if ended:
            break
    assert ended == "eos" and out2.text == "xy"
    assert emitted + "".join(e.text for e in out2.drain(final=True)) == "xy"
    # A request stop string keeps its own reason and the earliest cut wins.
    out3 = SharedOutput(["STOP"], share_ids=False, end_texts={"large": ["\nQ:"]})
    assert out3.append("large", "a STOP b\nQ:", []) == "stop" and out3.text == "a "


def test_end_text_at_the_start_of_a_run_after_a_paragraph_break() -> None:
    # The large model's step starts right after the small model's "\n\n" with a new question:
    # the end text's newline is the small model's, the cut keeps it.
    out = SharedOutput(share_ids=False, end_texts={"large": ["\nQuestion:"]})
    assert out.append("small", "15% of 80 is 12.\n\n", []) is None
    assert out.append("large", "Question: What is 10% of 120?", []) == "eos"
    assert out.text == "15% of 80 is 12.\n\n"
    assert out.segments() == [("small", "15% of 80 is 12.\n\n")]
    # Mid-line, the same words are the model's text, not the end of its turn.
    out2 = SharedOutput(share_ids=False, end_texts={"large": ["\nQuestion:"]})
    out2.append("small", "so", [])
    assert out2.append("large", "Question: why?", []) is None
