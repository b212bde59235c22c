"""Draft-verified large steps (issue #19) on scripted models: same output, fewer large passes.

A scripted model is greedy, so verifying the small model's proposals must change nothing the
user sees: the text, every event (but timings) and the finish are those of plain decoding
(``verified_large=False``). What changes is the large model's bookkeeping: one decode pass per
verification instead of one per token, and the proposals/acceptances it counted. The
expectations here are independent of the engine: the plain run, the scripts themselves, and
counts worked out by hand.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as stat
from hypothesis import strategies as st

from langchain_spthink import (
    DelegationEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.scripted import ScriptedBackend, ScriptedSession
from langchain_spthink.engine.decisions import PROBE_EVERY, next_proposal_length
from langchain_spthink.engine.events import BudgetEvent, Event, FallbackEvent, ModelUsage
from langchain_spthink.engine.handoff import resync
from langchain_spthink.engine.steps import _Track
from langchain_spthink.engine.verified import Proposer, ProposerFault, verified_stream
from tests.unit_tests.test_reliability_faults import check_fallback

GREEDY = SamplingParams(temperature=0.0)
POOL = ThreadPoolExecutor(2)
WORDS = ["Wait,", "check", "yes", "so", "x", "y", "Hmm", "alternatively", "4.", "STOP", "</think>"]
paragraph = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7).map(" ".join)
script = st.lists(paragraph.map(lambda p: p + "\n\n"), min_size=1, max_size=6)
configs = st.fixed_dictionaries(
    {
        "draft_tokens": st.integers(1, 4),
        "verify_tokens": st.integers(0, 4),
        "begin": st.booleans(),
        "begin_tokens": st.integers(1, 5),
        "not_reasoning": st.booleans(),
        "choose_large": st.booleans(),
        "recap_after_negatives": st.integers(1, 2),
        "recap_after_step": st.just(0),
        "recap_tokens": st.integers(1, 6),
        "recap_tokens_step": st.just(1),
        "recap_tokens_max": st.just(8),
        "recap_prompt": st.just("RECAP"),
        "max_large_tokens": st.none() | st.integers(0, 12),
        "max_reasoning_tokens": st.none() | st.integers(1, 20),
        "proposal_tokens": st.integers(1, 5),
    }
)


def run(
    small: ScriptedBackend,
    large: ScriptedBackend,
    cfg: dict[str, Any],
    *,
    max_tokens: int = 200,
    stop: tuple[str, ...] = (),
    answer_marker: str | None = None,
    concurrent: bool = False,
) -> list[Event]:
    """All events of one greedy request (prompt ``Q: go``), the finish last.

    ``concurrent``: the large model's steps of delegated boundaries run in a worker thread
    while the small model drafts (``concurrent_drafts``).
    """
    extra: dict[str, Any] = {"executor": POOL, "concurrent_drafts": True} if concurrent else {}
    engine = SpeculativeEngine(small, large, SpeculativeThinkingConfig(**cfg), **extra)
    sp, lp = small.encode("Q: go"), large.encode("Q: go")
    request = Request(sp, lp, max_tokens, GREEDY, stop, answer_marker=answer_marker)
    events = list(engine.generate(request))
    assert isinstance(events[-1], FinishEvent)
    return events


def visible(events: list[Event], *, generated: bool = True) -> list[object]:
    """What a user sees of a run: every event but timings, and the finish's outcome.

    ``generated``: include the large model's generated tokens (not with concurrent drafts: a
    plain run's discarded concurrent steps count only if they finished before the request did,
    and a verified run starts none).
    """
    out: list[object] = []
    for e in events:
        if isinstance(e, TextEvent | FallbackEvent | BudgetEvent):
            out.append(e)
        elif isinstance(e, DelegationEvent):
            out.append(dataclasses.replace(e, seconds=0.0))
        elif isinstance(e, FinishEvent):
            out.append((e.text, e.stop_reason, e.mode, e.delegations, e.budgets))
            out.append((e.small.kept_tokens, e.large.kept_tokens))
            if generated:
                out.append(e.large.generated_tokens)
    return out


def verifications(backend: ScriptedBackend) -> list[tuple[list[int], list[int]]]:
    return [v for s in backend.sessions for v in s.verifications]


def check_counters(finish: FinishEvent, large: ScriptedBackend) -> None:
    """The large model's counters are those of its recorded verifications."""
    done = verifications(large)
    usage = finish.large
    assert usage.decode_passes == len(done)
    assert usage.proposed_tokens == sum(len(p) for p, _ in done)
    agreeing = 0
    for proposal, new in done:
        n = next((i for i, (a, b) in enumerate(zip(proposal, new, strict=False)) if a != b), None)
        agreeing += len(new) - 1 if n is None else n
        assert new[: len(new) - 1] == proposal[: len(new) - 1]  # an accepted prefix + one id
    assert usage.accepted_tokens == agreeing
    assert usage.decode_passes <= usage.generated_tokens
    if usage.generated_tokens:  # the large model wrote: it verified (no plain pass)
        assert done


