"""The llama.cpp backend (``llama-cpp-python``): the fast path for CPU and GGUF users.

Invariants of :class:`LlamaCppSession`:

* The session owns one llama.cpp context for its whole life (taken from the backend's pool and
  given back on :meth:`~LlamaCppSession.close`); two requests never write into one context.
* ``ctx.n_tokens`` is the number of leading ids in the KV cache; cropping is setting it lower
  (``Llama.eval`` removes the KV cells past it before decoding), which costs microseconds. State
  is never saved for rollback (``save_state`` would copy the whole scores array).
* Logits are read right after each ``eval`` through ``get_logits_ith(-1)`` and copied: the buffer
  is stale after a crop, so the session always re-evaluates at least one id before sampling.
* A context handed to a new request keeps its previous tokens; the new prompt reuses their
  longest common prefix (cross-request prefix caching for free).

Built against ``llama-cpp-python==0.3.36`` (uses ``Llama._ctx``, a private attribute).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from langchain_spthink.backends._common import (
    BackendBase,
    ChatRequest,
    LocalSession,
    check_prompt,
    require_chat_template,
    resolve_stop_texts,
)
from langchain_spthink.backends.base import vocab_fingerprint
from langchain_spthink.engine.handoff import common_prefix_length
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import BackendError, ModelLoadError
from langchain_spthink.threads import resolve_threads

__all__ = ["LlamaCppBackend", "LlamaCppSession", "LLAMA_CPP_VERSION"]

LLAMA_CPP_VERSION = "0.3.36"


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ModelLoadError(
            "the llama.cpp backend needs llama-cpp-python: "
            f"pip install 'langchain-spthink[llamacpp]' (llama-cpp-python=={LLAMA_CPP_VERSION}; "
            "it builds from source in about 8 minutes the first time)"
        ) from exc
    return llama_cpp


class LlamaCppBackend(BackendBase):
    """A GGUF model run in-process by llama.cpp.

    Args:
        model_path: Path of the ``.gguf`` file.
        name: Name shown in events and metadata (defaults to the file name).
        chat_template: Jinja chat template; defaults to the GGUF's ``tokenizer.chat_template``.
        n_ctx: Context length of each llama.cpp context.
        n_threads: CPU threads for decoding and prompt processing (default:
            :func:`~langchain_spthink.threads.default_threads`, which holds up when other
            processes share the CPU).
        max_contexts: Contexts created on demand for concurrent sessions (weights are
            memory-mapped and shared). A session waits for a free context beyond that.
        wait_timeout: Seconds a new session waits for a free context before failing.
        eos_ids: Ids that end generation (default: the model's EOS and end-of-turn ids).
        eos_tokens: Extra tokens (text) that end generation, e.g. an alias's end of turn.
        stop_texts: Texts that end this model's turn, like an EOS token (the output ends before
            them); default: the chat template's (``models.template_stop_texts``).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        name: str | None = None,
        chat_template: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_contexts: int = 2,
        wait_timeout: float = 600.0,
        eos_ids: frozenset[int] | None = None,
        eos_tokens: Sequence[str] = (),
        stop_texts: Sequence[str] | None = None,
    ) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        self._llama_cpp = _import_llama()
        self.model_path = path
        self._name = name or path.name
        self._context_length = n_ctx
        self._threads = resolve_threads(n_threads)
        self._max_contexts = max_contexts
        self._wait_timeout = wait_timeout
        self._pool_lock = threading.Condition()
        self._idle: list[Any] = []
        self._created = 0
        first = self._new_context()  # fails fast on a corrupt file
        self._idle.append(first)
        # Tokenizer calls only read the vocabulary, so they may use this context while a
        # session decodes on it.
        self._tok = first
        metadata: dict[str, str] = dict(first.metadata)
        self.chat_template = chat_template or metadata.get("tokenizer.chat_template")
        self.stop_texts = resolve_stop_texts(stop_texts, self.chat_template)
        self._n_vocab = int(first.n_vocab())
        model = first._model
        self._bos_text = model.token_get_text(first.token_bos()) if first.token_bos() >= 0 else ""
        self._eos_text = model.token_get_text(first.token_eos()) if first.token_eos() >= 0 else ""
        self._eos_ids = eos_ids if eos_ids is not None else self._default_eos(first, eos_tokens)
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, spec: str, **kwargs: Any) -> LlamaCppBackend:
        """Load an embedded alias (e.g. ``smollm2-135m-instruct``) or a ``.gguf`` path."""
        from langchain_spthink.models import EMBEDDED_MODELS

        embedded = EMBEDDED_MODELS.get(spec)
        if embedded is not None:
            kwargs.setdefault("chat_template", embedded.chat_template)
            kwargs.setdefault("eos_tokens", embedded.eos_tokens)
            kwargs.setdefault("name", spec)
            return cls(embedded.gguf_path(), **kwargs)
        if not spec.endswith(".gguf"):
            raise ModelLoadError(
                f"the llama.cpp backend loads .gguf files or embedded aliases, got {spec!r}"
            )
        return cls(spec, **kwargs)

    def _new_context(self) -> Any:
        try:
            llama = self._llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self._context_length,
                n_threads=self._threads,
                n_threads_batch=self._threads,
                logits_all=False,
                verbose=False,
            )
        except Exception as exc:
            raise ModelLoadError(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        self._created += 1
        return llama

    def _default_eos(self, llama: Any, extra: Sequence[str]) -> frozenset[int]:
        ids = {int(llama.token_eos())}
        template = self.chat_template or ""
        for text in (*extra, "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"):
            if text in extra or text in template:
                found = llama.tokenize(text.encode(), add_bos=False, special=True)
                if len(found) == 1:
                    ids.add(int(found[0]))
        return frozenset(i for i in ids if i >= 0)

    # ------------------------------------------------------------ protocol
    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the id -> token-string table.

        Equal to a transformers tokenizer's of the same vocabulary (e.g. the same GGUF).
        """
        if self._fingerprint is None:
            model = self._tok._model
            self._fingerprint = vocab_fingerprint(
                model.token_get_text(i) for i in range(self._n_vocab)
            )
        return self._fingerprint

    def encode(self, text: str) -> list[int]:
        """Tokenize (special tokens in the text are parsed, no BOS added)."""
        ids = self._tok.tokenize(text.encode(), add_bos=False, special=True)
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize, dropping special tokens' text."""
        data: bytes = self._tok.detokenize([int(i) for i in ids], special=False)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        r"""Every id's bytes, in id order, as constrained decoding reads the vocabulary.

        Control tokens (and ``<...>`` user-defined ones) get a ``\xff`` prefix, llguidance's
        mark of a special token that no grammar text matches.
        """
        lc = self._llama_cpp
        vocab = self._tok._model.vocab
        size = 1024
        buffer = ctypes.create_string_buffer(size + 1)
        out: list[bytes] = []
        for token in range(self._n_vocab):
            n = lc.llama_token_to_piece(vocab, token, buffer, size, 0, True)
            if n < 0:
                raise BackendError(f"{self.name}: token {token} does not fit {size} bytes")
            piece = buffer.raw[:n]
            attr = lc.llama_vocab_get_attr(vocab, token)
            if attr & lc.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & lc.LLAMA_TOKEN_ATTR_USER_DEFINED
                and piece.startswith(b"<")
                and piece.endswith(b">")
            ):
                piece = b"\xff" + piece
            out.append(piece)
        return out

    def _chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        """Render messages with the chat template (Jinja, as transformers does) and tokenize."""
        template = require_chat_template(self.chat_template, self.name)
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered: Any = render_jinja_template(
            conversations=[list(request.messages)],
            tools=request.tool_list,
            chat_template=template,
            add_generation_prompt=request.generation_prompt,
            continue_final_message=request.continue_final_message,
            bos_token=self._bos_text,
            eos_token=self._eos_text,
        )
        return self.encode(str(rendered[0][0]))

    @property
    def max_contexts(self) -> int:
        """Sessions that can be open at once; more wait (``spthink serve`` caps its default)."""
        return self._max_contexts

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> LlamaCppSession:
        """Open a session on a free context (waits while all ``max_contexts`` are busy)."""
        check_prompt(prompt_ids, self.name, self._context_length)
        return LlamaCppSession(self, self._acquire(prompt_ids), prompt_ids, sampling)

    def close(self) -> None:
        """Free every idle context (and the model weights they map); busy ones stay usable."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
            self._created -= len(idle)
        for llama in idle:
            llama.close()

    # ------------------------------------------------------------ context pool
    def _acquire(self, prompt_ids: Sequence[int]) -> Any:
        with self._pool_lock:
            while not self._idle and self._created >= self._max_contexts:
                if not self._pool_lock.wait(self._wait_timeout):
                    raise BackendError(
                        f"{self.name}: no free llama.cpp context after {self._wait_timeout} s "
                        f"(max_contexts={self._max_contexts})"
                    )
            if not self._idle:
                return self._new_context()
            # The idle context whose tokens share the longest prefix with the prompt.
            best = max(
                self._idle,
                key=lambda c: common_prefix_length(c.input_ids[: c.n_tokens].tolist(), prompt_ids),
            )
            self._idle.remove(best)
            return best

    def _release(self, llama: Any) -> None:
        with self._pool_lock:
            self._idle.append(llama)
            self._pool_lock.notify()


class LlamaCppSession(LocalSession):
    """One request's sequence on one llama.cpp context."""

    def __init__(
        self,
        backend: LlamaCppBackend,
        llama: Any,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
    ) -> None:
        super().__init__(prompt_ids, sampling)
        self._backend = backend
        self._llama: Any | None = llama
        # Reuse what the context already holds from an earlier request.
        held = llama.input_ids[: llama.n_tokens].tolist()
        llama.n_tokens = common_prefix_length(held, self._ids)

    @property
    def cached(self) -> int:
        """Leading ids in the KV cache."""
        return int(self._context().n_tokens)

    def _context(self) -> Any:
        if self._llama is None:
            raise BackendError("the session is closed")
        return self._llama

    def _crop(self, length: int) -> None:
        """Crop the KV cache by lowering ``n_tokens``."""
        llama = self._context()
        if llama.n_tokens > length:
            llama.n_tokens = length

    def next_logits(self) -> torch.Tensor:
        """Logits ``[vocab]`` after :attr:`ids`, evaluating only ids not in the cache."""
        llama = self._context()
        if llama.n_tokens >= len(self._ids):
            llama.n_tokens = len(self._ids) - 1  # logits of the last id are gone: re-evaluate it
        pending = self._ids[llama.n_tokens :]
        llama.eval(pending)
        self._forwarded += len(pending)
        row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(self._backend._n_vocab,))
        return torch.from_numpy(row.copy())

    def score(self, tokens: Sequence[int]) -> torch.Tensor:
        """Append ``tokens``; logits ``[len(tokens) + 1, vocab]`` of their positions and the next.

        One llama.cpp batch holds the pending ids and ``tokens``, with logits requested for the
        last ``len(tokens) + 1`` positions (pending ids beyond ``n_batch`` are evaluated first).
        """
        llama = self._context()
        self._ids.extend(int(t) for t in tokens)
        keep = len(tokens) + 1
        if llama.n_tokens > len(self._ids) - keep:
            llama.n_tokens = len(self._ids) - keep  # their logits are gone: re-evaluate them
        pending = self._ids[llama.n_tokens :]
        if len(pending) > llama.n_batch:
            head = max(len(pending) - llama.n_batch, len(pending) - keep)
            if len(pending) - head > llama.n_batch:
                raise BackendError(f"{self._backend.name}: {keep} scored ids exceed n_batch")
            llama.eval(pending[:head])
            self._forwarded += head
            pending = pending[head:]
        n_past, n = int(llama.n_tokens), len(pending)
        llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
        batch = llama._batch
        batch.set_batch(batch=pending, n_past=n_past, logits_all=False)
        for i in range(n - keep, n):
            batch.batch.logits[i] = True
        llama._ctx.decode(batch)
        llama.input_ids[n_past : n_past + n] = pending
        llama.n_tokens = n_past + n
        self._forwarded += n
        n_vocab = self._backend._n_vocab
        rows = [
            np.ctypeslib.as_array(llama._ctx.get_logits_ith(i), shape=(n_vocab,)).copy()
            for i in range(n - keep, n)
        ]
        return torch.from_numpy(np.stack(rows))

    def close(self) -> None:
        """Give the context back to the pool (its tokens stay for prefix reuse)."""
        if self._llama is not None:
            llama, self._llama = self._llama, None
            self._backend._release(llama)
