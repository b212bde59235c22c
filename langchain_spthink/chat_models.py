"""``ChatSpeculativeThinking``: speculative thinking as a LangChain chat model.

Thin by design: messages become each model's chat prompt, the engine's events become message
chunks, custom callback events and metadata. One streaming path (:meth:`_stream` /
:meth:`_astream`); :meth:`_generate` / :meth:`_agenerate` aggregate it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.chat_models import (
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import (
    Field,
    PrivateAttr,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_spthink.backends.base import Backend
from langchain_spthink.callbacks import DELEGATION_EVENT, FALLBACK_EVENT
from langchain_spthink.config import SpeculativeThinkingConfig, preset
from langchain_spthink.engine import Mode, Request, SpeculativeEngine
from langchain_spthink.errors import (
    ConfigError,
    InvalidRequestError,
    ModelLoadError,
    SpThinkError,
)
from langchain_spthink.events import (
    DelegationEvent,
    Event,
    FallbackEvent,
    FinishEvent,
    TextEvent,
)
from langchain_spthink.messages import (
    Part,
    ReasoningSplitter,
    opens_reasoning,
    render_prompt_ids,
    to_chat_dicts,
    wants_continuation,
)

__all__ = ["ChatSpeculativeThinking", "clear_backend_cache", "load_backend"]

_MODES = ("speculative", "small", "large")
_FINISH_REASONS = {
    "eos": "stop",
    "stop": "stop",
    "length": "length",
    "context": "length",
    "timeout": "timeout",
}
# Chat-model field -> config field, for the knobs that live in the config.
_CONFIG_FIELDS = (
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("timeout", "time_out"),
    ("large_step_timeout", "large_step_timeout"),
    ("fallback", "fallback"),
)
_CALL_KWARGS = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "mode",
        "timeout",
        "large_step_timeout",
        "fallback",
        "tools",
    }
)
# Accepted and ignored: LangChain plumbing, and tool options until tool calling exists.
_IGNORED_KWARGS = frozenset({"stream", "tool_choice", "parallel_tool_calls"})
# Standard init parameters (langchain-tests passes them) that mean nothing for local models:
# accepted and ignored.
_IGNORED_INIT = frozenset({"max_retries", "streaming", "api_key"})
_RUN_KEY = "_spthink_run"


# --------------------------------------------------------------------------- backend cache
_BACKENDS: dict[tuple[str, str | None, bool], Backend] = {}
_LOAD_LOCKS: dict[tuple[str, str | None, bool], threading.Lock] = {}
_GUARD = threading.Lock()


def _load_backend_uncached(spec: str, device: str | None, trust_remote_code: bool) -> Backend:
    from langchain_spthink.backends.transformers import TransformersBackend

    return cast(
        Backend, TransformersBackend.load(spec, device=device, trust_remote_code=trust_remote_code)
    )


def load_backend(
    spec: str, *, device: str | None = None, trust_remote_code: bool = False
) -> Backend:
    """Load a model once per process and return its shared backend.

    Every :class:`ChatSpeculativeThinking` resolves string model specs through this cache, so
    copies, bound models and separate instances with the same spec share one set of weights.
    Loading is thread-safe: concurrent first calls wait for one load.

    Args:
        spec: Embedded alias, hub id, local directory or ``.gguf`` file.
        device: Torch device (default: CUDA when available, else CPU).
        trust_remote_code: Passed to transformers.

    Returns:
        The loaded backend.

    Raises:
        ModelLoadError: The model cannot be resolved or loaded.
    """
    key = (spec, device, trust_remote_code)
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
            backend = _load_backend_uncached(spec, device, trust_remote_code)
        except SpThinkError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load model {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
        with _GUARD:
            _BACKENDS[key] = backend
        return backend


def clear_backend_cache() -> None:
    """Forget the backends loaded by :func:`load_backend` (models load again on next use)."""
    with _GUARD:
        _BACKENDS.clear()
        _LOAD_LOCKS.clear()


def _spec_name(spec: str | Backend) -> str:
    return spec if isinstance(spec, str) else str(spec.name)


# ------------------------------------------------------------------------ call plumbing
class _RunCapture(BaseCallbackHandler):
    """Learns the chat model's run id where LangChain does not pass a run manager to ``_stream``.

    ``BaseChatModel.stream`` / ``astream`` (and the implicit streaming of ``invoke`` under
    ``astream_events``) call ``_stream`` without the run manager, so the public entry points add
    this handler to the call's callbacks and pass it to ``_stream`` as a private keyword.
    """

    run_inline = True

    def __init__(self, config: RunnableConfig) -> None:
        self.config = config
        self.run_id: UUID | None = None
        self.tags: list[str] = []
        self.metadata: dict[str, Any] = {}
        # Stop the request when the public stream is closed, even where LangChain leaves the
        # inner ``_stream`` / ``_astream`` generator for the garbage collector to finalise.
        self.closers: list[Callable[[], None]] = []
        self.async_closers: list[Callable[[], Awaitable[None]]] = []

    def close_runs(self) -> None:
        """Stop every request started under this call."""
        for close in self.closers:
            close()

    async def aclose_runs(self) -> None:
        """Stop every request started under this call and wait until their caches are freed."""
        for close in self.async_closers:
            await close()

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Remember the run."""
        if self.run_id is None:
            self.run_id = run_id
            self.tags = list(tags or [])
            self.metadata = dict(metadata or {})

    def __repr__(self) -> str:
        return "_RunCapture()"  # stable: it ends up in LangChain's cache key of a call


