"""Every branch of the control loop against scripted models whose outputs are known by hand."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from langchain_spthink import (
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    InvalidRequestError,
    LargeModelError,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine.events import Event
from langchain_spthink.errors import HandoffError

GREEDY = SamplingParams(temperature=0.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    small: ScriptedBackend,
    large: ScriptedBackend | None,
    *,
    max_tokens: int = 200,
    stop: Sequence[str] = (),
    mode: str = "speculative",
    clock: FakeClock | None = None,
    **cfg: object,
) -> tuple[str, list[Event]]:
    config = SpeculativeThinkingConfig(**{"draft_tokens": 3, "verify_tokens": 0, **cfg})
    kwargs = {"clock": clock} if clock else {}
    engine = SpeculativeEngine(small, large, config, **kwargs)  # type: ignore[arg-type]
    prompt = small.encode("Q: go")
    lprompt = (large or small).encode("Q: go")
    events = list(
        engine.generate(
            Request(prompt, lprompt, max_tokens, GREEDY, tuple(stop), mode)  # type: ignore[arg-type]
        )
    )
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    streamed = "".join(e.text for e in events if isinstance(e, TextEvent))
    assert streamed == finish.text
    return finish.text, events


def delegations(events: list[Event]) -> list[DelegationEvent]:
    return [e for e in events if isinstance(e, DelegationEvent)]


def finish_of(events: list[Event]) -> FinishEvent:
    last = events[-1]
    assert isinstance(last, FinishEvent)
    return last


def large_text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextEvent) and e.author == "large")


SMALL_NEG = ["A.\n\n", "Wait x y z.\n\n", "End.\n\n"]
LARGE_NEUTRAL = ["L0.\n\n", "Hmm p q r.\n\n", "Fin.\n\n"]


def test_neutral_drafts_are_kept_and_nothing_is_delegated() -> None:
    small = ScriptedBackend(["A b c.\n\n", "d e f g.\n\n"], name="s")
    large = ScriptedBackend(["never used"], name="l")
    text, events = run(small, large)
    assert text == "A b c.\n\nd e f g.\n\n"
    assert delegations(events) == []
    fin = finish_of(events)
    assert fin.stop_reason == "eos"
    assert fin.large.generated_tokens == 0
    assert fin.small.kept_tokens == len(small.encode(text))


def test_neutral_draft_with_a_trigger_inside_is_a_boundary() -> None:
    # The draft at the first boundary ("B.\n\n" + "Wait") crosses the next trigger: the part
    # after it must be decided at that boundary, where "Wait" is a negative cue.
    small = ScriptedBackend(["A.\n\n", "B.\n\n", "Wait no.\n\n"], name="s")
    large = ScriptedBackend(["x\n\n", "y\n\n", "Sure thing ok.\n\n"], name="l")
    text, events = run(small, large)
    # the small model resumes at offset 3 of "Wait no.\n\n": one "\n", then its script ends
    assert text == "A.\n\nB.\n\nSure thing ok.\n"
    (d,) = delegations(events)
    assert (d.kind, d.kept, d.small_draft, d.large_text) == (
        "reflection",
        "large",
        "Wait no.\n",
        "Sure thing ok.",
    )
    assert d.position == len("A.\n\nB.\n\n")


def test_negative_draft_is_replaced_by_the_large_step() -> None:
    small = ScriptedBackend(SMALL_NEG, name="s")
    large = ScriptedBackend(LARGE_NEUTRAL, name="l")
    text, events = run(small, large)
    # The large model writes 3 tokens of its paragraph 1; the small one goes on at offset 3.
    assert text == "A.\n\nHmm p q z.\n\nEnd.\n\n"
    (d,) = delegations(events)
    assert d.small_draft == "Wait x y" and d.small_label == -1
    assert d.large_text == "Hmm p q" and d.large_label == 0
    assert d.kept == "large" and d.small_tokens == 3 and d.large_tokens == 3
    assert large_text(events) == "Hmm p q"
    fin = finish_of(events)
    assert fin.large.kept_tokens == 3 and fin.delegations == 1
    assert fin.large_share == pytest.approx(3 / fin.output_tokens)


@pytest.mark.parametrize(
    ("small_p", "large_p", "kept"),
    [
        ("Wait x y z.\n\n", "Hmm p q r.\n\n", "large"),  # s<0, l>=0 -> large
        ("Wait x y z.\n\n", "Alternatively p q.\n\n", "small"),  # s<0, l<0 -> small
        ("Yes x y z.\n\n", "Wait p q r.\n\n", "large"),  # s>0, l<0 -> large
        ("Yes x y z.\n\n", "Hmm p q r.\n\n", "small"),  # s>0, l>=0 -> small
        ("Yes x y z.\n\n", "Yeah p q r.\n\n", "small"),  # s>0, l>0 -> small
    ],
)
def test_choose_large_off_keeps_by_disagreement(small_p: str, large_p: str, kept: str) -> None:
    small = ScriptedBackend(["A.\n\n", small_p], name="s")
    large = ScriptedBackend(["L.\n\n", large_p], name="l")
    text, events = run(small, large, choose_large=False)
    (d,) = delegations(events)
    assert d.kept == kept
    head = small_p if kept == "small" else " ".join(large_p.split()[:3]) + " z.\n\n"
    assert text == "A.\n\n" + (small_p if kept == "small" else head)


def test_choose_large_on_always_keeps_large_even_when_both_agree() -> None:
    small = ScriptedBackend(["A.\n\n", "Yes x y z.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Yeah p q r.\n\n"], name="l")
    text, events = run(small, large)
    assert delegations(events)[0].kept == "large"
    assert text == "A.\n\nYeah p q z.\n\n"


def test_verify_word_makes_the_large_model_continue() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z w v.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Let me check it now please.\n\n"], name="l")
    text, events = run(small, large, verify_tokens=2)
    kinds = [(d.kind, d.large_text) for d in delegations(events)]
    assert kinds == [("reflection", "Let me check"), ("verify", " it now")]
    # small resumes at offset 5 of its paragraph
    assert text == "A.\n\nLet me check it now v.\n\n"
    assert large_text(events) == "Let me check it now"


def test_negative_count_triggers_recap_with_budget_and_threshold_growth_and_caps() -> None:
    # Every small paragraph starts with "Wait"; the large model answers with "Hmm" steps that
    # are themselves negative ("another"), so each boundary adds one negative.
    n = 9
    small = ScriptedBackend(["A.\n\n"] + ["Wait a b c.\n\n"] * n, name="s")
    large = ScriptedBackend(["L.\n\n"] + ["another r1 r2 r3 r4 r5.\n\n"] * (n + 5), name="l")
    text, events = run(
        small,
        large,
        recap_prompt="RECAP:",
        recap_after_negatives=1,
        recap_after_step=1,
        recap_after_max=2,
        recap_tokens=1,
        recap_tokens_step=1,
        recap_tokens_max=2,
    )
    kinds = [d.kind for d in delegations(events)]
    recaps = [d for d in delegations(events) if d.kind == "recap"]
    # threshold 1 -> recap; then 2 (capped) negatives between later recaps
    assert kinds[:5] == ["reflection", "recap", "reflection", "reflection", "recap"]
    assert [d.large_tokens for d in recaps][:3] == [1, 2, 2]  # budget 1, +1, capped at 2
    assert text.count("RECAP:") == len(recaps)
    inserted = [e for e in events if isinstance(e, TextEvent) and e.author == "inserted"]
    assert {e.text for e in inserted} == {"RECAP:"}


def test_begin_lets_the_large_model_open_the_answer() -> None:
    small = ScriptedBackend(["s1 s2 s3 s4.\n\n"], name="s")
    large = ScriptedBackend(["Big opening words here.\n\n"], name="l")
    text, events = run(small, large, begin=True, begin_tokens=2)
    first = delegations(events)[0]
    assert (first.kind, first.large_text, first.small_draft) == ("begin", "Big opening", None)
    assert text.startswith("Big opening s3 s4.\n\n")


def test_not_reasoning_delegates_at_every_boundary() -> None:
    small = ScriptedBackend(["A.\n\n", "b c d e.\n\n", "f g h i.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "P Q R S.\n\n", "T U V W.\n\n"], name="l")
    text, events = run(small, large, not_reasoning=True)
    ds = delegations(events)
    assert [d.large_text for d in ds[:2]] == ["P Q R", "T U V"]
    # choose_large + not_reasoning: the small draft cannot matter and is not computed.
    assert all(d.small_draft is None for d in ds)
    assert text.startswith("A.\n\nP Q R e.\n\nT U V i.\n\n")


def test_not_reasoning_without_choose_large_still_drafts_small() -> None:
    small = ScriptedBackend(["A.\n\n", "b c d e.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "P Q R S.\n\n"], name="l")
    text, events = run(small, large, not_reasoning=True, choose_large=False)
    (d, *_) = delegations(events)
    assert d.small_draft == "b c d" and d.kept == "small"  # s=0, l=0: no disagreement
    assert text.startswith("A.\n\nb c d e.\n\n")


def test_eos_from_the_large_model_ends_the_request() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n", "more.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Done"], name="l")  # EOS after one token
    text, events = run(small, large)
    assert text == "A.\n\nDone"
    assert finish_of(events).stop_reason == "eos"


def test_eos_from_a_rejected_large_draft_does_not_end_the_request() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Alternatively"], name="l")  # negative, then EOS
    text, events = run(small, large, choose_large=False)
    assert delegations(events)[0].kept == "small"
    assert text == "A.\n\nWait x y z.\n\n"


def test_max_tokens_counts_generated_tokens_only() -> None:
    small = ScriptedBackend(["one two three four five six seven eight nine.\n\n"], name="s")
    large = ScriptedBackend(["x"], name="l")
    text, events = run(small, large, max_tokens=4)
    assert text == "one two three four"
    fin = finish_of(events)
    assert fin.stop_reason == "length" and fin.output_tokens == 4
    assert fin.small.prompt_tokens == len(small.encode("Q: go"))


def test_max_tokens_stops_inside_a_large_step() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Hmm p q r.\n\n"], name="l")
    text, events = run(small, large, max_tokens=5)
    assert finish_of(events).output_tokens == 5
    assert text == "A.\n\nHmm p"


def test_timeout_returns_partial_text_with_timeout_reason() -> None:
    clock = FakeClock()

    def tick() -> None:
        clock.now += 1.0

    small = ScriptedBackend(["a b c d e f g h i j.\n\n"], name="s", on_token=tick)
    large = ScriptedBackend(["x"], name="l")
    text, events = run(small, large, clock=clock, time_out=3.5)
    fin = finish_of(events)
    assert fin.stop_reason == "timeout"
    assert text == "a b c d"


def test_stop_string_cuts_output_and_is_never_streamed() -> None:
    small = ScriptedBackend(["The answer is 42 END more words.\n\n"], name="s")
    large = ScriptedBackend(["x"], name="l")
    text, events = run(small, large, stop=[" END"])
    assert text == "The answer is 42"
    assert finish_of(events).stop_reason == "stop"
    assert all("END" not in e.text for e in events if isinstance(e, TextEvent))


def test_small_and_large_modes_use_one_model() -> None:
    small = ScriptedBackend(["Wait s1.\n\n", "s2.\n\n"], name="s")
    large = ScriptedBackend(["Wait l1.\n\n", "l2.\n\n"], name="l")
    text, events = run(small, large, mode="small")
    assert text == "Wait s1.\n\ns2.\n\n" and delegations(events) == []
    assert finish_of(events).large.generated_tokens == 0 and large.sessions == []
    text, events = run(small, large, mode="large")
    assert text == "Wait l1.\n\nl2.\n\n"
    assert finish_of(events).small.generated_tokens == 0


def test_large_failure_falls_back_to_small_with_one_event() -> None:
    small = ScriptedBackend(SMALL_NEG + ["Wait again.\n\n"], name="s")
    large = ScriptedBackend(LARGE_NEUTRAL * 2, name="l", fail_after=4)
    text, events = run(small, large)
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1 and fallbacks[0].error_type == "RuntimeError"
    assert fallbacks[0].new_mode == "small"
    fin = finish_of(events)
    assert fin.stop_reason == "eos" and fin.mode == "small"
    # first delegation succeeded (3 tokens), the second failed after 1 token and was dropped
    assert text == "A.\n\nHmm p q z.\n\nEnd.\n\nWait again.\n\n"
    assert all(s.closed for s in small.sessions + large.sessions)


def test_large_failure_with_raise_policy() -> None:
    small = ScriptedBackend(SMALL_NEG, name="s")
    large = ScriptedBackend(LARGE_NEUTRAL, name="l", fail_after=0)
    with pytest.raises(LargeModelError, match="injected"):
        run(small, large, fallback="raise")
    assert all(s.closed for s in small.sessions + large.sessions)


def test_large_step_timeout_falls_back() -> None:
    clock = FakeClock()

    def slow() -> None:
        clock.now += 10.0

    small = ScriptedBackend(SMALL_NEG, name="s")
    large = ScriptedBackend(LARGE_NEUTRAL, name="l", on_token=slow)
    text, events = run(small, large, clock=clock, large_step_timeout=5.0)
    (fb,) = [e for e in events if isinstance(e, FallbackEvent)]
    assert fb.error_type == "timeout"
    assert text == "A.\n\nWait x y z.\n\nEnd.\n\n"


def test_large_failure_in_large_mode_is_a_typed_error() -> None:
    small = ScriptedBackend(["x"], name="s")
    large = ScriptedBackend(["y z"], name="l", fail_after=1)
    with pytest.raises(LargeModelError):
        run(small, large, mode="large")


def test_text_handoff_between_different_tokenizers() -> None:
    small = ScriptedBackend(SMALL_NEG, name="s", tokenizer="word")
    large = ScriptedBackend(["L0.\n\n", "Hmm p q r.\n\n"], name="l", tokenizer="char")
    text, events = run(small, large)
    # The char-level large model writes 3 characters; the small model re-tokenizes "Hmm" as one
    # word, i.e. offset 1 of its paragraph, and goes on with " x".
    assert delegations(events)[0].large_text == "Hmm"
    assert text == "A.\n\nHmm x y z.\n\nEnd.\n\n"
    fin = finish_of(events)
    assert fin.small.kept_tokens + fin.large.kept_tokens == fin.output_tokens


def test_forced_id_handoff_with_different_tokenizers_is_refused() -> None:
    small = ScriptedBackend(["x"], tokenizer="word")
    large = ScriptedBackend(["x"], tokenizer="char")
    with pytest.raises(HandoffError):
        SpeculativeEngine(small, large, handoff="ids")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_tokens": 0}, "max_tokens"), ({"stop": ("",)}, "stop")],
)
def test_bad_requests_are_typed_errors(kwargs: dict[str, object], match: str) -> None:
    small = ScriptedBackend(["x"])
    engine = SpeculativeEngine(small, small)
    request = Request(**{"small_prompt": [1], "large_prompt": [1], **kwargs})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=match):
        list(engine.generate(request))


def test_closing_the_generator_early_closes_sessions() -> None:
    small = ScriptedBackend(["a b c d e f.\n\n"], name="s")
    large = ScriptedBackend(["x"], name="l")
    gen = SpeculativeEngine(small, large).generate(Request([1], [1], 50, GREEDY))
    next(gen)
    gen.close()
    assert all(s.closed for s in small.sessions + large.sessions)


def test_rejected_drafts_are_cropped_not_copied() -> None:
    small = ScriptedBackend(SMALL_NEG, name="s")
    large = ScriptedBackend(LARGE_NEUTRAL, name="l")
    _, events = run(small, large)
    (session,) = small.sessions
    prompt = len(small.encode("Q: go"))
    # After "A.\n\n" (3 ids) the rejected draft was cropped back to prompt + 3.
    assert prompt + 3 in session.truncations
    fin = finish_of(events)
    # Forwarded = kept tokens by writer + rejected draft + catch-up of the large step, no more.
    ideal_small = prompt + fin.small.kept_tokens + 3 + 3  # + rejected draft + caught-up ids
    assert fin.small.forwarded_tokens <= ideal_small + 2


def test_trigger_split_between_a_kept_step_and_the_small_model_is_a_boundary() -> None:
    # The large step "Hmm p.\n" ends in "\n"; the small model's next "\n" completes "\n\n": a
    # boundary, so the second "Wait" draft is delegated too (it used to slip through live).
    small = ScriptedBackend(["A.\n\n", "Wait x.\n\n", "Wait y.\n\n", "End.\n\n"])
    large = ScriptedBackend(["L.\n\n", "Hmm p.\n\n", "Hmm q.\n\n", "Fin.\n\n"])
    text, events = run(small, large)
    assert text == "A.\n\nHmm p.\n\nHmm q.\n\nEnd.\n\n"
    assert [d.small_draft for d in delegations(events)] == ["Wait x.\n", "Wait y.\n"]


def test_discarded_concurrent_steps_count_in_the_large_models_usage() -> None:
    from concurrent.futures import Executor, Future
    from typing import Any

    class Inline(Executor):
        """Runs each step at submit: it is complete before the small model drafts."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_result(fn(*args, **kwargs))
            return future

    small_script = ["A.\n\n", "B b.\n\n", "C.\n\n"]  # no cue words: every step is discarded
    large_script = ["X.\n\n", "Y y y y.\n\n", "Z z z z.\n\n"]
    # Concurrent steps run only where large steps are not verified (they start before the draft).
    config = SpeculativeThinkingConfig(draft_tokens=3, verify_tokens=0, verified_large=False)
    finishes = []
    for executor in (None, Inline()):
        small, large = ScriptedBackend(small_script), ScriptedBackend(large_script)
        engine = SpeculativeEngine(
            small, large, config, executor=executor, concurrent_drafts=executor is not None
        )
        *_, finish = engine.generate(Request(small.encode("Q"), large.encode("Q"), 100, GREEDY))
        assert isinstance(finish, FinishEvent)
        finishes.append(finish)
    seq, conc = finishes
    assert conc.text == seq.text == "A.\n\nB b.\n\nC.\n\n"
    assert seq.large.generated_tokens == 0 and conc.extra["concurrent_steps_discarded"] == 3
    # Discarded steps: " Y y y" (3), "Z z z" (3), then EOS past the script (1).
    assert conc.large.generated_tokens == 3 + 3 + 1


