r"""Scripted fake backends with known outputs, for testing engines, chains and agents offline.

A :class:`ScriptedBackend` writes text from a *script*: a list of paragraphs. At any point its next
token is token ``j`` of paragraph ``k``, where ``k`` is the number of ``"\\n\\n"`` in the output so
far and ``j`` the number of tokens since the last one. So after another model wrote part of a
paragraph, a scripted model carries on from the same offset of its own paragraph, which makes the
expected output of every branch of the control loop easy to write down by hand.

Two tokenizers are available: ``"word"`` (words with their leading space; ``"\\n"`` alone) and
``"char"`` (one token per character), to test the id and the text hand-off.

Constrained decoding works on scripted models too: :meth:`ScriptedBackend.constraint_tokenizer`
gives llguidance the vocabulary as it stands (the script's pieces and every printable ASCII
character are registered first), and a constrained session writes the scripted token when the
constraint allows it, else the allowed token that ends soonest: EOS, then a piece starting with
``"`` (closes a string), then ``}`` or ``]``, then ``,`` or ``:``, then any other piece
(shortest, then lowest id first). So a script that strays from the grammar still reaches a
complete JSON value in a few tokens.
"""

from __future__ import annotations

import re
import string
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from langchain_spthink.backends._common import (
    BackendBase,
    ChatRequest,
    SequenceSession,
    check_prompt_fits,
)
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import BackendError, InvalidRequestError

if TYPE_CHECKING:
    import llguidance

    from langchain_spthink.engine.sampling import TokenConstraint

__all__ = ["ScriptedBackend", "ScriptedSession", "VerifyingScriptedSession", "tokenize_words"]

EOS_TEXT = "<eos>"
_WORD = re.compile(r"\n| ?[^\s]+|[^\S\n]")


def tokenize_words(text: str) -> list[str]:
    r"""Split text into word tokens: ``"\\n"``, words with one optional leading space, spaces."""
    return _WORD.findall(text)


class _Vocab:
    """A growing string <-> id table; id 0 is EOS."""

    def __init__(self) -> None:
        self.by_text: dict[str, int] = {EOS_TEXT: 0}
        self.by_id: list[str] = [EOS_TEXT]
        self._lock = threading.Lock()  # sessions may run in worker threads

    def id(self, piece: str) -> int:
        found = self.by_text.get(piece)
        if found is not None:
            return found
        with self._lock:
            if piece not in self.by_text:
                self.by_text[piece] = len(self.by_id)
                self.by_id.append(piece)
            return self.by_text[piece]


_VOCABS = {"word": _Vocab(), "char": _Vocab()}