@dataclass(frozen=True)
class _Custom:
    """A custom event to dispatch, in order with the chunks."""

    name: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Call:
    """The effective settings of one call (fields overridden by call-time arguments)."""

    mode: Mode
    config: SpeculativeThinkingConfig
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    tools: list[dict[str, Any]] | None


class _Emitter:
    """Turns reasoning/content pieces into chunks and orders custom events after their text.

    One piece is held back so that the final usage and metadata ride on the last text chunk
    (no empty chunks); custom events queue behind the held piece so they are dispatched after
    the text they refer to. The first chunk carries the input tokens, the last the rest.
    """

    def __init__(self, input_tokens: int) -> None:
        self.input_tokens = input_tokens
        self.pending: tuple[Part, str, bool] | None = None  # (part, text, is_first)
        self.queued: list[_Custom] = []
        self.started = False
        self.content_seen = False

    def _usage_first(self) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=self.input_tokens, output_tokens=0, total_tokens=self.input_tokens
        )

    @staticmethod
    def _message(part: Part, text: str, **extra: Any) -> AIMessageChunk:
        if part == "content":
            return AIMessageChunk(content=text, **extra)
        return AIMessageChunk(content="", additional_kwargs={"reasoning_content": text}, **extra)

    def _release(self) -> Iterator[ChatGenerationChunk | _Custom]:
        if self.pending is not None:
            part, text, first = self.pending
            self.pending = None
            extra: dict[str, Any] = {"usage_metadata": self._usage_first()} if first else {}
            yield ChatGenerationChunk(message=self._message(part, text, **extra))
        yield from self.queued
        self.queued = []

    def piece(self, part: Part, text: str) -> Iterator[ChatGenerationChunk | _Custom]:
        if not text:
            return
        self.content_seen |= part == "content"
        yield from self._release()
        self.pending = (part, text, not self.started)
        self.started = True

    def custom(self, item: _Custom) -> Iterator[ChatGenerationChunk | _Custom]:
        if self.pending is None:
            yield item
        else:
            self.queued.append(item)

    def finish(
        self, usage: UsageMetadata, metadata: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk | _Custom]:
        part: Part = "content"
        text, first = "", not self.started
        if self.pending is not None:
            part, text, first = self.pending
            self.pending = None
        if first:
            usage = UsageMetadata(
                input_tokens=self.input_tokens,
                output_tokens=usage["output_tokens"],
                total_tokens=self.input_tokens + usage["output_tokens"],
                output_token_details=usage.get("output_token_details", {}),
            )
        message = self._message(
            part,
            text,
            usage_metadata=usage,
            response_metadata=metadata,
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=message)
        yield from self.queued
        self.queued = []