# ------------------------------------------------------------------ equivalence with plain
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    small_script=script,
    large_script=script,
    cfg=configs,
    max_tokens=st.integers(1, 50),
    stop=st.sampled_from([(), ("STOP",)]),
    marker=st.sampled_from([None, "</think>"]),
    shared=st.integers(0, 3),
    concurrent=st.booleans(),
)
def test_verified_run_equals_plain_run(
    small_script: list[str],
    large_script: list[str],
    cfg: dict[str, Any],
    max_tokens: int,
    stop: tuple[str, ...],
    marker: str | None,
    shared: int,
    concurrent: bool,
) -> None:
    # ``shared`` paragraphs in common: proposals are then (partly) accepted.
    large_script = small_script[:shared] + large_script
    outcomes = []
    for verified in (True, False):
        small, large = ScriptedBackend(small_script, name="s"), ScriptedBackend(large_script)
        events = run(
            small,
            large,
            {**cfg, "verified_large": verified},
            max_tokens=max_tokens,
            stop=stop,
            answer_marker=marker,
            concurrent=concurrent,
        )
        finish = events[-1]
        assert isinstance(finish, FinishEvent)
        assert finish.large_decoding == ("verified" if verified else "plain")
        if verified:
            check_counters(finish, large)
            usage = finish.large
            stat("several ids a pass" if usage.decode_passes < usage.generated_tokens else "one")
            stat("a proposal accepted" if usage.accepted_tokens else "none accepted")
        else:
            assert not verifications(large)
            assert finish.large.decode_passes == finish.large.generated_tokens
            assert finish.large.proposed_tokens == finish.large.accepted_tokens == 0
        outcomes.append(visible(events, generated=not concurrent))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_script=script, large_script=script, cfg=configs, data=st.data())
def test_large_fault_during_verification_falls_back_once(
    small_script: list[str], large_script: list[str], cfg: dict[str, Any], data: st.DataObject
) -> None:
    cfg = {**cfg, "max_large_tokens": None, "max_reasoning_tokens": None}
    clean_large = ScriptedBackend(large_script)
    clean = run(ScriptedBackend(small_script, name="s"), clean_large, cfg)[-1]
    assert isinstance(clean, FinishEvent)
    needed = clean_large.tokens_sampled
    fail_after = data.draw(st.integers(0, needed + 1), label="fail_after")
    large = ScriptedBackend(large_script, fail_after=fail_after)
    events = run(ScriptedBackend(small_script, name="s"), large, cfg)
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    if fail_after >= needed:
        assert finish.text == clean.text
        assert not any(isinstance(e, FallbackEvent) for e in events)
    else:
        check_fallback(events, finish.text, clean.text, small_script, "RuntimeError")


def test_small_model_failing_while_proposing_is_the_small_models_error() -> None:
    # The small model fails after each possible number of tokens; some of them fall in a
    # proposal for the large model (the error then comes through ProposerFault). Each must
    # surface as the small model's own error, never as a fallback to... the small model.
    scripts = ["a\n\n", "b c d e f g h\n\n", "i j k l\n\n"]
    cfg = {"draft_tokens": 2, "verify_tokens": 0, "not_reasoning": True, "proposal_tokens": 2}
    clean_small = ScriptedBackend(scripts, name="s")
    run(clean_small, ScriptedBackend(scripts), cfg)
    in_proposal = 0
    for fail_after in range(clean_small.tokens_sampled):
        small = ScriptedBackend(scripts, name="s", fail_after=fail_after)
        large = ScriptedBackend(scripts)
        engine = SpeculativeEngine(small, large, SpeculativeThinkingConfig(**cfg))
        prompt = small.encode("Q: go")
        events: list[Event] = []
        with pytest.raises(RuntimeError, match="^s failed") as raised:
            for e in engine.generate(Request(prompt, prompt, 50, GREEDY)):
                events.append(e)
        assert not any(isinstance(e, FallbackEvent) for e in events)
        if isinstance(raised.value.__cause__, ProposerFault):
            in_proposal += 1
    assert in_proposal > 0