# ---------------------------------------------------------------- a model's own stop texts
def test_large_stop_text_ends_the_output_like_eos() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n", "End.\n\n"], name="s")
    large = ScriptedBackend(
        ["L0.\n\n", "Ok.\nQuestion: more words"], name="l", stop_texts=("\nQuestion:",)
    )
    text, events = run(small, large, draft_tokens=6)
    assert text == "A.\n\nOk."
    (d,) = delegations(events)
    assert d.kept == "large" and d.large_text.startswith("Ok.\nQuestion:")
    assert finish_of(events).stop_reason == "eos"


def test_stop_text_streamed_live_is_never_emitted() -> None:
    script = ["Step one.\n\n", "More.\nQuestion: next one"]
    large = ScriptedBackend(script, name="l", stop_texts=["\nQuestion:"])
    text, events = run(large, large, mode="large")
    assert text == "Step one.\n\nMore." and finish_of(events).stop_reason == "eos"
    assert "Question" not in "".join(e.text for e in events if isinstance(e, TextEvent))


def test_stop_texts_belong_to_their_model() -> None:
    small = ScriptedBackend(["A.\nQuestion: b.\n\n", "C.\n\n"], name="s")
    large = ScriptedBackend(["never used"], name="l", stop_texts=("\nQuestion:",))
    text, events = run(small, large)
    assert text == "A.\nQuestion: b.\n\nC.\n\n" and not delegations(events)
    assert finish_of(events).stop_reason == "eos"


def test_large_step_that_opens_a_new_question_ends_the_answer() -> None:
    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n", "End.\n\n"], name="s")
    large = ScriptedBackend(
        ["L0.\n\n", "Question: more words"], name="l", stop_texts=("\nQuestion:",)
    )
    text, events = run(small, large, draft_tokens=4)
    assert text == "A.\n\n" and finish_of(events).stop_reason == "eos"
    (d,) = delegations(events)
    assert d.kept == "large" and d.large_text.startswith("Question:")


def test_a_keyword_policy_with_other_words_than_the_config_is_refused() -> None:
    from langchain_spthink import ConfigError, KeywordPolicy

    small = ScriptedBackend(["A.\n\n", "Wait x y z.\n\n"], name="s")
    large = ScriptedBackend(["L.\n\n", "Hmm p q r.\n\n"], name="l")
    engine = SpeculativeEngine(small, large, policy=KeywordPolicy(negative_words=("aber",)))
    prompt = small.encode("Q: go")
    with pytest.raises(ConfigError, match="cue words"):
        list(engine.generate(Request(prompt, prompt, 20, GREEDY)))
    assert all(s.closed for s in small.sessions + large.sessions)  # nothing left open
