"""The llama.cpp backend: session protocol, cache crops, agreement with transformers, mixed pairs.

What is compared, and why it is portable (DESIGN.md, "Float reality" / "Portable numerics"):

* llama.cpp against itself: only with the same batch shapes and thread count (prompt in one
  batch, then the same batches), on contexts that hold nothing of the prompt. llama.cpp picks its
  kernels by CPU features and batch shape, and a token's logits differ between a batch and a
  single-token evaluation (measured on this AMD EPYC AVX2 machine: up to 0.9 for a prompt
  evaluated in one batch vs token by token; on an AVX-512 Xeon, 0.42 between a cropped session's
  small catch-up batches and a token-by-token evaluation that agreed within 1e-3 here).
* llama.cpp against transformers (Q4 with quantized activations vs de-quantized float32): never
  bit-equality. The tokens one runtime chooses greedily are teacher-forced through the other, and
  each must be the reference's argmax or within a measured bound of it (:func:`check_greedy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp
import pytest
import torch
from langchain_core.messages import HumanMessage

from langchain_spthink import (
    DelegationEvent,
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
)
from langchain_spthink.backends.llamacpp import LlamaCppBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat.messages import render_prompt_ids, to_chat_dicts
from tests.numerics import THREADS, torch_threads, until_stop
from tests.unit_tests._reliability_fakes import Recording

pytestmark = pytest.mark.embedded
GREEDY = SamplingParams(temperature=0.0)
QUESTION = [{"role": "user", "content": "What is 12 times 7?"}]
SMALL, LARGE = "smollm2-135m-instruct", "gemma3-270m"

# Cross-runtime bound on "reference's best logit - logit of the token the other runtime chose".
# Measured on this machine (AMD EPYC, AVX2, 2 cores; llama.cpp 1 and 2 threads gave identical
# logits): 5 chat prompts (the questions of these tests and of test_chat_embedded), 40 greedy
# tokens each, transformers' greedy tokens teacher-forced through llama.cpp token by token; at
# each position, the error of the gap between the reference's best token and each of its top 20,
# |(llama[top] - llama[v]) - (hf[top] - hf[v])|, at most: SmolLM2 (Q4_1) 0.73 over 168
# positions (max |logit difference| 1.37; 3 argmax flips, at reference margins 0.02-0.13),
# gemma-3-270m (Q4_K_M) 1.05 over 200 positions (max |difference| 2.8; 5 flips, at margins
# 0.004-0.69). A chosen token can only trail the reference's best by that error, so the bound
# is ~2x it, room for other CPUs' kernels (the AVX-512 machine moved llama.cpp logits by 0.42
# between two batchings of the same ids). A wrong token (stale cache, wrong prompt, broken
# hand-off) trails by several logits (measured: 22 when a catch-up skipped the handed-off ids).
GAP_BOUND = {SMALL: 1.5, LARGE: 2.1}


@pytest.fixture(scope="module")
def llama() -> Iterator[Callable[[str, int], LlamaCppBackend]]:
    """Loads each (alias, thread count) once for the module: ``llama(alias, n_threads)``."""
    loaded: dict[tuple[str, int], LlamaCppBackend] = {}

    def get(alias: str, n_threads: int) -> LlamaCppBackend:
        if (alias, n_threads) not in loaded:
            loaded[alias, n_threads] = LlamaCppBackend.load(alias, n_ctx=2048, n_threads=n_threads)
        return loaded[alias, n_threads]

    yield get
    for backend in loaded.values():
        backend.close()


@pytest.fixture
def llama_small(llama: Callable[[str, int], LlamaCppBackend]) -> LlamaCppBackend:
    """SmolLM2 on llama.cpp, for the tests that compare no numbers."""
    return llama(SMALL, 2)


def finish(events: list[Any]) -> FinishEvent:
    assert isinstance(events[-1], FinishEvent)
    return events[-1]


def forget_prefixes(backend: LlamaCppBackend) -> None:
    """Leave every pooled context holding one unrelated token.

    A new session reuses the longest common prefix a context holds, so its prompt may have been
    evaluated in other batches by an earlier request; after this, the next session evaluates its
    whole prompt as one batch, as a fresh ``Llama`` does.
    """
    filler = backend.encode("fresh")[:1]
    sessions = [backend.new_session(filler, GREEDY) for _ in range(backend._max_contexts)]
    for session in sessions:
        session.next_logits()
        session.close()


def llama_greedy(backend: LlamaCppBackend, prompt: list[int], n: int) -> list[int]:
    """llama-cpp-python's own greedy generation (its sampler), stopping before EOS.

    On a fresh context with ``backend``'s file, context length and thread count: the prompt in
    one batch, then one token per step, as the backend's sessions evaluate them.
    """
    oracle = llama_cpp.Llama(
        model_path=str(backend.model_path),
        n_ctx=backend.context_length,
        n_threads=backend._threads,
        n_threads_batch=backend._threads,
        verbose=False,
    )
    try:
        ids: list[int] = []
        for token in oracle.generate(prompt, temp=0.0):
            if token in backend.eos_ids or len(ids) == n:
                break
            ids.append(int(token))
        return ids
    finally:
        oracle.close()


def check_greedy(
    reference: TransformersBackend, prompt: list[int], ids: list[int], bound: float
) -> int:
    """Each of ``ids`` is the reference's argmax after the ids before it, or within ``bound`` of it.

    Teacher-forced (the reference sees exactly the prefix the writer saw), so every position is
    checked, not just those before a first divergence. Returns the number of flips (positions
    where the token is not the reference's argmax; each one was a near-tie).
    """
    assert ids, "nothing to check"
    with torch.inference_mode():
        logits = reference.model(input_ids=torch.tensor([prompt + ids])).logits[0]
    rows = logits[len(prompt) - 1 : -1]
    gaps = rows.max(dim=-1).values - rows[torch.arange(len(ids)), torch.tensor(ids)]
    worst = int(gaps.argmax())
    assert float(gaps[worst]) <= bound, (
        f"token {ids[worst]} at output position {worst} trails the reference's best "
        f"({int(rows[worst].argmax())}) by {float(gaps[worst]):.3f} > {bound}: not a near-tie"
    )
    flips = int((gaps > 0).sum())
    print(f"{reference.name}: {flips} flip(s) in {len(ids)} tokens, largest gap {gaps.max():.3f}")
    return flips


def test_same_vocabulary_as_transformers(
    llama_small: LlamaCppBackend, small_backend: TransformersBackend
) -> None:
    assert llama_small.tokenizer_fingerprint == small_backend.tokenizer_fingerprint
    assert llama_small.chat_prompt_ids(QUESTION) == small_backend.chat_prompt_ids(QUESTION)
    text = "Wait, 12 × 7 = 84.\n\nYes 日本 🙂"
    assert llama_small.encode(text) == small_backend.encode(text)
    assert llama_small.decode(llama_small.encode(text)) == text


def test_gemma_template_and_eos(
    llama: Callable[[str, int], LlamaCppBackend], large_backend: TransformersBackend
) -> None:
    llama_large = llama(LARGE, 2)
    assert llama_large.chat_prompt_ids(QUESTION) == large_backend.chat_prompt_ids(QUESTION)
    assert 106 in llama_large.eos_ids  # <end_of_turn>


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("alias", [SMALL, LARGE])
def test_small_mode_is_greedy_and_agrees_with_transformers(
    alias: str,
    n_threads: int,
    llama: Callable[[str, int], LlamaCppBackend],
    small_backend: TransformersBackend,
    large_backend: TransformersBackend,
) -> None:
    backend = llama(alias, n_threads)
    hf = small_backend if alias == SMALL else large_backend
    ids = hf.chat_prompt_ids(QUESTION)
    # Same runtime, same batch shapes, same threads: the engine's text is llama.cpp's own greedy
    # generation, exactly.
    forget_prefixes(backend)
    events = list(
        SpeculativeEngine(backend, None).generate(Request(ids, ids, 16, GREEDY, mode="small"))
    )
    expected = llama_greedy(backend, ids, 16)
    text, kept = until_stop(backend.decode, expected, backend.stop_texts)
    assert finish(events).text == text
    expected = expected[:kept]
    # Across runtimes: every token llama.cpp chose is transformers' choice, or a near-tie there.
    with torch_threads(n_threads, hf):
        check_greedy(hf, ids, expected, GAP_BOUND[alias])


@pytest.mark.parametrize("n_threads", THREADS)
def test_crop_and_catch_up_equal_a_fresh_evaluation_of_the_same_batches(
    n_threads: int, llama: Callable[[str, int], LlamaCppBackend]
) -> None:
    # A cropped-and-extended session must hold exactly the state of evaluating its ids, in the
    # same batches, on a fresh context: nothing of the cropped ids may remain. The oracle uses
    # the same batches because llama.cpp's logits depend on them (see the module docstring).
    # Crops fall on batch starts, so no batch is ever kept in part.
    backend = llama(SMALL, n_threads)
    prompt = backend.chat_prompt_ids(QUESTION)
    catch_ups = [backend.encode(t) for t in (" so", " so we get", " Let me check:", " 84")]
    assert {len(c) for c in catch_ups} >= {1, 3}  # single-token and multi-token catch-ups
    gen = torch.Generator().manual_seed(0)

    def pick(n: int) -> int:
        return int(torch.randint(0, n, (1,), generator=gen))

    forget_prefixes(backend)
    session = backend.new_session(prompt, GREEDY)
    batches = [list(prompt)]  # the batches whose results are in the cache, in order
    evaluated = len(prompt)
    checkpoints: list[tuple[list[list[int]], torch.Tensor]] = []
    try:
        logits = session.next_logits()
        for _ in range(8):
            for _ in range(1 + pick(4)):  # write greedily, one token per batch
                token = int(logits.argmax())
                session.extend([token])
                logits = session.next_logits()
                batches.append([token])
                evaluated += 1
            back = pick(min(4, len(batches) - 1) + 1)  # crop 0-4 batches after the prompt
            if back:
                del batches[-back:]
                session.truncate(sum(len(b) for b in batches))
            catch_up = catch_ups[pick(len(catch_ups))]
            assert session.cached == len(session.ids)  # so next_logits evaluates just this batch
            session.extend(catch_up)
            logits = session.next_logits()
            batches.append(list(catch_up))
            evaluated += len(catch_up)
            assert list(session.ids) == [i for b in batches for i in b]
            checkpoints.append(([list(b) for b in batches], logits.clone()))
        assert session.forwarded == evaluated  # catch-ups only: the prefix is never re-evaluated
    finally:
        session.close()
    for kept, cached in checkpoints:
        forget_prefixes(backend)
        fresh = backend.new_session(kept[0], GREEDY)
        try:
            expected = fresh.next_logits()
            for batch in kept[1:]:
                fresh.extend(batch)
                expected = fresh.next_logits()
            assert fresh.forwarded == sum(len(b) for b in kept)
        finally:
            fresh.close()
        # Same batches, threads and positions; only the KV cells a crop freed and a catch-up
        # reused may sit elsewhere, which could reorder the attention's float32 sums. Measured
        # here (1 and 2 threads, all 8 checkpoints): max |difference| 0.0. A state that kept one
        # cropped batch, or lost one kept token, differed by 1.1 to 8.2 (measured by replaying
        # such sequences in the oracle), so 1e-3 separates them by three orders of magnitude.
        torch.testing.assert_close(cached, expected, atol=1e-3, rtol=0.0)


def test_prefix_of_an_earlier_request_is_reused(llama_small: LlamaCppBackend) -> None:
    prompt = llama_small.chat_prompt_ids(QUESTION)
    first = llama_small.new_session(prompt, GREEDY)
    list(first.stream(3))
    first.close()
    second = llama_small.new_session(prompt, GREEDY)
    try:
        list(second.stream(1))
        assert second.forwarded == 1  # only the last prompt id was re-evaluated
    finally:
        second.close()


def test_mixed_pair_llamacpp_small_transformers_large_hands_off_text(
    llama_small: LlamaCppBackend, large_backend: TransformersBackend
) -> None:
    config = SpeculativeThinkingConfig(
        begin=True, not_reasoning=True, begin_tokens=6, draft_tokens=6
    )
    engine = SpeculativeEngine(llama_small, large_backend, config)
    assert not engine.share_ids
    request = Request(
        llama_small.chat_prompt_ids(QUESTION), large_backend.chat_prompt_ids(QUESTION), 40, GREEDY
    )
    events = list(engine.generate(request))
    fin = finish(events)
    assert [e for e in events if isinstance(e, DelegationEvent)][0].kind == "begin"
    assert fin.small.kept_tokens > 0 and fin.large.kept_tokens > 0
    assert len(llama_small._idle) == llama_small._created  # contexts went back to the pool


def output_ids(sessions: list[Any], prompt_len: int, eos: frozenset[int]) -> list[int]:
    """The request's output ids, from the sessions of a same-tokenizer (ids hand-off) request.

    Each session holds the prompt and the output up to its last write; the last writer's holds
    all of it (plus the EOS it sampled, if any).
    """
    ids = max((list(s.ids[prompt_len:]) for s in sessions), key=len)
    return ids[:-1] if ids and ids[-1] in eos else ids


@pytest.mark.parametrize("n_threads", THREADS)
def test_id_handoff_between_llamacpp_and_transformers(
    n_threads: int,
    llama: Callable[[str, int], LlamaCppBackend],
    small_backend: TransformersBackend,
) -> None:
    # Same vocabulary on two runtimes: the engine hands off ids, and both "models" are SmolLM2,
    # so every output token is SmolLM2's greedy choice after the output before it, made by one
    # runtime or the other. Checked teacher-forced against transformers at every position: a
    # hand-off that lost or garbled ids would make a writer continue a different text. A trigger
    # at every space makes the writers alternate many times within the 30 tokens.
    config = SpeculativeThinkingConfig(
        not_reasoning=True, begin=True, begin_tokens=4, draft_tokens=3, triggers=(" ",)
    )
    small, large = Recording(llama(SMALL, n_threads)), Recording(small_backend)
    engine = SpeculativeEngine(small, large, config)  # type: ignore[arg-type]
    assert engine.share_ids
    ids = small_backend.chat_prompt_ids(QUESTION)
    with torch_threads(n_threads, small_backend):
        events = list(engine.generate(Request(ids, ids, 30, GREEDY)))
        fin = finish(events)
        assert fin.small.kept_tokens > 0 and fin.large.kept_tokens > 0  # both runtimes wrote
        assert fin.delegations >= 4
        out = output_ids(small.sessions + large.sessions, len(ids), small_backend.eos_ids)
        assert small_backend.decode(out) == fin.text
        assert len(out) == fin.output_tokens
        check_greedy(small_backend, ids, out, GAP_BOUND[SMALL])


def test_contexts_are_never_shared_between_live_sessions(llama_small: LlamaCppBackend) -> None:
    prompt = llama_small.encode("Hello")
    a = llama_small.new_session(prompt, GREEDY)
    b = llama_small.new_session(prompt, GREEDY)
    try:
        assert a._llama is not b._llama
    finally:
        a.close()
        b.close()


def test_chat_model_accepts_the_llamacpp_prefix(small_backend: TransformersBackend) -> None:
    from langchain_spthink import ChatSpeculativeThinking

    kwargs: dict[str, Any] = {"mode": "small", "temperature": 0.0, "max_tokens": 12}
    fast = ChatSpeculativeThinking(small_model=f"llamacpp:{SMALL}", **kwargs)
    backend = fast._backend("small")
    assert isinstance(backend, LlamaCppBackend)
    question = [HumanMessage("What is 12 times 7?")]
    forget_prefixes(backend)  # the backend is cached process-wide: start from a fresh prompt
    answer = fast.invoke(question)
    # llama.cpp's own greedy generation with the same batches and threads: the same text. (Not
    # transformers' text: the runtimes may legitimately part at a near-tie, see check_greedy.)
    expected = llama_greedy(backend, render_prompt_ids(backend, to_chat_dicts(question)), 12)
    assert answer.content and answer.content == backend.decode(expected)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == len(expected) == 12
