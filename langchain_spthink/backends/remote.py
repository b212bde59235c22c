"""A remote model behind an OpenAI-compatible ``/v1/completions`` server, via the ``openai`` client.

Any server speaking the OpenAI completions API works: vLLM, SGLang, llama.cpp server, TGI, ...
The server only sees text; token accounting happens locally with a tokenizer that matches the
served model (loaded alone, never the weights). Invariants of :class:`RemoteSession`:

* ``ids`` is the request's sequence in the *local* tokenizer's space; :meth:`~RemoteSession.extend`
  and :meth:`~RemoteSession.truncate` are pure bookkeeping (no network).
* Every :meth:`~RemoteSession.stream` is one streaming completion request whose prompt is the text
  of the whole sequence (``decode(ids)`` with special tokens kept): servers reject or mangle
  token-id prompts (llama.cpp answers HTTP 500), and their prefix caches (vLLM
  ``--enable-prefix-caching``, SGLang's radix cache, llama.cpp's slot cache) make the repeated
  prefix cheap.
* Streamed text is re-tokenized locally up to the last whitespace run (text after it could still
  merge with the next piece), so every yielded id is final. A server that stops
  on its own (``finish_reason == "stop"``) before ``max_new`` yields one EOS id.
* Closing the generator early closes the HTTP response, so the server stops generating.
* Inside :func:`~langchain_spthink.greenlet_bridge.greenlet_spawn` (the async path of a request
  whose every model is remote) a stream uses ``openai.AsyncOpenAI`` (one client per backend and
  event loop) and suspends on each read with
  :func:`~langchain_spthink.greenlet_bridge.await_only`, so the loop runs other requests while it
  waits; elsewhere it uses the synchronous client. Same requests, ids and errors either way.
* Every failure (connection refused, timeout, HTTP error after retries, malformed or truncated
  stream) is raised from :meth:`~RemoteSession.stream` as :class:`BackendError` with the cause.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from langchain_spthink.backends._common import (
    BackendBase,
    ChatRequest,
    SequenceSession,
    check_prompt,
    hf_vocab_fingerprint,
    render_hf_chat,
    resolve_stop_texts,
)
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import BackendError, InvalidRequestError, ModelLoadError
from langchain_spthink.greenlet_bridge import await_only, in_bridge

if TYPE_CHECKING:
    from openai import AsyncOpenAI, OpenAI
    from transformers import PreTrainedTokenizerBase

    from langchain_spthink.backends.base import Backend
    from langchain_spthink.engine.sampling import TokenConstraint

__all__ = ["RemoteBackend", "RemoteSession", "load_tokenizer"]

API_KEY_ENVS = ("SPTHINK_REMOTE_API_KEY", "OPENAI_API_KEY")
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")


def load_tokenizer(spec: str) -> tuple[PreTrainedTokenizerBase, str | None, tuple[str, ...]]:
    """Load only the tokenizer of a model spec (no weights), offline except for hub ids.

    Args:
        spec: An embedded alias, a ``.gguf`` file, a local model directory or a hub id.

    Returns:
        ``(tokenizer, chat template or None, extra EOS token strings)``.

    Raises:
        ModelLoadError: The spec is unknown or its tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    from langchain_spthink import models

    kind, target = models._classify_spec(spec)
    embedded = models.EMBEDDED_MODELS.get(spec) if kind == "alias" else None
    template = embedded.chat_template if embedded else None
    extra_eos = embedded.eos_tokens if embedded else ()
    try:
        if kind in ("alias", "gguf"):
            root = models._root(None)
            folder: Path | None = None
            if embedded is not None and embedded.filename is None:
                folder = models._valid_cache(root, str(embedded._module().EXPECTED_SHA256))
            path = embedded.gguf_path(root) if embedded else Path(target)
            if folder is None:  # a converted model folder holds the tokenizer already
                folder = models._valid_cache(root, models._sha256(path, root))
            if folder is not None:
                tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            else:
                tok = AutoTokenizer.from_pretrained(
                    str(path.parent), gguf_file=path.name, local_files_only=True
                )
        elif kind == "dir":
            tok = AutoTokenizer.from_pretrained(str(target), local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(str(target))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load the tokenizer of {spec!r}: {exc}") from exc
    return tok, template or getattr(tok, "chat_template", None), extra_eos


class _Tokenizer:
    """What the remote backend needs from a tokenizer, over an HF tokenizer or a Backend."""

    def __init__(
        self,
        *,
        hf: PreTrainedTokenizerBase | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.hf = hf
        self.backend = backend
        self._fingerprint: str | None = None
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        if self.hf is not None:
            return [int(i) for i in self.hf.encode(text, add_special_tokens=False)]
        assert self.backend is not None
        return list(self.backend.encode(text))

    def decode(self, ids: Sequence[int], *, special: bool) -> str:
        if self.hf is not None:
            return str(self.hf.decode(list(ids), skip_special_tokens=not special))
        assert self.backend is not None
        tok = getattr(self.backend, "_tok", None)  # a LlamaCppBackend's llama.cpp tokenizer
        if special and tok is not None and hasattr(tok, "detokenize"):
            data: bytes = tok.detokenize([int(i) for i in ids], special=True)
            return data.decode("utf-8", errors="replace")
        return self.backend.decode(ids)

    @property
    def fingerprint(self) -> str:
        if self.backend is not None:
            return self.backend.tokenizer_fingerprint
        assert self.hf is not None
        with self._lock:
            if self._fingerprint is None:
                self._fingerprint = hf_vocab_fingerprint(self.hf)
            return self._fingerprint


class RemoteBackend(BackendBase):
    """A model served by an OpenAI-compatible ``/v1/completions`` endpoint.

    Args:
        base_url: The server's API root, e.g. ``http://gpu-box:8000/v1``.
        model: The model name the server serves (``--served-model-name`` / ``--model``).
        tokenizer: The served model's tokenizer, used for token accounting and chat templates:
            an embedded alias, ``.gguf`` file, model directory or hub id (only the tokenizer is
            loaded), a loaded ``transformers`` tokenizer, or a :class:`Backend` to borrow
            encode/decode/chat template from (e.g. the local copy of the same model). Defaults
            to ``model`` (servers usually serve hub ids).
        api_key: API key; defaults to ``$SPTHINK_REMOTE_API_KEY``, then ``$OPENAI_API_KEY``,
            then ``"EMPTY"`` (local servers ignore it). Never logged.
        name: Name shown in events and metadata (default ``model``).
        chat_template: Jinja chat template overriding the tokenizer's.
        eos_ids: Ids that end generation (default: the tokenizer's EOS and end-of-turn ids).
        context_length: Maximum prompt + output length (default: the borrowed backend's, else
            the tokenizer's ``model_max_length`` when sensible, else 4096).
        timeout: Seconds for connecting and for each read (between streamed chunks); a server
            that stops answering fails after this long, never hangs.
        max_retries: Retries of a failed request (connection errors, 408/409/429/5xx) with
            exponential backoff, done by the ``openai`` client before any text was streamed.
        strip_bos: Drop a leading BOS from the prompt text because the server adds its own.
            Default: when the local tokenizer adds BOS by itself (servers tokenize text prompts
            the same way).
        extra_body: Extra JSON fields sent with every request (server-specific options).
        stop_texts: Texts that end this model's turn, like an EOS token (the output ends before
            them); default: the chat template's (``models.template_stop_texts``).
    """

    #: Marks a backend whose steps are network-bound: the engine may run them in a worker
    #: thread (concurrent drafts) on a throw-away session opened from a snapshot of the ids.
    is_remote: bool = True
    #: Its sessions' streams suspend on the event loop inside a greenlet bridge (async HTTP):
    #: the chat model's async path runs requests whose every model has this on the loop thread.
    async_streams: bool = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        tokenizer: str | PreTrainedTokenizerBase | Backend | None = None,
        api_key: str | None = None,
        name: str | None = None,
        chat_template: str | None = None,
        eos_ids: frozenset[int] | None = None,
        context_length: int | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        strip_bos: bool | None = None,
        extra_body: dict[str, Any] | None = None,
        stop_texts: Sequence[str] | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai is a dependency
            raise ModelLoadError("the remote backend needs the openai package") from exc
        if not model:
            raise ModelLoadError("a remote backend needs the served model's name (model=...)")
        if timeout <= 0:
            raise ModelLoadError(f"timeout must be positive, got {timeout}")
        self.base_url = base_url
        self.model = model
        self._name = name or model
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.extra_body = dict(extra_body or {})
        key = api_key or next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), "EMPTY")
        self._api_key = key
        self.client: OpenAI = openai.OpenAI(
            base_url=base_url, api_key=key, timeout=self.timeout, max_retries=self.max_retries
        )
        # Async clients, one per event loop (an httpx async pool is bound to its loop).
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI]
        self._async_clients = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        spec = model if tokenizer is None else tokenizer
        borrowed: Backend | None = None
        extra_eos: tuple[str, ...] = ()
        template: str | None
        if isinstance(spec, str):
            hf_loaded, template, extra_eos = load_tokenizer(spec)
            self._tok = _Tokenizer(hf=hf_loaded)
        elif hasattr(spec, "new_session") and hasattr(spec, "encode"):
            borrowed = cast("Backend", spec)
            inner: Any = getattr(spec, "tokenizer", None)
            hf_inner = inner if hasattr(inner, "convert_ids_to_tokens") else None
            self._tok = _Tokenizer(hf=hf_inner, backend=borrowed)
            template = getattr(spec, "chat_template", None)
        elif hasattr(spec, "convert_ids_to_tokens"):
            template = getattr(spec, "chat_template", None)
            self._tok = _Tokenizer(hf=cast("PreTrainedTokenizerBase", spec))
        else:
            raise ModelLoadError(
                "tokenizer must be a model spec, a transformers tokenizer or a Backend, "
                f"got {type(spec).__name__}"
            )
        self.chat_template: str | None = chat_template or template
        self.stop_texts = resolve_stop_texts(stop_texts, self.chat_template)
        self._borrowed = borrowed
        self._eos_ids = eos_ids if eos_ids is not None else self._default_eos(extra_eos)
        if not self._eos_ids:
            raise ModelLoadError(f"{self._name}: the tokenizer has no EOS id; pass eos_ids=...")
        self._eos_id = self._pick_eos()
        self._context_length = int(context_length or self._default_context())
        hf_tok = self._tok.hf
        bos = getattr(hf_tok, "bos_token_id", None) if hf_tok is not None else None
        if strip_bos is None:
            strip_bos = bool(
                hf_tok is not None
                and isinstance(bos, int)
                and hf_tok.encode("a", add_special_tokens=True)[:1] == [bos]
            )
        self._strip_bos_id: int | None = bos if strip_bos and isinstance(bos, int) else None

    def _default_eos(self, extra: tuple[str, ...]) -> frozenset[int]:
        if self._tok.hf is None:
            assert self._tok.backend is not None
            return frozenset(self._tok.backend.eos_ids)
        tok, ids = self._tok.hf, set[int]()
        source = tok.eos_token_id
        ids.update([source] if isinstance(source, int) else source or [])
        names = [*extra, *(n for n in _END_OF_TURN if n in (self.chat_template or ""))]
        vocab = tok.get_vocab()
        ids.update(vocab[n] for n in names if n in vocab)
        return frozenset(int(i) for i in ids)

    def _pick_eos(self) -> int:
        hf = self._tok.hf
        preferred = getattr(hf, "eos_token_id", None) if hf is not None else None
        return preferred if preferred in self._eos_ids else min(self._eos_ids)

    def _default_context(self) -> int:
        if self._borrowed is not None:
            return int(self._borrowed.context_length)
        limit = getattr(self._tok.hf, "model_max_length", None)
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
        return 4096

    # ------------------------------------------------------------ protocol
    @property
    def eos_id(self) -> int:
        """The id yielded when the server stops on its own."""
        return self._eos_id

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the local tokenizer's id -> token table (as the transformers backend's)."""
        return self._tok.fingerprint

    def encode(self, text: str) -> list[int]:
        """Tokenize locally, without adding special tokens."""
        return self._tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize locally, dropping special tokens."""
        return self._tok.decode(ids, special=False)

    def prompt_text(self, ids: Sequence[int]) -> str:
        """The text sent to the server for a sequence (special tokens kept)."""
        if self._strip_bos_id is not None and len(ids) and ids[0] == self._strip_bos_id:
            ids = ids[1:]
        return self._tok.decode(ids, special=True)

    def _chat_prompt_ids(self, request: ChatRequest) -> list[int]:
        """Render OpenAI-style messages with the chat template and tokenize them locally."""
        if self._tok.hf is None:
            assert self._borrowed is not None  # a Backend without a transformers tokenizer
            return list(
                self._borrowed.chat_prompt_ids(
                    request.messages,
                    tools=request.tools,
                    add_generation_prompt=request.add_generation_prompt,
                    continue_final_message=request.continue_final_message,
                )
            )
        return self.encode(render_hf_chat(self._tok.hf, self.chat_template, self.name, request))

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> RemoteSession:
        """Open a request session (no network until the first :meth:`RemoteSession.stream`)."""
        check_prompt(prompt_ids, self.name, self._context_length)
        return RemoteSession(self, prompt_ids, sampling)

    def async_client(self) -> AsyncOpenAI:
        """The async client of the running event loop (created on first use in that loop)."""
        import openai

        loop = asyncio.get_running_loop()
        with self._async_lock:
            client = self._async_clients.get(loop)
            if client is None:
                client = openai.AsyncOpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                )
                self._async_clients[loop] = client
            return client

    def close(self) -> None:
        """Close the HTTP connection pool (async clients are dropped; their pools close on GC)."""
        self.client.close()
        with self._async_lock:
            self._async_clients.clear()

    def __repr__(self) -> str:
        return f"RemoteBackend(base_url={self.base_url!r}, model={self.model!r})"


