"""Fakes shared by the reliability tests (``test_reliability_*.py``).

* :class:`Recording` wraps any backend and records the sessions it opens, so a test can check that
  every session of a request was closed (caches released) whatever the runtime.
* :func:`one_torch_thread` keeps timing and throughput tests off OpenMP spin-waits.
* :class:`ByteBackend` is a model whose vocabulary is the 256 bytes: it writes a scripted byte
  string one byte per token, so every multi-byte UTF-8 character is split over several tokens
  (what byte-fallback tokens of SentencePiece / byte-level BPE do), and invalid UTF-8 is possible.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import InvalidRequestError


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread while the block runs.

    On a small shared machine, requests running in several Python threads each with N OpenMP
    threads spin-wait for cores (measured here: a 6-token request of the embedded pair took
    2-13 s with 2 threads under load, 0.7 s with 1); the results are the same either way.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RecordedSession:
    """Delegates to a real session and remembers whether it was closed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.closed = False

    @property
    def ids(self) -> Sequence[int]:
        return self.inner.ids  # type: ignore[no-any-return]

    @property
    def forwarded(self) -> int:
        return int(self.inner.forwarded)

    def extend(self, ids: Sequence[int]) -> None:
        self.inner.extend(ids)

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def stream(self, max_new: int) -> Iterator[int]:
        return self.inner.stream(max_new)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class Recording:
    """A backend wrapper that records every session opened on the wrapped backend."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sessions: list[RecordedSession] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> RecordedSession:
        session = RecordedSession(self.inner.new_session(prompt_ids, sampling))
        with self._lock:
            self.sessions.append(session)
        return session

    def all_closed(self) -> bool:
        with self._lock:
            return all(s.closed for s in self.sessions)


EOS = 256


class ByteSession:
    """Writes ``backend.output`` one byte per token, then EOS."""

    def __init__(self, backend: ByteBackend, prompt_ids: Sequence[int]) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty")
        self.backend = backend
        self.prompt_len = len(prompt_ids)
        self._ids = list(prompt_ids)
        self.closed = False

    @property
    def ids(self) -> Sequence[int]:
        return self._ids

    @property
    def forwarded(self) -> int:
        return len(self._ids)

    def extend(self, ids: Sequence[int]) -> None:
        self._ids.extend(ids)

    def truncate(self, length: int) -> None:
        del self._ids[length:]

    def stream(self, max_new: int) -> Iterator[int]:
        for _ in range(max_new):
            done = len(self._ids) - self.prompt_len
            out = self.backend.output
            token = out[done] if done < len(out) else EOS
            self._ids.append(token)
            yield token

    def close(self) -> None:
        self.closed = True


class ByteBackend:
    """A fake model over the 256-byte vocabulary (id 256 is EOS) writing ``output``."""

    def __init__(self, output: bytes, name: str = "bytes") -> None:
        self.output = output
        self.name = name
        self.eos_ids = frozenset({EOS})
        self.context_length = 1 << 20
        self.tokenizer_fingerprint = "bytes"
        self.sessions: list[ByteSession] = []

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i != EOS).decode("utf-8", errors="replace")

    def chat_prompt_ids(self, messages: Sequence[dict[str, Any]], **_: Any) -> list[int]:
        text = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in messages)
        return self.encode(text + "\nassistant:")

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ByteSession:
        session = ByteSession(self, prompt_ids)
        self.sessions.append(session)
        return session