# ------------------------------------------------------------------ counters by hand
# The large model opens (begin, 6 tokens: begin_budget = min(6, max_tokens // 2)); both scripts
# start "a b c d", then differ. No draft precedes the opening, so every proposal comes from the
# small model (proposal_tokens=2 at first). Worked by hand (word tokens):
#   pass 1: room 6, propose [a, b]              -> both accepted + c   -> [a, b, c]
#   pass 2: length 2+2=4, room 3, propose 2: [d, e] -> d ok, e != X    -> [d, X]
#   pass 3: length 4-1=3, room 1, propose 0: []  -> the large model's own id -> [Y]
# Then the small model carries on at offset 6 of its paragraph: "\n\n", EOS.
SMALL = ["a b c d e f\n\n"]
LARGE = ["a b c d X Y Z\n\n"]
HAND = {"begin": True, "begin_tokens": 6, "draft_tokens": 1, "verify_tokens": 0}


def hand_run(**over: Any) -> tuple[FinishEvent, ScriptedBackend]:
    small = ScriptedBackend(SMALL, name="s", **over.pop("small", {}))
    large = ScriptedBackend(LARGE, name="l", **over.pop("large", {}))
    finish = run(small, large, {**HAND, "proposal_tokens": 2, **over}, max_tokens=12)[-1]
    assert isinstance(finish, FinishEvent)
    return finish, large


def test_counters_of_a_hand_worked_verified_opening() -> None:
    finish, large = hand_run()
    assert finish.text == "a b c d X Y\n\n"
    w = large.encode
    assert verifications(large) == [(w("a b"), w("a b c")), (w(" d e"), w(" d X")), ([], w(" Y"))]
    usage = finish.large
    assert (usage.generated_tokens, usage.kept_tokens, usage.decode_passes) == (6, 6, 3)
    assert (usage.proposed_tokens, usage.accepted_tokens) == (4, 3)
    assert usage.acceptance_rate == 0.75
    # The small model's 4 proposed tokens are passes of its own, not output it generated.
    assert finish.small.decode_passes - finish.small.generated_tokens == 4
    assert finish.large_decoding == "verified"
    assert finish.large_decoding_reason == "l verifies tokens proposed by s"
    assert finish.extra["proposal_seconds"] >= 0.0


def test_a_delegated_step_verifies_the_small_draft_first() -> None:
    # not_reasoning, choose_large=False: at each boundary both models draft a step
    # (draft_tokens=3) and the labels decide. The small draft [a, b, c] is the large model's
    # first proposal, cut to room - 1 = 2: [a, b] accepted + X; nothing is asked of the small
    # model for it. At the second boundary (after "d e f\n\n") the small draft is empty (EOS):
    # the small model proposes one token (its EOS) and the large model writes EOS too.
    small = ScriptedBackend(["p\n\n", "a b c d e f\n\n"], name="s")
    large = ScriptedBackend(["p\n\n", "a b X\n\n"], name="l")
    cfg = {"draft_tokens": 3, "verify_tokens": 0, "not_reasoning": True, "choose_large": False}
    events = run(small, large, {**cfg, "proposal_tokens": 4})
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert finish.text == "p\n\na b c d e f\n\n"  # equal labels: the small step is kept
    w = large.encode
    assert verifications(large) == [(w("a b"), w("a b X")), ([0], [0, 0])]
    first, second = [e for e in events if isinstance(e, DelegationEvent)]
    assert (first.small_draft, first.large_text) == ("a b c", "a b X")
    assert (second.small_draft, second.large_text) == ("", "")
    assert finish.small.decode_passes - finish.small.generated_tokens == 1
    usage = finish.large
    assert (usage.decode_passes, usage.generated_tokens) == (2, 4)
    assert (usage.proposed_tokens, usage.accepted_tokens) == (3, 3)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"verified_large": False}, "verified_large is off in the config"),
        ({"small": {"tokenizer": "char"}}, "s and l have different tokenizers"),
        ({"large": {"verifies": False}}, "l cannot score given tokens"),
    ],
)
def test_plain_large_decoding_and_why(over: dict[str, Any], reason: str) -> None:
    finish, large = hand_run(**over)
    assert finish.text == "a b c d X Y\n\n"
    assert finish.large_decoding == "plain"
    assert finish.large_decoding_reason.startswith(reason)
    assert "proposal_seconds" not in finish.extra
    usage = finish.large
    assert usage.decode_passes == usage.generated_tokens == 6
    assert usage.proposed_tokens == usage.accepted_tokens == 0
    assert usage.acceptance_rate is None
    assert finish.small.decode_passes == finish.small.generated_tokens
    assert not verifications(large)
    if "large" in over:
        assert all(type(s) is ScriptedSession for s in large.sessions)


