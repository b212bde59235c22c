"""The verification primitive of draft-verified large steps (issue #19), without model files.

* :func:`speculative_accept` / :func:`verify_proposal` keep the target distribution: checked by
  chi-square goodness of fit on seeded draws (p-value threshold 1e-6, so a correct rule fails
  about once in a million runs while a wrong one, run here too, is rejected by far).
* :meth:`LocalSession.score` / :meth:`LocalSession.verify` on tiny random Llama models
  (``tests/tiny_models.py``): the rows of one k-token forward against one-token forwards, greedy
  verification against greedy decoding, the cache after a rejection, forwarded counts, the
  sampled joint distribution of two ids, and an engine run verified vs plain.
* :meth:`TransformersBackend.first_layers`: weights shared, the original untouched, the cut equal
  to an independently built model with the same first layers.

Numerics (measured on an AMD EPYC AVX2 machine, 1 torch thread): float32 score rows vs
one-at-a-time ``next_logits`` differ by at most 2.0e-4 on logits of magnitude ~20 (batch shapes
differ, so they are not bit-equal); llama.cpp (the tiny GGUF, float32): 1.2e-4; float64: 9e-15.
Comparisons use ``ATOL32 = 1e-3``; greedy
ids are compared only where the top-2 margin exceeds ``2 * ATOL32``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from langchain_spthink import Request, SpeculativeEngine, SpeculativeThinkingConfig
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.events import FinishEvent
from langchain_spthink.engine.sampling import (
    SamplingParams,
    speculative_accept,
    verify_proposal,
    warp_logits,
)
from langchain_spthink.errors import InvalidRequestError
from tests.tiny_models import tiny_llama, write_tiny_gguf

ATOL32 = 1e-3  # measured max |score row - next_logits| in float32: 2.0e-4 (see module doc)
ALPHA = 1e-6  # chi-square p-value below which a distribution is rejected
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ chi-square
def p_value(samples: Sequence[object], probs: dict[object, float]) -> float:
    """Chi-square goodness-of-fit p-value of ``samples`` against ``probs`` (outcome -> prob).

    An outcome of probability 0 drawn gives 0; cells expected below 5 are pooled.
    """
    n = len(samples)
    counts = Counter(samples)
    if any(probs.get(x, 0.0) <= 0.0 for x in counts):
        return 0.0
    cells: list[tuple[float, float]] = []  # (observed, expected)
    pooled = [0.0, 0.0]
    for outcome, prob in probs.items():
        if prob <= 0.0:
            continue
        observed, expected = float(counts.get(outcome, 0)), prob * n
        if expected < 5.0:
            pooled[0] += observed
            pooled[1] += expected
        else:
            cells.append((observed, expected))
    if pooled[1] > 0.0:
        cells.append((pooled[0], pooled[1]))
    if len(cells) < 2:
        return 1.0
    chi2 = sum((o - e) ** 2 / e for o, e in cells)
    df = torch.tensor((len(cells) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(df, torch.tensor(chi2 / 2, dtype=torch.float64)))


def test_p_value_rejects_a_wrong_distribution() -> None:
    probs: dict[object, float] = {0: 0.5, 1: 0.5}
    assert p_value([0] * 5000 + [1] * 5000, probs) == pytest.approx(1.0)
    assert p_value([0] * 5300 + [1] * 4700, probs) < ALPHA  # 6 sigma off


# ------------------------------------------------------------------ speculative_accept
P = torch.tensor([0.05, 0.30, 0.0, 0.25, 0.15, 0.25], dtype=torch.float64)  # target
Q = torch.tensor([0.40, 0.10, 0.20, 0.10, 0.10, 0.10], dtype=torch.float64)  # proposer
TARGET: dict[object, float] = {i: float(P[i]) for i in range(len(P))}
N = 10_000  # draws per distribution: ~2 s per test on a loaded 2-core machine

Rule = Callable[[torch.Tensor, int, torch.Generator, "torch.Tensor | None"], "int | None"]


def accept_always(p: torch.Tensor, token: int, g: torch.Generator, q: Any = None) -> int | None:
    """Wrong rule: keep every proposal."""
    return None


def residual_with_token(
    p: torch.Tensor, token: int, g: torch.Generator, q: Any = None
) -> int | None:
    """Wrong rule: keep w.p. p[token], else redraw from p *including* the rejected token."""
    if float(torch.rand((), generator=g)) < float(p[token]):
        return None
    return int(torch.multinomial(p, 1, generator=g))


def residual_p(p: torch.Tensor, token: int, g: torch.Generator, q: Any = None) -> int | None:
    """Wrong rule: keep w.p. min(1, p/q), else redraw from p instead of max(0, p - q).

    (Ignoring q altogether, i.e. ``speculative_accept(p, token, g)``, would be right: with
    q = None the rule keeps p for any proposal chosen independently of its draws.)
    """
    if float(torch.rand((), generator=g)) * float(q[token]) < float(p[token]):
        return None
    return int(torch.multinomial(p, 1, generator=g))


def draw(rule: Rule, propose: Callable[[], int], q: torch.Tensor | None, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(N):
        token = propose()
        replacement = rule(P, token, g, q)
        out.append(token if replacement is None else replacement)
    return out


def from_q(dist: torch.Tensor, seed: int) -> Callable[[], int]:
    g = torch.Generator().manual_seed(seed)
    return lambda: int(torch.multinomial(dist, 1, generator=g))


@pytest.mark.parametrize("token", [1, 2, 4])  # likely, impossible (p = 0), unlikely
def test_a_given_token_keeps_the_target_distribution(token: int) -> None:
    samples = draw(speculative_accept, lambda: token, None, seed=token)
    assert p_value(samples, TARGET) > ALPHA
    # The same test rejects wrong rules: keeping the proposal, or redrawing it after rejection.
    assert p_value(draw(accept_always, lambda: token, None, 1), TARGET) < ALPHA
    if float(P[token]) > 0.0:  # (with p[token] = 0 redrawing it is impossible: no difference)
        assert p_value(draw(residual_with_token, lambda: token, None, 1), TARGET) < ALPHA


def test_a_token_drawn_from_another_distribution_as_a_given_one_keeps_the_target() -> None:
    # q = None holds for any proposal chosen independently of the rule's own draws.
    samples = draw(speculative_accept, from_q(Q, 7), None, seed=8)
    assert p_value(samples, TARGET) > ALPHA
    assert p_value(draw(accept_always, from_q(Q, 7), None, 8), TARGET) < ALPHA
    # (residual_with_token moves P(x) by only p(x) * (q(x) - sum q p) here, which N = 10^4
    # draws see at p ~ 2e-5 only: its rejection is checked with given tokens above.)


def test_a_token_drawn_from_the_given_q_keeps_the_target() -> None:
    samples = draw(speculative_accept, from_q(Q, 9), Q, seed=10)
    assert p_value(samples, TARGET) > ALPHA
    assert p_value(draw(accept_always, from_q(Q, 9), Q, 10), TARGET) < ALPHA
    assert p_value(draw(residual_p, from_q(Q, 9), Q, 10), TARGET) < ALPHA
    # q = P exactly: every proposal is kept (residual empty: the rule must not divide by 0).
    g = torch.Generator().manual_seed(0)
    assert all(speculative_accept(P, t, g, P) is None for t in (0, 1, 3, 4, 5))


def test_verify_proposal_draws_each_row_from_its_warped_distribution() -> None:
    # Pure function, 3 rows over 8 ids, proposal [a, b]: the first id is distributed as the
    # warped row 0; given it equals a, the second as the warped row 1.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    params = SamplingParams(temperature=1.2, top_k=5, top_p=0.95)
    rows = [warp_logits(logits[i], params).softmax(-1) for i in range(3)]
    a = int(torch.argsort(rows[0], descending=True)[1])  # second most likely: often rejected
    b = int(torch.argmax(rows[1]))
    g = torch.Generator().manual_seed(1)
    assert float(rows[0][a]) > 0.1 and float(rows[1][b]) > 0.1
    outs = [verify_proposal(logits, [a, b], params, g) for _ in range(N // 2)]
    assert p_value([o[0] for o in outs], {i: float(rows[0][i]) for i in range(8)}) > ALPHA
    second = [o[1] for o in outs if o[0] == a]
    assert len(second) > 500
    assert p_value(second, {i: float(rows[1][i]) for i in range(8)}) > ALPHA
    assert all(len(o) == 1 for o in outs if o[0] != a)  # a rejection ends the list
    bonus = [o[2] for o in outs if o[:2] == [a, b]]  # all kept: + an id from the last row
    assert all(len(o) == 3 for o in outs if o[:2] == [a, b]) and len(bonus) > 300
    assert p_value(bonus, {i: float(rows[2][i]) for i in range(8)}) > ALPHA


# ------------------------------------------------------------------ tiny transformers models
@pytest.fixture(scope="module")
def large32(tiny_tokenizer: Any) -> TransformersBackend:
    eos = frozenset({int(tiny_tokenizer.eos_token_id)})
    model = tiny_llama(len(tiny_tokenizer), 1, 96, 3)
    return TransformersBackend(model, tiny_tokenizer, name="l32", eos_ids=eos, threads=1)


@pytest.fixture(scope="module")
def mini64(tiny_tokenizer: Any) -> TransformersBackend:
    """One layer, width 32, float64: the cheapest forward, for the sampled joint."""
    eos = frozenset({int(tiny_tokenizer.eos_token_id)})
    model = tiny_llama(len(tiny_tokenizer), 2, 32, 1).double()
    return TransformersBackend(model, tiny_tokenizer, name="m64", eos_ids=eos, threads=1)


@pytest.fixture(scope="module")
def large64(tiny_tokenizer: Any) -> TransformersBackend:
    eos = frozenset({int(tiny_tokenizer.eos_token_id)})
    model = tiny_llama(len(tiny_tokenizer), 1, 96, 3).double()
    return TransformersBackend(model, tiny_tokenizer, name="l64", eos_ids=eos, threads=1)


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def runtime(
    request: pytest.FixtureRequest,
    large32: TransformersBackend,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """A float32 tiny model on each local runtime (llama.cpp: the tiny GGUF, 1 thread)."""
    if request.param == "transformers":
        yield large32
        return
    from langchain_spthink.backends.llamacpp import LlamaCppBackend

    path = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    backend = LlamaCppBackend(path, n_threads=1, n_ctx=1024, max_contexts=2, wait_timeout=5.0)
    yield backend
    backend.close()


@contextlib.contextmanager
def opened(backend: Any, ids: Sequence[int], params: SamplingParams = GREEDY) -> Iterator[Any]:
    """A session, closed after the block (llama.cpp has 2 contexts: a leak would block)."""
    session = backend.new_session(list(ids), params)
    try:
        yield session
    finally:
        session.close()


def prompt_of(backend: Any) -> list[int]:
    return list(backend.encode("Let me think step by step."))


def greedy_path(backend: Any, n: int) -> tuple[list[int], list[float]]:
    """Greedy ids after the prompt, one forward each, and each step's top-2 logit margin."""
    ids: list[int] = []
    margins: list[float] = []
    with opened(backend, prompt_of(backend)) as session:
        for _ in range(n):
            logits = session.next_logits()
            top = torch.topk(logits, 2).values
            margins.append(float(top[0] - top[1]))
            ids.append(int(torch.argmax(logits)))
            session.extend(ids[-1:])
    return ids, margins


