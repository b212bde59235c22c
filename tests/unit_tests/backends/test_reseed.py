"""Session.reseed: a reseeded session samples like a fresh session opened with that seed."""

from __future__ import annotations

from typing import Any

from langchain_spthink.backends.base import reseed
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.engine.sampling import SamplingParams

SAMPLED = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=5)


def test_a_reseeded_transformers_session_samples_as_a_fresh_one(tiny_pair: tuple[Any, Any]) -> None:
    backend = tiny_pair[0]
    prompt = [1, 2, 3]
    session = backend.new_session(prompt, SAMPLED)
    first = list(session.stream(6))
    session.truncate(len(prompt))
    session.reseed(11)
    again = list(session.stream(6))
    fresh = list(backend.new_session(prompt, SamplingParams(1.0, 1.0, 0, 11)).stream(6))
    assert again == fresh
    assert session.sampling == SamplingParams(1.0, 1.0, 0, 11)  # only the seed changed
    session.truncate(len(prompt))
    session.reseed(5)
    assert list(session.stream(6)) == first


def test_reseed_helper_tolerates_sessions_without_the_method() -> None:
    session = ScriptedBackend(["a"]).new_session([1], SAMPLED)
    reseed(session, 9)
    assert session.seeds == [5, 9] and session.sampling.seed == 9

    class Old:  # a session written before reseed existed
        pass

    reseed(Old(), 3)  # type: ignore[arg-type]