def test_verified_stream_closed_early_leaves_the_large_session_at_what_it_yielded() -> None:
    # The large model accepts a whole 4-token proposal + 1 (5 ids in one verification); the
    # consumer takes 2 and closes the stream: the session holds prompt + those 2 only, as
    # after a plain stream.
    small = ScriptedBackend(["a b c d e f\n\n"], name="s")
    large = ScriptedBackend(["a b c d e f\n\n"], name="l")
    prompt = large.encode("Q: go")
    tracks = []
    for role, backend in (("small", small), ("large", large)):
        session = backend.new_session(prompt, GREEDY)
        tracks.append(_Track(role, backend, session, len(prompt), ModelUsage(), GREEDY))
    small_track, large_track = tracks
    proposer = Proposer(small_track, 4, lambda: 0.0, length=4)
    stream = verified_stream(large_track, proposer, budget=10)
    taken = [next(stream), next(stream)]
    assert verifications(large) == [(large.encode("a b c d"), large.encode("a b c d e"))]
    stream.close()
    assert taken == large.encode("a b")
    assert list(large_track.session.ids) == prompt + taken
    # Budget 3: the proposal is cut to 2 (room for the large model's own id). The caller syncs
    # the small model's scratch session to the output first (the engine's _sync).
    resync(small_track.session, len(prompt), taken)
    stream = verified_stream(large_track, proposer, budget=3)
    assert list(stream) == large.encode(" c d e")
    assert verifications(large)[-1] == (large.encode(" c d"), large.encode(" c d e"))
    assert list(large_track.session.ids) == prompt + large.encode("a b c d e")


def test_next_proposal_length() -> None:
    assert next_proposal_length(8, 8, 8, 8) == 10  # fully accepted: +2
    assert next_proposal_length(15, 15, 15, 8) == 16  # capped at 2 * start
    assert next_proposal_length(16, 16, 16, 8) == 16
    assert next_proposal_length(8, 8, 3, 8) == 4  # a rejection: one more than accepted
    assert next_proposal_length(8, 8, 7, 8) == 7  # ... and at least 1 less than before
    assert next_proposal_length(2, 2, 0, 8) == 1
    assert next_proposal_length(1, 1, 0, 8) == 0  # then no proposals: plain passes
    assert next_proposal_length(0, 0, 0, 8) == 0
    assert next_proposal_length(0, 5, 5, 8) == 2  # a draft fully accepted restarts them
    assert next_proposal_length(5, 0, 0, 8) == 5  # nothing proposed: unchanged
    assert next_proposal_length(5, 3, 3, 8) == 7  # a short (room-capped) full accept grows too


def test_proposals_stop_for_a_disagreeing_pair_and_probe_again() -> None:
    proposer = Proposer(None, 8, lambda: 0.0, length=1)  # type: ignore[arg-type]  # no proposing
    proposer.next_length(1, 0)  # rejected at length 1: proposals stop
    lengths = []
    for _ in range(PROBE_EVERY):
        lengths.append(proposer.length)
        proposer.next_length(0, 0)  # a plain pass
    assert lengths == [0] * PROBE_EVERY and proposer.length == 1  # the probe
    proposer.next_length(1, 1)  # the probe accepted: proposals grow again
    assert proposer.length == 3