class ScriptedBackend(BackendBase):
    r"""A deterministic fake model that writes paragraphs from a script.

    Args:
        script: Paragraphs; paragraph ``k`` is written after the ``k``-th ``"\\n\\n"``.
            Past the last paragraph the model writes EOS.
        name: Model name.
        tokenizer: ``"word"`` or ``"char"``.
        context_length: Maximum sequence length.
        fail_after: Raise ``RuntimeError`` when asked for this many tokens in total (fault
            injection; a verification that would return more raises); ``None`` never fails.
        on_token: Called after every sampled token (e.g. to advance a fake clock).
        stop_texts: Texts that end this model's turn (see the backend protocol).
        verifies: Sessions can verify proposed ids in one "forward" (as local runtimes'
            sessions); default: unless the backend plays a remote one (``is_remote``), whose
            sessions cannot.

    EOS is id 0.
    """

    def __init__(
        self,
        script: Sequence[str],
        *,
        name: str = "scripted",
        tokenizer: str = "word",
        context_length: int = 100_000,
        fail_after: int | None = None,
        on_token: Callable[[], None] | None = None,
        stop_texts: Sequence[str] = (),
        verifies: bool | None = None,
    ) -> None:
        self.script = list(script)
        self.verifies = not getattr(self, "is_remote", False) if verifies is None else verifies
        self.stop_texts = tuple(stop_texts)
        self._name = name
        self._eos_ids = frozenset({0})
        self.tokenizer_kind = tokenizer
        self.vocab = _VOCABS[tokenizer]
        self._context_length = context_length
        self.fail_after = fail_after
        self.on_token = on_token
        self.tokens_sampled = 0
        self.sessions: list[ScriptedSession] = []
        self.last_prompt = ""

    @property
    def tokenizer_fingerprint(self) -> str:
        """Same for every scripted backend with the same tokenizer kind."""
        return f"scripted-{self.tokenizer_kind}"

    def pieces(self, text: str) -> list[str]:
        """Token strings of ``text``."""
        return tokenize_words(text) if self.tokenizer_kind == "word" else list(text)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``."""
        return [self.vocab.id(p) for p in self.pieces(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (EOS dropped)."""
        return "".join(self.vocab.by_id[i] for i in ids if i != 0)

    def next_piece(self, output: str) -> str:
        """The token this model writes after ``output``."""
        k = output.count("\n\n")
        if k >= len(self.script):
            return EOS_TEXT
        tail = output[output.rfind("\n\n") + 2 :] if k else output
        offset = len(self.pieces(tail))
        paragraph = self.pieces(self.script[k])
        return paragraph[offset] if offset < len(paragraph) else EOS_TEXT

    def constraint_tokenizer(self) -> llguidance.LLTokenizer:
        """An llguidance tokenizer over the current vocabulary (for constrained decoding).

        The script's pieces and every printable ASCII character are registered first, so any
        JSON text can be written; ids registered later are never allowed by constraints built
        from this tokenizer.
        """
        import llguidance

        for paragraph in self.script:
            self.encode(paragraph)
        for char in string.printable:
            self.vocab.id(char)
        snapshot = list(self.vocab.by_id)
        known = {piece: i for i, piece in enumerate(snapshot)}

        class _Wrapped:
            eos_token_id = 0
            bos_token_id = None
            special_token_ids = [0]
            tokens = [b"\xff" + EOS_TEXT.encode(), *(p.encode() for p in snapshot[1:])]

            def __call__(inner, text: str | bytes) -> list[int]:  # noqa: N805
                if isinstance(text, bytes):
                    text = text.decode("utf-8", errors="replace")
                ids: list[int] = []
                for piece in self.pieces(text):
                    found = known.get(piece)
                    ids.extend([found] if found is not None else (known.get(c, 0) for c in piece))
                return ids

        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Wrapped()), eos_token=0)

    def _chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        """Render messages as ``role: content`` lines, then ``assistant:``."""
        lines = [f"{m['role']}: {m.get('content') or ''}" for m in request.messages]
        if request.tools:
            names = (str(t.get("function", t).get("name")) for t in request.tools)
            lines.insert(0, "tools: " + ", ".join(names))
        text = "\n".join(lines)
        if request.generation_prompt:
            text += "\nassistant:"
        self.last_prompt = text
        return self.encode(text)

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> ScriptedSession:
        """Open a session.

        A session opened from a snapshot of an open session's sequence (a fork, as concurrent
        drafts make) keeps that session's prompt length, so the script sees the same output.
        """
        prompt_len = len(prompt_ids)
        check_prompt_fits(prompt_len, self.name, self._context_length)  # as real backends do
        for other in self.sessions:
            if not other.closed and list(prompt_ids[: other.prompt_len]) == list(
                other.ids[: other.prompt_len]
            ):
                prompt_len = other.prompt_len
                break
        kind = VerifyingScriptedSession if self.verifies else ScriptedSession
        session = kind(self, prompt_ids, prompt_len, sampling)
        self.sessions.append(session)
        return session


