"""The process-wide cache of loaded models.

Every :class:`~langchain_spthink.chat.model.ChatSpeculativeThinking` resolves string model specs
through :func:`load_backend`, so copies, bound models and separate instances with the same spec
share one set of weights.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from langchain_spthink.backends.base import Backend
from langchain_spthink.errors import ModelLoadError, SpThinkError

__all__ = ["cached_backend", "check_model_spec", "clear_backend_cache", "load_backend", "spec_name"]

_Key = tuple[str, str | None, bool, int | None]  # (spec, device, trust_remote_code, threads)

_BACKENDS: dict[_Key, Backend] = {}
_LOAD_LOCKS: dict[_Key, threading.Lock] = {}
_GUARD = threading.Lock()


LLAMACPP_PREFIX = "llamacpp:"
REMOTE_PREFIXES = ("openai+http://", "openai+https://")
_REMOTE_OPTIONS = frozenset(
    {"model", "tokenizer", "name", "timeout", "max_retries", "context_length", "api_key_env"}
)


def _load_remote(spec: str) -> Backend:
    """``openai+http(s)://host:port/path?model=NAME&tokenizer=SPEC&...`` -> RemoteBackend."""
    import os
    from urllib.parse import parse_qsl, urlsplit, urlunsplit

    from langchain_spthink.backends.remote import RemoteBackend

    parts = urlsplit(spec[len("openai+") :])
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _REMOTE_OPTIONS)
    if unknown:
        raise ModelLoadError(
            f"unknown option(s) {', '.join(unknown)} in remote model spec; "
            f"known: {', '.join(sorted(_REMOTE_OPTIONS))}"
        )
    if not options.get("model"):
        raise ModelLoadError("a remote model spec needs ?model=NAME (the served model's name)")
    try:
        numbers = {
            "timeout": float(options.get("timeout", 60.0)),
            "max_retries": int(options.get("max_retries", 2)),
        }
        if options.get("context_length"):
            numbers["context_length"] = int(options["context_length"])
    except ValueError as exc:
        raise ModelLoadError(f"invalid number in remote model spec: {exc}") from exc
    api_key = os.environ.get(options["api_key_env"]) if options.get("api_key_env") else None
    base_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return cast(
        Backend,
        RemoteBackend(
            base_url,
            options["model"],
            tokenizer=options.get("tokenizer") or None,
            api_key=api_key,
            name=options.get("name") or None,
            **numbers,  # type: ignore[arg-type]
        ),
    )


def _load_backend_uncached(
    spec: str, device: str | None, trust_remote_code: bool, threads: int | None
) -> Backend:
    if spec.startswith(REMOTE_PREFIXES):
        return _load_remote(spec)
    if spec.startswith(LLAMACPP_PREFIX):
        from langchain_spthink.backends.llamacpp import LlamaCppBackend

        return cast(Backend, LlamaCppBackend.load(spec[len(LLAMACPP_PREFIX) :], n_threads=threads))
    from langchain_spthink.backends.transformers import TransformersBackend

    return cast(
        Backend,
        TransformersBackend.load(
            spec, device=device, trust_remote_code=trust_remote_code, threads=threads
        ),
    )


def load_backend(
    spec: str,
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    threads: int | None = None,
) -> Backend:
    """Load a model once per process and return its shared backend.

    Every :class:`~langchain_spthink.chat.model.ChatSpeculativeThinking` resolves string model
    specs through this cache, so copies, bound models and separate instances with the same spec
    share one set of weights. Loading is thread-safe: concurrent first calls wait for one load.

    Args:
        spec: Embedded alias, hub id, local directory or ``.gguf`` file (transformers), or
            ``llamacpp:`` + an embedded alias or ``.gguf`` path for the in-process llama.cpp
            backend (``pip install 'langchain-spthink[llamacpp]'``), or a URL for a model on an
            OpenAI-compatible ``/v1/completions`` server (vLLM, SGLang, llama.cpp server):
            ``openai+http://HOST:PORT/v1?model=NAME&tokenizer=SPEC`` (or ``openai+https://``).
            ``model`` is the served model name (required); ``tokenizer`` an alias, hub id or
            path whose tokenizer matches the served model (default: ``model``); optional
            ``timeout`` (seconds per connect/read, default 60), ``max_retries`` (default 2),
            ``context_length``, ``name``, and ``api_key_env`` (the environment variable holding
            the key; default ``$SPTHINK_REMOTE_API_KEY``, then ``$OPENAI_API_KEY``). Keys never
            go in the URL. See :class:`~langchain_spthink.backends.remote.RemoteBackend`.
        device: Torch device (default: CUDA when available, else CPU).
        trust_remote_code: Passed to transformers.
        threads: CPU threads of a local model (transformers or llama.cpp; ignored for remote
            ones); default :func:`~langchain_spthink.threads.default_threads`.

    Returns:
        The loaded backend.

    Raises:
        ModelLoadError: The model cannot be resolved or loaded.
    """
    key = (spec, device, trust_remote_code, threads)
    with _GUARD:
        hit = _BACKENDS.get(key)
        if hit is not None:
            return hit
        lock = _LOAD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _GUARD:
            hit = _BACKENDS.get(key)
        if hit is not None:
            return hit
        try:
            backend = _load_backend_uncached(spec, device, trust_remote_code, threads)
        except SpThinkError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load model {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
        with _GUARD:
            _BACKENDS[key] = backend
        return backend


def cached_backend(
    spec: str,
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
    threads: int | None = None,
) -> Backend | None:
    """The backend :func:`load_backend` returns for these arguments if it is loaded, else ``None``.

    Never loads (never blocks on a load in progress): for callers on an event loop.
    """
    with _GUARD:
        return _BACKENDS.get((spec, device, trust_remote_code, threads))


def clear_backend_cache() -> None:
    """Forget the backends loaded by :func:`load_backend` (models load again on next use)."""
    with _GUARD:
        _BACKENDS.clear()
        _LOAD_LOCKS.clear()


def spec_name(spec: str | Backend) -> str:
    """The name of a model setting: the spec string itself, or a loaded backend's name.

    Args:
        spec: A model spec or a backend.

    Returns:
        The name reported in metadata.
    """
    return spec if isinstance(spec, str) else str(spec.name)


def check_model_spec(value: Any) -> Any:
    """Validate a model setting: a non-empty spec string, or an object with a backend's methods.

    Args:
        value: The setting.

    Returns:
        ``value``.

    Raises:
        ValueError: It is neither.
    """
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must be a non-empty model spec (alias, hub id or path)")
        return value
    if not all(hasattr(value, a) for a in ("new_session", "encode", "decode", "eos_ids")):
        raise ValueError(f"must be a model spec string or a Backend, got {type(value).__name__}")
    return value
