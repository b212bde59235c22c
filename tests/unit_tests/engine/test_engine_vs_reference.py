"""The engine against the naive reference re-computation, on random scripted models."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from hypothesis import given, settings
from hypothesis import strategies as st

from langchain_spthink import (
    DelegationEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
)
from langchain_spthink.backends.scripted import ScriptedBackend
from tests.reference import reference_run

WORDS = ["Wait", "yes", "check", "ok", "x", "y", "Hmm", "alternatively", "confident", "z.", "2+2"]
paragraph = st.lists(st.sampled_from(WORDS), min_size=1, max_size=7).map(" ".join)
script = st.lists(
    st.tuples(paragraph, st.booleans()).map(lambda p: p[0] + ("\n\n" if p[1] else ".\n\n")),
    min_size=1,
    max_size=8,
)
configs = st.fixed_dictionaries(
    {
        "draft_tokens": st.integers(1, 4),
        "verify_tokens": st.integers(0, 3),
        "choose_large": st.booleans(),
        "not_reasoning": st.booleans(),
        "begin": st.booleans(),
        "begin_tokens": st.integers(1, 3),
        "recap_after_negatives": st.integers(1, 3),
        "recap_after_step": st.integers(0, 2),
        "recap_after_max": st.just(4),
        "recap_tokens": st.integers(1, 3),
        "recap_tokens_step": st.integers(0, 2),
        "recap_tokens_max": st.just(4),
        "think_word": st.sampled_from([None, "Hmm,"]),
        "recap_prompt": st.just("RECAP"),
    }
)


def next_token(backend: ScriptedBackend, prompt_len: int):  # type: ignore[no-untyped-def]
    def fn(ids: list[int]) -> int:
        return backend.vocab.id(backend.next_piece(backend.decode(ids[prompt_len:])))

    return fn


POOL = ThreadPoolExecutor(2)


@settings(max_examples=400, deadline=None)
@given(
    small_script=script,
    large_script=script,
    cfg=configs,
    max_tokens=st.integers(1, 60),
    concurrent=st.booleans(),
)
def test_engine_equals_reference(
    small_script: list[str],
    large_script: list[str],
    cfg: dict[str, object],
    max_tokens: int,
    concurrent: bool,
) -> None:
    config = SpeculativeThinkingConfig(**cfg)
    small = ScriptedBackend(small_script, name="s")
    large = ScriptedBackend(large_script, name="l")
    prompt = small.encode("Q:")
    events = list(
        SpeculativeEngine(
            small,
            large,
            config,
            executor=POOL if concurrent else None,
            concurrent_drafts=concurrent,
        ).generate(Request(prompt, prompt, max_tokens, SamplingParams(temperature=0.0)))
    )
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    ref = reference_run(
        next_token(small, len(prompt)),
        next_token(large, len(prompt)),
        prompt,
        prompt,
        encode=small.encode,
        decode=small.decode,
        eos=small.eos_ids,
        cfg=config,
        max_tokens=max_tokens,
    )
    decisions = [(e.kind, e.kept, e.large_text) for e in events if isinstance(e, DelegationEvent)]
    assert finish.text == ref.text
    assert decisions == ref.decisions
    assert finish.stop_reason == ref.reason