class _ThreadedRun:
    """Runs the synchronous event generator in a worker thread, handing items to the loop.

    The loop never blocks on generation (or on loading weights). :meth:`aclose` asks the worker
    to stop after the item in progress and waits until it has closed the generator, which
    closes the engine's sessions and frees their caches.
    """

    def __init__(
        self, factory: Callable[[], Generator[ChatGenerationChunk | _Custom, None, None]]
    ) -> None:
        self._factory = factory
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._finished = asyncio.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="spthink-astream", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()

    def _work(self) -> None:
        items: Generator[ChatGenerationChunk | _Custom, None, None] | None = None
        try:
            items = self._factory()
            for item in items:
                if self._stop.is_set():
                    break
                self._post(self._queue.put_nowait, ("item", item))
        except BaseException as exc:  # noqa: BLE001 - handed over to the event loop
            self._post(self._queue.put_nowait, ("error", exc))
        finally:
            if items is not None:
                items.close()  # closes the engine's generator and its sessions
            self._post(self._queue.put_nowait, ("done", None))
            self._post(self._finished.set)

    async def get(self) -> tuple[str, Any]:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            await self._finished.wait()


def _langgraph_writer() -> Callable[[Any], None] | None:
    """LangGraph's stream writer when running inside a graph node, else ``None``."""
    try:
        from langgraph.config import get_stream_writer
    except ImportError:
        return None
    try:
        return get_stream_writer()
    except Exception:  # noqa: BLE001 - outside a graph: RuntimeError / KeyError
        return None


def _unclosed_think(text: str) -> bool:
    return text.rfind("<think>") > text.rfind("</think>")