def test_score_rows_equal_one_token_forwards(runtime: Any) -> None:
    # Measured max difference: transformers float32 2.0e-4, llama.cpp 1.2e-4 (logits ~20).
    prompt = prompt_of(runtime)
    tokens = runtime.encode(" Wait, that is not right. Let me check again.")
    for k in (1, 3, len(tokens)):
        with opened(runtime, prompt) as session:
            rows = session.score(tokens[:k])
        assert rows.shape[0] == k + 1
        expected = []
        with opened(runtime, prompt) as one:
            for i in range(k + 1):
                expected.append(one.next_logits())
                one.extend(tokens[i : i + 1])
        torch.testing.assert_close(rows, torch.stack(expected), atol=ATOL32, rtol=0.0)


def test_score_after_more_pending_ids_than_a_batch_holds(runtime: Any) -> None:
    # 700 prompt ids pending (llama.cpp's n_batch is 512: the head is evaluated first, the
    # scored rows in one batch after it); measured difference 6e-5.
    prompt = list(runtime.encode("Let me think step by step. " * 120))[:700]
    tokens = runtime.encode(" Wait, that is not right.")
    with opened(runtime, prompt) as session:
        reused = session.cached  # llama.cpp: what its context holds of an earlier prompt
        assert len(prompt) - reused > 512
        rows = session.score(tokens)
        assert session.forwarded == len(prompt) - reused + len(tokens)
    expected = []
    with opened(runtime, prompt[:1]) as one:
        one.extend(prompt[1:])
        for i in range(len(tokens) + 1):
            expected.append(one.next_logits())
            one.extend(tokens[i : i + 1])
    torch.testing.assert_close(rows, torch.stack(expected), atol=ATOL32, rtol=0.0)


