"""Each sampled step gets its own seed, derived from the request's seed (decisions.step_seed).

A *dice* backend writes its script's structure (paragraphs, cue words) but draws every ``x``
word from a random generator seeded like a real session's: from the seed it opened with, again
at every :meth:`reseed`. Its output therefore depends on the seeds the engine hands out.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_spthink.backends.scripted import ScriptedBackend, ScriptedSession
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.decisions import step_seed
from langchain_spthink.engine.events import DelegationEvent, FinishEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams

SMALL = [f"{w} x x x x x x.\n\n" for w in ("So", "Wait", "So", "Wait,", "So", "Hmm, check")]
LARGE = [f"{w} x x x x x x.\n\n" for w in ("A", "But", "A", "Hmm", "A", "Let me check")]


class DiceSession(ScriptedSession):
    """A scripted session whose ``x`` words are random draws (see the module docstring)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rng = random.Random(self.sampling.seed)

    def reseed(self, seed: int | None) -> None:
        super().reseed(seed)
        self.rng = random.Random(seed)

    def stream(self, max_new: int, *, constraint: Any = None) -> Iterator[int]:
        assert isinstance(self.backend, DiceBackend)
        self.backend.used.append(self.sampling.seed)
        for token in super().stream(max_new, constraint=constraint):
            if self.backend.vocab.by_id[token] == " x":
                self._ids[-1] = token = self.backend.vocab.id(self.rng.choice([" p", " q", " r"]))
            yield token


class DiceBackend(ScriptedBackend):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.used: list[int | None] = []  # the seed of every step, in order

    def next_piece(self, output: str) -> str:
        # The script's structure whatever the draws: every drawn word stands for an "x".
        for drawn in (" p", " q", " r"):
            output = output.replace(drawn, " x")
        return super().next_piece(output)

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ScriptedSession:
        session = DiceSession(self, prompt_ids, len(prompt_ids), sampling)
        for other in self.sessions:  # a fork keeps its session's prompt length (as scripted)
            if not other.closed and list(prompt_ids[: other.prompt_len]) == list(
                other.ids[: other.prompt_len]
            ):
                session.prompt_len = other.prompt_len
                break
        self.sessions.append(session)
        return session


def run(
    seed: int | None, *, temperature: float = 0.6, concurrent: bool = False, **cfg: Any
) -> tuple[FinishEvent, DiceBackend, DiceBackend]:
    small, large = DiceBackend(SMALL, name="s"), DiceBackend(LARGE, name="l")
    config = SpeculativeThinkingConfig(draft_tokens=3, verify_tokens=3, **cfg)
    with ThreadPoolExecutor(1) as pool:
        engine = SpeculativeEngine(
            small,
            large,
            config,
            executor=pool if concurrent else None,
            concurrent_drafts=concurrent,
        )
        request = Request(
            small.encode("q:"),
            large.encode("q:"),
            max_tokens=200,
            sampling=SamplingParams(temperature=temperature, seed=seed),
        )
        events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert any(isinstance(e, DelegationEvent) for e in events)
    return finish, small, large


def test_every_sampled_step_gets_its_own_seed() -> None:
    finish, small, large = run(3)
    assert len(small.used) >= 4 and len(large.used) >= 2
    assert small.used == [step_seed(3, "small", k) for k in range(len(small.used))]
    assert large.used == [step_seed(3, "large", k) for k in range(len(large.used))]
    assert len(set(small.used + large.used)) == len(small.used) + len(large.used)
    assert small.used[:1] == [3] and large.used[:1] == [4]  # the first steps: as always


def test_the_same_request_seed_reproduces_the_output() -> None:
    first, second = run(3)[0], run(3)[0]
    assert first.text == second.text
    others = {run(seed)[0].text for seed in (4, 5, 6)}
    assert others - {first.text}  # other seeds draw other words


def test_steps_no_longer_replay_one_random_stream() -> None:
    # Every step restarting from the request's seed (the old remote behaviour) draws the same
    # words at the start of each step; per-step seeds do not.
    _, small, _ = run(3)
    assert len(set(small.used)) == len(small.used)


def test_greedy_and_unseeded_requests_keep_their_session_seeds() -> None:
    _, small, large = run(3, temperature=0.0)
    assert set(small.used) == {3} and set(large.used) == {4}
    _, small, large = run(None)
    assert set(small.used) == {None} and set(large.used) == {None}


def test_concurrent_forks_take_their_own_step_seeds() -> None:
    finish, _, large = run(3, concurrent=True, begin=True, begin_tokens=2)
    assert finish.extra["concurrent_steps"] >= 1
    assert large.used[0] == 4  # the opening, on the request's session
    assert len(set(large.used)) == len(large.used)  # forks never reopen with a used seed
    assert run(3, concurrent=True, begin=True, begin_tokens=2)[0].text == finish.text


def test_request_without_sampling_uses_the_configs() -> None:
    small, large = ScriptedBackend(["a.\n\n"]), ScriptedBackend(["b.\n\n"])
    seen: list[SamplingParams] = []
    for backend in (small, large):
        original = backend.new_session

        def spy(prompt: Sequence[int], sampling: SamplingParams, _o: Any = original) -> Any:
            seen.append(sampling)
            return _o(prompt, sampling)

        backend.new_session = spy  # type: ignore[method-assign]
    config = SpeculativeThinkingConfig(temperature=0.2, top_p=0.5, top_k=7)
    engine = SpeculativeEngine(small, large, config)
    list(engine.generate(Request(small.encode("q"), large.encode("q"), max_tokens=8)))
    assert seen == [SamplingParams(0.2, 0.5, 7, None), SamplingParams(0.2, 0.5, 7, None)]