# ------------------------------------------------------------------------------ the model
class ChatSpeculativeThinking(BaseChatModel):
    r"""Speculative Thinking as a LangChain chat model.

    A small model writes the answer; at reasoning boundaries (``"\n\n"``) where it is about
    to reflect, a large model writes the step instead (see ``docs/ALGORITHM.md``). Weights load
    lazily on first use and are shared by every instance with the same model specs.

    Example:
        .. code-block:: python

            from langchain_spthink.chat_models import ChatSpeculativeThinking

            llm = ChatSpeculativeThinking(preset="instruct", temperature=0, max_tokens=64)
            llm.invoke("What is 17 * 3?").content

    The ``<think>…</think>`` part of the output goes to
    ``additional_kwargs["reasoning_content"]``, the rest to ``content``. Delegations and
    fallbacks are dispatched as the custom events ``spthink_delegation`` / ``spthink_fallback``
    (see :mod:`langchain_spthink.callbacks`) and listed in ``response_metadata["spthink"]``.
    """

    small_model: SkipValidation[str | Backend] = Field(
        default="smollm2-135m-instruct",
        description=(
            "The small (speculative) model: an embedded alias, hub id, local directory or .gguf "
            "file, or an already loaded Backend."
        ),
    )
    large_model: SkipValidation[str | Backend] = Field(
        default="gemma3-270m",
        description="The large (target) model, as for small_model.",
    )
    config: SpeculativeThinkingConfig | None = Field(
        default=None,
        description=(
            "Speculative-thinking knobs. With a preset, the fields set here override the preset's."
        ),
    )
    preset: Literal["reasoning", "instruct"] | None = Field(
        default=None,
        description=(
            "Paper configuration: 'reasoning' (reasoning small model) or 'instruct' "
            "(begin + not_reasoning, for instruct small models). Default: the config's."
        ),
    )
    mode: Mode = Field(
        default="speculative",
        description="'speculative' (both models), or one model alone: 'small' or 'large'.",
    )
    fallback: Literal["small", "raise"] | None = Field(
        default=None,
        description=(
            "When the large model fails or times out mid-request: continue with the small "
            "model ('small', reported as an event) or raise LargeModelError. Default: config's."
        ),
    )
    temperature: float | None = Field(
        default=None, ge=0.0, description="Sampling temperature; 0 is greedy. Default: config's."
    )
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Nucleus sampling mass. Default: config's."
    )
    top_k: int | None = Field(
        default=None, ge=0, description="Top-k cut (0 disables). Default: config's."
    )
    max_tokens: int = Field(default=512, ge=1, description="Budget of generated tokens.")
    stop: list[str] | None = Field(
        default=None, description="Stop strings; the output ends before the first one."
    )
    seed: int | None = Field(
        default=None, description="Random seed of the request (the large model uses seed + 1)."
    )
    timeout: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Wall-clock cap of a request in seconds; the partial answer is returned with "
            "finish_reason 'timeout'."
        ),
    )
    large_step_timeout: float | None = Field(
        default=None,
        gt=0.0,
        description="Wall-clock cap of one large-model step in seconds; over it: fallback.",
    )
    small_chat_template: str | None = Field(
        default=None, description="Jinja chat template for the small model instead of its own."
    )
    large_chat_template: str | None = Field(
        default=None, description="Jinja chat template for the large model instead of its own."
    )
    handoff: Literal["auto", "ids", "text"] = Field(
        default="auto",
        description="Token hand-off: by ids (same tokenizer), by text, or auto-detected.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow custom model code from the hub when loading."
    )
    device: str | None = Field(
        default=None, description="Torch device for loaded models (default: cuda if available)."
    )

    _base_config: SpeculativeThinkingConfig = PrivateAttr(default_factory=SpeculativeThinkingConfig)

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'model'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid ChatSpeculativeThinking settings: {problems}") from exc

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | _IGNORED_INIT
            unknown = sorted(k for k in data if k not in known)
            if unknown:
                raise ValueError(f"unknown parameter(s) {unknown}")
            data = {k: v for k, v in data.items() if k not in _IGNORED_INIT}
        return data

    @field_validator("small_model", "large_model")
    @classmethod
    def _model_spec(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must be a non-empty model spec (alias, hub id or path)")
            return value
        if not all(hasattr(value, a) for a in ("new_session", "encode", "decode", "eos_ids")):
            raise ValueError(
                f"must be a model spec string or a Backend, got {type(value).__name__}"
            )
        return value

    @model_validator(mode="after")
    def _build_spthink_config(self) -> ChatSpeculativeThinking:
        """Build and validate the configuration once (errors surface at construction)."""
        from langchain_spthink import __version__

        self._add_version("langchain-spthink", __version__)
        base = preset(self.preset) if self.preset else SpeculativeThinkingConfig()
        if self.config is not None:
            if self.preset is None:
                base = self.config
            else:
                base = base.with_updates(
                    **{k: getattr(self.config, k) for k in self.config.model_fields_set}
                )
        fixed = {
            key: getattr(self, name)
            for name, key in _CONFIG_FIELDS
            if getattr(self, name) is not None
        }
        self._base_config = base.with_updates(**fixed) if fixed else base
        return self

    # ------------------------------------------------------------------ descriptors
    @property
    def _llm_type(self) -> str:
        return "spthink"

    @property
    def effective_config(self) -> SpeculativeThinkingConfig:
        """The configuration calls use (config / preset with this model's overrides applied)."""
        return self._base_config

    @property
    def model_name(self) -> str:
        """Name reported in metadata: ``small+large`` in speculative mode, else the one model."""
        return self._model_name(self.mode)

    def _model_name(self, mode: str) -> str:
        small, large = _spec_name(self.small_model), _spec_name(self.large_model)
        if mode == "small":
            return small
        if mode == "large":
            return large
        return f"{small}+{large}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "small_model": _spec_name(self.small_model),
            "large_model": _spec_name(self.large_model),
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
            "handoff": self.handoff,
            "small_chat_template": self.small_chat_template,
            "large_chat_template": self.large_chat_template,
            "config": self._base_config.model_dump(mode="json"),
        }

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.pop(_RUN_KEY, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        mode = kwargs.get("mode") or self.mode
        temperature = kwargs.get("temperature")
        max_tokens = kwargs.get("max_tokens")
        params = LangSmithParams(
            ls_provider="spthink",
            ls_model_name=kwargs.get("model") or self._model_name(mode),
            ls_model_type="chat",
            ls_temperature=(
                float(temperature) if temperature is not None else self._base_config.temperature
            ),
            ls_max_tokens=int(max_tokens) if max_tokens is not None else self.max_tokens,
        )
        if ls_stop := (stop if stop is not None else self.stop):
            params["ls_stop"] = list(ls_stop)
        return params

    # ------------------------------------------------------ public entry points (capture)
    def _capture(
        self, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> tuple[RunnableConfig, dict[str, Any]]:
        ensured = ensure_config(config)
        if _RUN_KEY in kwargs:
            return ensured, kwargs
        capture = _RunCapture(ensured)
        callbacks = ensured.get("callbacks")
        merged: Any
        if callbacks is None:
            merged = [capture]
        elif isinstance(callbacks, list):
            merged = [*callbacks, capture]
        else:
            merged = callbacks.copy()
            merged.add_handler(capture, inherit=False)
        return cast(RunnableConfig, {**ensured, "callbacks": merged}), {**kwargs, _RUN_KEY: capture}

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Generate a reply (see :class:`~langchain_core.language_models.BaseChatModel`)."""
        config, kwargs = self._capture(config, kwargs)
        return super().invoke(input, config, stop=stop, **kwargs)

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Generate a reply asynchronously (generation runs in a worker thread)."""
        config, kwargs = self._capture(config, kwargs)
        return await super().ainvoke(input, config, stop=stop, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the reply as chunks; closing the iterator stops generation."""
        config, kwargs = self._capture(config, kwargs)
        try:
            yield from super().stream(input, config, stop=stop, **kwargs)
        finally:
            kwargs[_RUN_KEY].close_runs()

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the reply asynchronously; cancelling stops generation and frees its caches."""
        config, kwargs = self._capture(config, kwargs)
        inner = cast(
            AsyncGenerator[AIMessageChunk, None],
            super().astream(input, config, stop=stop, **kwargs),
        )
        try:
            async for chunk in inner:
                yield chunk
        finally:
            await inner.aclose()
            await kwargs[_RUN_KEY].aclose_runs()

    # ----------------------------------------------------------------- the one path
    def _call_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        unknown = sorted(set(kwargs) - _CALL_KWARGS - _IGNORED_KWARGS - {_RUN_KEY})
        if "model" in unknown:
            raise InvalidRequestError(
                "a per-call `model` is not supported; create another ChatSpeculativeThinking "
                "with small_model= / large_model="
            )
        if unknown:
            raise InvalidRequestError(
                f"unknown argument(s) {unknown}; accepted: {sorted(_CALL_KWARGS)}"
            )
        mode = kwargs.get("mode") or self.mode
        if mode not in _MODES:
            raise InvalidRequestError(f"mode must be one of {list(_MODES)}, got {mode!r}")
        overrides = {
            key: kwargs[name] for name, key in _CONFIG_FIELDS if kwargs.get(name) is not None
        }
        config = self._base_config.with_updates(**overrides) if overrides else self._base_config
        max_tokens = kwargs.get("max_tokens")
        max_tokens = self.max_tokens if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        stops: Sequence[str] = stop if stop is not None else (self.stop or [])
        if isinstance(stops, str):
            stops = [stops]
        if any(not isinstance(s, str) or not s for s in stops):
            raise InvalidRequestError(f"stop must be a list of non-empty strings, got {stops!r}")
        seed = kwargs.get("seed")
        tools = kwargs.get("tools")
        return _Call(
            mode=cast(Mode, mode),
            config=config,
            max_tokens=max_tokens,
            stop=tuple(stops),
            seed=self.seed if seed is None else int(seed),
            tools=[convert_to_openai_tool(t) for t in tools] if tools else None,
        )

    def _backend(self, role: Literal["small", "large"]) -> Backend:
        spec = self.small_model if role == "small" else self.large_model
        if not isinstance(spec, str):
            return spec
        return load_backend(spec, device=self.device, trust_remote_code=self.trust_remote_code)

    def _events(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Generator[ChatGenerationChunk | _Custom, None, None]:
        """Run one request: chunks in order, with custom events placed after their text."""
        call = self._call_params(stop, kwargs)
        dicts = to_chat_dicts(messages)
        continue_final = wants_continuation(dicts)
        small = self._backend("small") if call.mode != "large" else None
        large = self._backend("large") if call.mode != "small" else None
        prompts: dict[str, list[int]] = {}
        for role, backend, template in (
            ("small", small, self.small_chat_template),
            ("large", large, self.large_chat_template),
        ):
            if backend is not None:
                prompts[role] = render_prompt_ids(
                    backend,
                    dicts,
                    tools=call.tools,
                    continue_final=continue_final,
                    chat_template=template,
                    template_field=f"{role}_chat_template",
                )
        if small is not None:
            primary, primary_prompt = small, prompts["small"]
            engine = SpeculativeEngine(
                small, large, call.config, handoff=self.handoff if large is not None else "auto"
            )
        else:
            assert large is not None
            primary, primary_prompt = large, prompts["large"]
            engine = SpeculativeEngine(large, large, call.config, handoff="ids")
        request = Request(
            small_prompt=primary_prompt,
            large_prompt=prompts.get("large", primary_prompt),
            max_tokens=call.max_tokens,
            sampling=call.config.sampling(seed=call.seed),
            stop=call.stop,
            mode=call.mode,
        )
        splitter = ReasoningSplitter(
            in_reasoning=opens_reasoning(primary, primary_prompt)
            or (continue_final and _unclosed_think(dicts[-1]["content"]))
        )
        emitter = _Emitter(len(primary_prompt))
        delegations: list[dict[str, Any]] = []
        fallbacks: list[dict[str, Any]] = []
        generator = cast(Generator[Event, None, None], engine.generate(request))
        try:
            for event in generator:
                if isinstance(event, TextEvent):
                    for part, text in splitter.feed(event.text):
                        yield from emitter.piece(part, text)
                elif isinstance(event, DelegationEvent):
                    data = asdict(event)
                    delegations.append(data)
                    yield from emitter.custom(_Custom(DELEGATION_EVENT, dict(data)))
                elif isinstance(event, FallbackEvent):
                    data = asdict(event)
                    fallbacks.append(data)
                    yield from emitter.custom(_Custom(FALLBACK_EVENT, dict(data)))
                elif isinstance(event, FinishEvent):
                    for part, text in splitter.flush():
                        yield from emitter.piece(part, text)
                    usage = UsageMetadata(
                        input_tokens=0,
                        output_tokens=event.output_tokens,
                        total_tokens=event.output_tokens,
                        output_token_details={
                            "reasoning": _reasoning_tokens(
                                primary, splitter, event, emitter.content_seen
                            )
                        },
                    )
                    metadata = self._finish_metadata(call, event, delegations, fallbacks)
                    yield from emitter.finish(usage, metadata)
        finally:
            generator.close()

    def _finish_metadata(
        self,
        call: _Call,
        finish: FinishEvent,
        delegations: list[dict[str, Any]],
        fallbacks: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "model_name": self._model_name(call.mode),
            "model_provider": "spthink",
            "finish_reason": _FINISH_REASONS.get(finish.stop_reason, finish.stop_reason),
            "spthink": {
                "mode": call.mode,
                "final_mode": finish.mode,
                "stop_reason": finish.stop_reason,
                "small_model": _spec_name(self.small_model),
                "large_model": _spec_name(self.large_model),
                "small_tokens": finish.small.kept_tokens,
                "large_tokens": finish.large.kept_tokens,
                "large_share": finish.large_share,
                "small_usage": asdict(finish.small),
                "large_usage": asdict(finish.large),
                "delegations": delegations,
                "fallbacks": fallbacks,
                "seconds": finish.seconds,
                "extra": dict(finish.extra),
            },
        }

    # ----------------------------------------------------------- dispatch of events
    def _sync_dispatcher(
        self, run_manager: CallbackManagerForLLMRun | None, kwargs: dict[str, Any]
    ) -> Callable[[_Custom], None]:
        manager: CallbackManager | None = None
        run_id: UUID | None = None
        capture = kwargs.get(_RUN_KEY)
        if run_manager is not None:
            manager = CallbackManager(
                handlers=list(run_manager.handlers),
                inheritable_handlers=list(run_manager.inheritable_handlers),
                parent_run_id=run_manager.parent_run_id,
                tags=run_manager.tags,
                inheritable_tags=run_manager.inheritable_tags,
                metadata=run_manager.metadata,
                inheritable_metadata=run_manager.inheritable_metadata,
            )
            run_id = run_manager.run_id
        elif isinstance(capture, _RunCapture) and capture.run_id is not None:
            cfg = capture.config
            manager = CallbackManager.configure(
                cfg.get("callbacks"),
                self.callbacks,
                self.verbose,
                cfg.get("tags"),
                self.tags,
                cfg.get("metadata"),
                self.metadata,
            )
            manager.handlers = [h for h in manager.handlers if not isinstance(h, _RunCapture)]
            manager.tags, manager.metadata = capture.tags, capture.metadata
            run_id = capture.run_id
        writer = _langgraph_writer()

        def dispatch(item: _Custom) -> None:
            if manager is not None and run_id is not None:
                manager.on_custom_event(item.name, item.data, run_id=run_id)
            if writer is not None:
                writer({"name": item.name, "data": item.data})

        return dispatch

    def _async_dispatcher(
        self, run_manager: AsyncCallbackManagerForLLMRun | None, kwargs: dict[str, Any]
    ) -> Callable[[_Custom], Any]:
        manager: AsyncCallbackManager | None = None
        run_id: UUID | None = None
        capture = kwargs.get(_RUN_KEY)
        if run_manager is not None:
            manager = AsyncCallbackManager(
                handlers=list(run_manager.handlers),
                inheritable_handlers=list(run_manager.inheritable_handlers),
                parent_run_id=run_manager.parent_run_id,
                tags=run_manager.tags,
                inheritable_tags=run_manager.inheritable_tags,
                metadata=run_manager.metadata,
                inheritable_metadata=run_manager.inheritable_metadata,
            )
            run_id = run_manager.run_id
        elif isinstance(capture, _RunCapture) and capture.run_id is not None:
            cfg = capture.config
            manager = AsyncCallbackManager.configure(
                cfg.get("callbacks"),
                self.callbacks,
                self.verbose,
                cfg.get("tags"),
                self.tags,
                cfg.get("metadata"),
                self.metadata,
            )
            manager.handlers = [h for h in manager.handlers if not isinstance(h, _RunCapture)]
            manager.tags, manager.metadata = capture.tags, capture.metadata
            run_id = capture.run_id
        writer = _langgraph_writer()

        async def dispatch(item: _Custom) -> None:
            if manager is not None and run_id is not None:
                await manager.on_custom_event(item.name, item.data, run_id=run_id)
            if writer is not None:
                writer({"name": item.name, "data": item.data})

        return dispatch

    # ------------------------------------------------------------ LangChain hooks
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        dispatch = self._sync_dispatcher(run_manager, kwargs)
        items = self._events(messages, stop, kwargs)
        capture = kwargs.get(_RUN_KEY)
        if isinstance(capture, _RunCapture):
            capture.closers.append(items.close)
        try:
            for item in items:
                if isinstance(item, _Custom):
                    dispatch(item)
                    continue
                if run_manager is not None:
                    run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            items.close()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        dispatch = self._async_dispatcher(run_manager, kwargs)
        run = _ThreadedRun(lambda: self._events(messages, stop, kwargs))
        capture = kwargs.get(_RUN_KEY)
        if isinstance(capture, _RunCapture):
            capture.async_closers.append(run.aclose)
        run.start()
        try:
            while True:
                kind, value = await run.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                if isinstance(value, _Custom):
                    await dispatch(value)
                    continue
                if run_manager is not None:
                    await run_manager.on_llm_new_token(value.text, chunk=value)
                yield value
        finally:
            await run.aclose()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))


def _reasoning_tokens(
    primary: Backend, splitter: ReasoningSplitter, finish: FinishEvent, content_seen: bool
) -> int:
    """Output tokens in the think part (in the primary model's tokenizer, capped)."""
    total = finish.output_tokens
    raw = splitter.reasoning_raw
    if not raw:
        return 0
    if not content_seen:
        return total
    try:
        counted = len(primary.encode(raw))
    except Exception:  # noqa: BLE001 - fall back to a proportional estimate
        counted = round(total * len(raw) / max(1, len(splitter.raw)))
    return max(0, min(total, counted))