def test_greedy_verify_returns_greedy_decodings_ids(runtime: Any) -> None:
    prompt = prompt_of(runtime)
    path, margins = greedy_path(runtime, 8)
    checked = 0
    for j in range(len(path) + 1):
        if any(m <= 2 * ATOL32 for m in margins[: j + 1]):
            continue  # a near tie: the k-token forward may pick the other id
        checked += 1
        if j < len(path):  # reject at j: a wrong id there, the right ones after it
            proposal = [*path[:j], path[j] ^ 1, *path[j + 1 :]]
            expected = path[: j + 1]
        else:  # all kept: the bonus id past the proposal
            proposal, expected = path[:-1], path
        with opened(runtime, prompt) as session:
            assert session.verify(proposal) == expected
            assert list(session.ids) == prompt + expected
            assert session.cached == len(session.ids) - 1  # the last id is pending
            after = session.next_logits()
        # The cropped session continues exactly as a fresh one over the same ids.
        with opened(runtime, prompt + expected) as fresh:
            torch.testing.assert_close(after, fresh.next_logits(), atol=ATOL32, rtol=0.0)
    assert checked >= 6


def test_verify_after_a_rejection_forwards_only_new_ids(runtime: Any) -> None:
    prompt = prompt_of(runtime)
    path, _ = greedy_path(runtime, 8)
    with opened(runtime, prompt) as session:
        # llama.cpp reuses what its context holds of the prompt (all but the last id, whose
        # logits are needed again); transformers starts empty.
        reused = min(session.cached, len(prompt) - 1)
        first = session.verify([path[0], path[1] ^ 1, path[2]])  # rejected at 1: 1 dropped
        assert first == path[:2]
        assert session.forwarded == len(prompt) - reused + 3
        second = session.verify(path[2:5])
        assert session.forwarded == len(prompt) - reused + 3 + 1 + 3  # pending id + proposal
        assert first + second == path[: len(first) + len(second)]
        # A session whose ids are all cached re-forwards the last one (its logits are gone).
        session.truncate(len(session.ids) - 1)
        assert session.cached == len(session.ids)
        before, expected = session.forwarded, path[len(session.ids) - len(prompt)]
        assert session.verify([]) == [expected]
        assert session.forwarded == before + 1