class RemoteSession(SequenceSession):
    """One request on a :class:`RemoteBackend`: local ids, one HTTP request per :meth:`stream`.

    Attributes:
        requests: Completion requests made so far.
        server_prompt_tokens: Prompt tokens the server reported (``None`` if it never did).
        server_cached_tokens: Prompt tokens the server reported as served from its prefix cache.
    """

    def __init__(
        self, backend: RemoteBackend, prompt_ids: Sequence[int], sampling: SamplingParams
    ) -> None:
        super().__init__(prompt_ids)
        self._backend = backend
        self.sampling = sampling
        self._closed = False
        self.requests = 0
        self.server_prompt_tokens: int | None = None
        self.server_cached_tokens = 0
        self._local_prompt = 0

    @property
    def forwarded(self) -> int:
        """Positions the server processed, plus the ids streamed back.

        Prompt positions are the server's reported prompt tokens less its prefix-cache hits when
        it reports usage, else the local count of the whole sequence per request.
        """
        return self._forwarded

    def reseed(self, seed: int | None) -> None:
        """Send ``seed`` with the following completion requests (``None``: none)."""
        self.sampling = replace(self.sampling, seed=seed)

    def close(self) -> None:
        """Mark the session closed (the backend's connection pool stays open)."""
        self._closed = True

    def _params(self, max_new: int) -> dict[str, Any]:
        s, backend = self.sampling, self._backend
        extra: dict[str, Any] = dict(backend.extra_body)
        params: dict[str, Any] = {
            "model": backend.model,
            "prompt": backend.prompt_text(self._ids),
            "max_tokens": max_new,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": max(0.0, s.temperature),
        }
        if not s.greedy:
            params["top_p"] = s.top_p
            if s.top_k > 0:
                extra.setdefault("top_k", s.top_k)
        if s.seed is not None:
            params["seed"] = s.seed
        if extra:
            params["extra_body"] = extra
        return params

    def _pieces(self, max_new: int) -> Generator[tuple[str, str | None], None, None]:
        """Yield ``(text, finish_reason)`` per streamed chunk; all failures -> BackendError."""
        backend = self._backend
        where = f"{backend.name} at {backend.base_url}"
        self.requests += 1
        try:
            next_chunk, close = self._open(self._params(max_new))
        except Exception as exc:
            raise BackendError(f"{where}: request failed: {_describe(exc)}") from exc
        finished = False
        try:
            while True:
                chunk = next_chunk()
                if chunk is _END:
                    break
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    self._note_usage(usage)
                choices = getattr(chunk, "choices", None)
                if choices is None and usage is None:
                    raise BackendError(f"{where}: malformed stream chunk {chunk!r:.200}")
                for choice in choices or ():
                    text = getattr(choice, "text", None)
                    reason = getattr(choice, "finish_reason", None)
                    if text is not None and not isinstance(text, str):
                        raise BackendError(f"{where}: malformed stream chunk {chunk!r:.200}")
                    if reason is not None:
                        finished = True
                    yield text or "", reason
        except BackendError:
            raise
        except GeneratorExit:
            raise
        except Exception as exc:
            raise BackendError(f"{where}: stream failed: {_describe(exc)}") from exc
        finally:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing a broken stream must not mask its error
                pass
        if not finished:
            raise BackendError(f"{where}: the stream ended without a finish reason (cut off?)")

    def _open(self, params: dict[str, Any]) -> tuple[Callable[[], Any], Callable[[], None]]:
        """Send one streaming request: ``(next chunk or _END, close the response)``.

        Inside a greenlet bridge the async client is used and every wait is an ``await_only``.
        """
        if in_bridge():
            astream: Any = await_only(self._backend.async_client().completions.create(**params))

            def next_async() -> Any:
                try:
                    return await_only(astream.__anext__())
                except StopAsyncIteration:
                    return _END

            return next_async, lambda: await_only(astream.close())
        stream: Any = self._backend.client.completions.create(**params)
        chunks = iter(stream)
        return (lambda: next(chunks, _END)), stream.close

    def _note_usage(self, usage: Any) -> None:
        prompt = getattr(usage, "prompt_tokens", None)
        if isinstance(prompt, int):
            self.server_prompt_tokens = (self.server_prompt_tokens or 0) + prompt
            details = getattr(usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", None) if details is not None else None
            cached = cached if isinstance(cached, int) else 0
            self.server_cached_tokens += cached
            self._forwarded += prompt - cached - self._local_prompt
            self._local_prompt = 0  # replaced by the server's count

    def _text_after(self, new: Sequence[int]) -> str:
        """Text that ``new`` adds after the current ids (decoded in context, specials kept)."""
        tok = self._backend._tok
        context = self._ids[-4:]
        return tok.decode([*context, *new], special=True)[len(tok.decode(context, special=True)) :]

    def stream(self, max_new: int, *, constraint: TokenConstraint | None = None) -> Iterator[int]:
        """One streaming completion of up to ``max_new`` tokens; yields local ids one by one.

        Raises:
            InvalidRequestError: A ``constraint`` was given (the server samples the tokens, so
                they cannot be masked here); raised at once, before any request is sent.
            BackendError: The server is unreachable, timed out, answered an error or sent a
                malformed or truncated stream.
        """
        if constraint is not None:
            raise InvalidRequestError(
                f"constrained decoding needs a local model: {self._backend.name} is remote and "
                "its server samples the tokens"
            )
        return self._stream(max_new)

    def _emit(self, tokens: Sequence[int], room: int) -> Generator[int, None, bool]:
        """Append and yield the first ``room`` of ``tokens``; ``True`` when some did not fit."""
        for token in tokens[:room]:
            self._ids.append(token)
            self._forwarded += 1
            yield token
        return len(tokens) > room

    def _stream(self, max_new: int) -> Iterator[int]:
        if self._closed:
            raise BackendError("the session is closed")
        if max_new <= 0:
            return
        backend = self._backend
        self._local_prompt = len(self._ids)
        self._forwarded += self._local_prompt
        pending = ""  # streamed text not yet turned into yielded ids
        produced = 0
        reason: str | None = None
        pieces = self._pieces(max_new)
        try:
            for text, finish in pieces:
                if finish is not None:
                    reason = finish
                if not text:
                    continue
                pending += text
                cut = _stable_cut(pending)
                if cut == 0:
                    continue
                stable = backend.encode(pending[:cut])
                head = self._text_after(stable)
                if head != pending[:cut]:
                    continue  # retokenization disagrees at the seam: wait for more text
                pending = pending[cut:]
                full = yield from self._emit(stable, max_new - produced)
                if full:
                    return
                produced += len(stable)
            rest = backend.encode(pending) if pending else []
            full = yield from self._emit(rest, max_new - produced)
            if full:
                return
            produced += len(rest)
            if reason == "stop" and produced < max_new:
                self._ids.append(backend.eos_id)
                yield backend.eos_id
        finally:
            pieces.close()  # closes the HTTP response when the consumer stopped early


_END = object()  # no more chunks


def _stable_cut(text: str) -> int:
    """Where text can be cut so that more text cannot change the tokens before the cut.

    Tokenizers split words at whitespace (a word's leading space belongs to it; a whitespace run
    is one piece), so the cut is the start of the last whitespace run; 0 when there is none.
    """
    end = len(text)
    while end > 0 and not text[end - 1].isspace():
        end -= 1
    while end > 0 and text[end - 1].isspace():
        end -= 1
    return end


def _describe(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} ({type(exc).__name__}): {str(exc)[:300]}"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"cannot connect ({type(exc).__name__}: {cause or exc})"
    return f"{type(exc).__name__}: {str(exc)[:300]}"
