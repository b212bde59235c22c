"""Cross-tokenizer hand-off and incremental detokenization on the real embedded tokenizers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.detok import IncrementalDetokenizer
from langchain_spthink.engine.handoff import common_prefix_length, resync

pytestmark = pytest.mark.embedded

pieces = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.lists(
            st.sampled_from(list("ab xyz09+-=.,\n\t") + ["é", "日本", "🙂", " Wait", "\n\n"]),
            min_size=1,
            max_size=12,
        ).map("".join),
    ),
    min_size=1,
    max_size=10,
)


class ListSession:
    """A cache-free session that records what it was asked to do."""

    def __init__(self, prompt: Sequence[int]) -> None:
        self._ids = list(prompt)
        self.truncated_to: list[int] = []

    @property
    def ids(self) -> Sequence[int]:
        return self._ids

    @property
    def forwarded(self) -> int:
        return 0

    def extend(self, ids: Sequence[int]) -> None:
        self._ids.extend(ids)

    def truncate(self, length: int) -> None:
        self.truncated_to.append(length)
        del self._ids[length:]

    def stream(self, max_new: int) -> Iterator[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def tokenizer_pair(small_backend: TransformersBackend, large_backend: TransformersBackend) -> Any:
    assert small_backend.tokenizer_fingerprint != large_backend.tokenizer_fingerprint
    return {"a": small_backend, "b": large_backend}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=pieces)
def test_resync_yields_the_tokenization_of_the_full_text(
    tokenizer_pair: dict[str, TransformersBackend], writes: list[tuple[str, str]]
) -> None:
    prompt = {"a": [1, 2, 3], "b": [7]}
    sessions = {k: ListSession(p) for k, p in prompt.items()}
    text = ""
    for author, piece in writes:
        other = "b" if author == "a" else "a"
        # The writer appends its own ids for the piece (as a model writing would).
        sessions[author].extend(tokenizer_pair[author].encode(piece))
        text += piece
        before = list(sessions[other].ids[len(prompt[other]) :])
        target = tokenizer_pair[other].encode(text)
        added = resync(sessions[other], len(prompt[other]), target)
        assert list(sessions[other].ids) == prompt[other] + target
        keep = common_prefix_length(before, target)
        assert added == len(target) - keep  # only the ids after the common prefix are new
        if keep < len(before):
            assert sessions[other].truncated_to[-1] == len(prompt[other]) + keep


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=1, max_size=40), context=st.text(max_size=10))
def test_incremental_detokenizer_matches_full_decode(
    tokenizer_pair: dict[str, TransformersBackend], text: str, context: str
) -> None:
    for backend in tokenizer_pair.values():
        ctx = backend.encode(context)
        ids = backend.encode(text)
        detok = IncrementalDetokenizer(backend.decode, ctx)
        deltas = [detok.push(i) for i in ids]
        tail = detok.flush()
        full = backend.decode(ctx + ids)
        prefix = backend.decode(ctx)
        assert "".join(deltas) + tail == full[len(prefix) :]
        # no delta ever ends inside a character
        assert all(not d.endswith("\ufffd") for d in deltas)