def test_sampled_verify_keeps_the_joint_distribution_of_two_ids(
    mini64: TransformersBackend,
) -> None:
    # float64 for clean numerics. The exact joint of the first two ids is computed from the
    # model's warped probabilities; the empirical one from LocalSession.verify with a fixed
    # proposal [a, b] (every other sample [a] alone: the 2nd id is then the bonus one), a the
    # second most likely first id (rejected often), b the likeliest after a; a second
    # verify([]) gives the second id when the first was a replacement.
    params = SamplingParams(temperature=1.5, top_k=4, top_p=0.95, seed=3)
    prompt = prompt_of(mini64)

    def probs(ids: list[int]) -> torch.Tensor:
        logits = mini64.new_session(ids, GREEDY).next_logits()
        return warp_logits(logits, params).softmax(-1)

    first = probs(prompt)
    joint: dict[object, float] = {}
    for x1 in first.nonzero().flatten().tolist():
        second = probs([*prompt, x1])
        for x2 in second.nonzero().flatten().tolist():
            joint[(x1, x2)] = float(first[x1] * second[x2])
    a = int(torch.argsort(first, descending=True)[1])
    b = int(torch.argmax(probs([*prompt, a])))
    session = mini64.new_session(prompt, params)
    samples = []
    for i in range(1000):  # ~6 ms a verify: 6-12 s on a loaded 2-core machine
        session.truncate(len(prompt))
        new = session.verify([a, b] if i % 2 else [a])  # [a]: the 2nd id is the bonus one
        if len(new) < 2:
            new += session.verify([])
        samples.append((new[0], new[1]))
    assert p_value(samples, joint) > ALPHA
    assert sum(s[0] == a for s in samples) > 50  # the proposal was accepted at times