class ScriptedSession(SequenceSession):
    """Session of a :class:`ScriptedBackend`; counts forwarded positions like a real cache."""

    def __init__(
        self,
        backend: ScriptedBackend,
        prompt_ids: Sequence[int],
        prompt_len: int | None = None,
        sampling: SamplingParams | None = None,
    ) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty: a session needs at least one token")
        super().__init__(prompt_ids)
        self.backend = backend
        self.prompt_len = len(prompt_ids) if prompt_len is None else prompt_len
        self._cached = 0
        self.closed = False
        self.truncations: list[int] = []
        self.sampling = sampling or SamplingParams()
        self.seeds: list[int | None] = [self.sampling.seed]  # the seed of each step, in order
        self.verifications: list[tuple[list[int], list[int]]] = []  # (proposal, ids returned)

    def truncate(self, length: int) -> None:
        """Crop (any ``length``, recorded in :attr:`truncations`)."""
        self.truncations.append(length)
        del self._ids[length:]
        self._cached = min(self._cached, length)

    def stream(self, max_new: int, *, constraint: TokenConstraint | None = None) -> Iterator[int]:
        """Write scripted tokens (constrained: the scripted one if allowed, else the first)."""
        for _ in range(max_new):
            self._check(1)
            backend = self.backend
            self._catch_up(0)
            self._cached = len(self._ids)
            output = backend.decode(self._ids[self.prompt_len :])
            token = backend.vocab.id(backend.next_piece(output))
            if constraint is not None:
                token = _constrained(constraint, token, backend.vocab.by_id)
            self._ids.append(token)
            self._sampled(1)
            yield token

    def _check(self, n: int) -> None:
        """Refuse to write ``n`` more ids on a closed session or past ``fail_after``."""
        if self.closed:
            raise RuntimeError("session used after close")
        backend = self.backend
        if backend.fail_after is not None and backend.tokens_sampled + n > backend.fail_after:
            raise RuntimeError(f"{backend.name} failed (injected)")

    def _catch_up(self, extra: int) -> None:
        """Count one forward of the pending ids (at least the last one) and ``extra`` more."""
        if self._cached >= len(self._ids):
            self._cached = len(self._ids) - 1
        self._forwarded += len(self._ids) - self._cached + extra

    def _sampled(self, n: int) -> None:
        """``n`` ids were written: count them, calling ``on_token`` after each."""
        backend = self.backend
        for _ in range(n):
            backend.tokens_sampled += 1
            if backend.on_token is not None:
                backend.on_token()

    def reseed(self, seed: int | None) -> None:
        """Record the seed of the next step (a script writes the same tokens whatever the seed)."""
        self.sampling = replace(self.sampling, seed=seed)
        self.seeds.append(seed)

    def close(self) -> None:
        """Mark closed."""
        self.closed = True


class VerifyingScriptedSession(ScriptedSession):
    """A scripted session that also verifies proposed ids, as local runtimes' sessions do."""

    def verify(self, proposal: Sequence[int]) -> list[int]:
        """Check proposed ids in one "forward": the scripted ids they agree with, plus one more.

        Exactly what :meth:`stream` would write (the script is greedy); ``on_token`` is called
        per returned id, which count as sampled ones: a verification that would pass
        ``fail_after`` raises.
        """
        self._check(0)
        backend = self.backend
        output = backend.decode(self._ids[self.prompt_len :])
        new: list[int] = []
        for token in [*proposal, None]:
            mine = backend.vocab.id(backend.next_piece(output + backend.decode(new)))
            new.append(mine)
            if mine != token:
                break
        self._check(len(new))
        self._catch_up(len(proposal))
        self.verifications.append((list(proposal), list(new)))
        self._ids.extend(new)
        self._cached = len(self._ids) - 1
        self._sampled(len(new))
        return new


def _fallback_rank(piece: str) -> int:
    """How soon a piece ends a constrained value: EOS, then JSON closers, then the rest."""
    if piece == EOS_TEXT:
        return 0
    first = piece[:1]
    return 1 if first == '"' else 2 if first in "}]" else 3 if first in ",:" else 4


def _constrained(constraint: TokenConstraint, token: int, pieces: Sequence[str]) -> int:
    """The scripted ``token`` if ``constraint`` allows it, else the best-ranked allowed id.

    Ranked by :func:`_fallback_rank`, then by length (a long piece can reopen what a short one
    closes, e.g. ``"key":``), then by id.
    """
    logits = torch.zeros(len(pieces))
    logits[token] = 1.0
    allowed = torch.isfinite(constraint.mask(logits))
    if not bool(allowed[token]):
        found = [int(i) for i in allowed.nonzero().flatten()]
        if not found:
            raise BackendError("the constraint allows no token of the scripted vocabulary")
        token = min(found, key=lambda i: (_fallback_rank(pieces[i]), len(pieces[i]), i))
    constraint.accept(token)
    return token