def test_verified_engine_run_equals_plain_run(large64: TransformersBackend) -> None:
    # The large model and its first 2 layers (same tokenizer): the large model opens (begin,
    # 12 tokens) and intervenes at every boundary, so its steps are verified. float64: the
    # k-token forward differs from one-token forwards by ~1e-14, below any margin met here.
    small = large64.first_layers(2)
    prompt = prompt_of(large64)
    cfg = {"begin": True, "begin_tokens": 12, "not_reasoning": True, "draft_tokens": 4}
    finishes = []
    for verified in (True, False):
        config = SpeculativeThinkingConfig(**cfg, verify_tokens=3, verified_large=verified)
        engine = SpeculativeEngine(small, large64, config)
        events = list(engine.generate(Request(prompt, prompt, 40, GREEDY)))
        finish = events[-1]
        assert isinstance(finish, FinishEvent)
        finishes.append(finish)
    verified_run, plain = finishes
    assert verified_run.text == plain.text
    assert verified_run.large_decoding == "verified" and plain.large_decoding == "plain"
    assert verified_run.large.generated_tokens == plain.large.generated_tokens >= 12
    assert verified_run.large.decode_passes < plain.large.decode_passes
    # The opening is the large model's own greedy continuation of the prompt.
    path, _ = greedy_path(large64, 12)
    assert verified_run.text.startswith(large64.decode(path[:11]))


# ------------------------------------------------------------------ first_layers
def test_first_layers_shares_weights_and_leaves_the_original(
    large32: TransformersBackend,
) -> None:
    model = large32.model
    prompt = prompt_of(large32)
    before = large32.new_session(prompt, GREEDY).next_logits()
    cut = large32.first_layers(2)
    assert cut.name == "l32[:2]"
    assert cut.tokenizer_fingerprint == large32.tokenizer_fingerprint
    assert len(cut.model.model.layers) == cut.model.config.num_hidden_layers == 2
    assert len(model.model.layers) == model.config.num_hidden_layers == 3
    original = dict(model.named_parameters())
    for name, param in cut.model.named_parameters():
        assert param.data_ptr() == original[name].data_ptr(), name
    after = large32.new_session(prompt, GREEDY).next_logits()
    assert torch.equal(before, after)  # same model, same shapes: bit-equal
    for layers in (0, -1, 3, 4):
        with pytest.raises(InvalidRequestError, match="between 1 and 2"):
            large32.first_layers(layers)


def test_first_layers_equals_a_model_built_with_those_layers(
    large32: TransformersBackend,
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**large32.model.config.to_dict(), "num_hidden_layers": 2})
    reference = LlamaForCausalLM(config).eval()
    state = {k: v for k, v in large32.model.state_dict().items() if ".layers.2." not in k}
    reference.load_state_dict(state, strict=True)
    cut = large32.first_layers(2)
    ids = prompt_of(large32) + large32.encode(" Wait, that is not right.")
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([ids])).logits[0]
    # Same kernels and shapes on the whole sequence; one session forward per position differs
    # by the measured float32 bound.
    session = cut.new_session(ids[:5], GREEDY)
    rows = session.score(ids[5:])
    torch.testing.assert_close(rows, expected[4:], atol=ATOL32, rtol=0.0)
    # ... and the 3-layer model is not what the cut computes.
    full = large32.new_session(ids[:5], GREEDY).score(ids[5:])
    assert float((full - rows).abs().max()) > 100 * ATOL32
