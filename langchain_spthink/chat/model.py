"""``ChatSpeculativeThinking``: speculative thinking as a LangChain chat model.

Thin by design: messages become each model's chat prompt, the engine's events become message
chunks, custom callback events and metadata. One streaming path (:meth:`_stream` /
:meth:`_astream`, both over :func:`~langchain_spthink.chat.streaming.reply_items`);
:meth:`_generate` / :meth:`_agenerate` aggregate it. The pieces live in small modules:

* :mod:`langchain_spthink.backends.loading` — the process-wide cache of loaded models;
* :mod:`langchain_spthink.chat.settings` — the model's configuration and a call's settings over it;
* :mod:`langchain_spthink.chat.streaming` — one request from messages to chunks and custom events;
* :mod:`langchain_spthink.chat.async_bridge` — the async path's runners (worker thread, or greenlet
  on the event loop for all-remote requests);
* :mod:`langchain_spthink.chat.runs` — the run id where LangChain hides it, custom-event dispatch;
* :mod:`langchain_spthink.tools.schema`, :mod:`langchain_spthink.tools.parsing`,
  :mod:`langchain_spthink.tools.structured`, :mod:`langchain_spthink.tools.constraints` — tools
  in the prompt, tool calls from the answer, structured output and constrained decoding.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from concurrent.futures import Executor
from typing import Any, Literal, cast

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import run_in_executor
from pydantic import (
    Field,
    PrivateAttr,
    SkipValidation,
    ValidationError,
    field_validator,
    model_validator,
)

from langchain_spthink.backends.base import Backend
from langchain_spthink.backends.loading import (
    REMOTE_PREFIXES,
    cached_backend,
    check_model_spec,
    clear_backend_cache,
    load_backend,
    spec_name,
)
from langchain_spthink.chat.async_bridge import GreenletRun, ThreadedRun
from langchain_spthink.chat.request import roles_of
from langchain_spthink.chat.runs import (
    RUN_KEY,
    CustomEvent,
    CustomEventRoute,
    run_capture,
    with_run_capture,
)
from langchain_spthink.chat.settings import (
    STANDARD_KNOBS,
    known_init_params,
    model_config,
    policy_object,
    resolve_call,
    settings_error,
)
from langchain_spthink.chat.streaming import Item, ModelNames, reply_items
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.loop import Mode
from langchain_spthink.engine.policies import DelegationPolicy, resolve_policy
from langchain_spthink.errors import InvalidRequestError
from langchain_spthink.greenlet_bridge import LoopExecutor
from langchain_spthink.tools.parsing import generate_strict
from langchain_spthink.tools.structured import ToolCallingMixin

__all__ = ["ChatSpeculativeThinking", "clear_backend_cache", "load_backend"]


class ChatSpeculativeThinking(ToolCallingMixin, BaseChatModel):
    r"""Speculative Thinking as a LangChain chat model.

    A small model writes the answer; at reasoning boundaries (``"\n\n"``) where it is about
    to reflect, a large model writes the step instead (see ``docs/ALGORITHM.md``). Weights load
    lazily on first use and are shared by every instance with the same model specs.

    Example:
        .. code-block:: python

            from langchain_spthink.chat.model import ChatSpeculativeThinking

            llm = ChatSpeculativeThinking(preset="instruct", temperature=0, max_tokens=64)
            llm.invoke("What is 17 * 3?").content

    The ``<think>…</think>`` part of the output goes to
    ``additional_kwargs["reasoning_content"]``, the rest to ``content``. Delegations and
    fallbacks are dispatched as the custom events ``spthink_delegation`` / ``spthink_fallback``
    (see :mod:`langchain_spthink.chat.callbacks`) and listed in ``response_metadata["spthink"]``.
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
            "Every algorithm knob (cue words, budgets, policy, fallback, timeouts, ...): a "
            "SpeculativeThinkingConfig, or a dict of knobs. With a preset, the knobs set here "
            "override the preset's."
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
            "Wall-clock cap of a request in seconds (the config's time_out); the partial answer "
            "is returned with finish_reason 'timeout'. Default: config's."
        ),
    )
    policy: SkipValidation[DelegationPolicy | None] = Field(
        default=None,
        description=(
            "A custom DelegationPolicy object. The built-in policies ('keyword', 'judge') are "
            "named in the config (config={'policy': 'judge'}); a KeywordPolicy must carry the "
            "config's cue words. Default: the config's policy."
        ),
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
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of each local model (default: half the cores, at most 4, or "
        "$SPTHINK_THREADS; holds up when other processes share the CPU).",
    )

    _base_config: SpeculativeThinkingConfig = PrivateAttr(default_factory=SpeculativeThinkingConfig)

    def __init__(self, **kwargs: Any) -> None:
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            raise settings_error(exc, "ChatSpeculativeThinking settings", "model") from exc

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        return known_init_params(data, cls.model_fields)

    @field_validator("small_model", "large_model")
    @classmethod
    def _model_spec(cls, value: Any) -> Any:
        return check_model_spec(value)

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_object(cls, value: Any) -> Any:
        try:
            return policy_object(value)
        except InvalidRequestError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _build_spthink_config(self) -> ChatSpeculativeThinking:
        """Build and validate the configuration once (errors surface at construction)."""
        from langchain_spthink import __version__

        self._add_version("langchain-spthink", __version__)
        standard = {name: getattr(self, name) for name in STANDARD_KNOBS}
        self._base_config = model_config(self.preset, self.config, standard)
        resolve_policy(self._base_config, self.policy)  # a KeywordPolicy must agree with it
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
        return self._names.reported(self.mode)

    @property
    def _names(self) -> ModelNames:
        return ModelNames(spec_name(self.small_model), spec_name(self.large_model))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "small_model": self._names.small,
            "large_model": self._names.large,
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
        kwargs.pop(RUN_KEY, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        mode = kwargs.get("mode") or self.mode
        temperature = kwargs.get("temperature")
        max_tokens = kwargs.get("max_tokens")
        params = LangSmithParams(
            ls_provider="spthink",
            ls_model_name=kwargs.get("model") or self._names.reported(mode),
            ls_model_type="chat",
            # Invalid call values are reported by the call itself (typed errors), not here.
            ls_temperature=(
                float(temperature)
                if isinstance(temperature, (int, float))
                else self._base_config.temperature
            ),
            ls_max_tokens=max_tokens if isinstance(max_tokens, int) else self.max_tokens,
        )
        ls_stop = stop if stop is not None else self.stop
        if ls_stop and isinstance(ls_stop, (list, tuple, str)):
            params["ls_stop"] = [ls_stop] if isinstance(ls_stop, str) else list(ls_stop)
        return params

    # ------------------------------------------------------ public entry points (capture)
    # Each adds the run capture to the call (``stop`` and the other arguments pass through).
    def invoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        """Generate a reply (see :class:`~langchain_core.language_models.BaseChatModel`)."""
        config, kwargs = with_run_capture(config, kwargs)
        return super().invoke(input, config, **kwargs)

    async def ainvoke(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AIMessage:
        """Generate a reply asynchronously.

        Generation runs in a worker thread, or, when every model of the call is remote, on the
        event loop with async HTTP (no thread; see :mod:`langchain_spthink.chat.async_bridge`).
        """
        config, kwargs = with_run_capture(config, kwargs)
        return await super().ainvoke(input, config, **kwargs)

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        """Stream the reply as chunks; closing the iterator stops generation."""
        config, kwargs = with_run_capture(config, kwargs)
        try:
            yield from super().stream(input, config, **kwargs)
        finally:
            kwargs[RUN_KEY].close_runs()

    async def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Stream the reply asynchronously; cancelling stops generation and frees its caches."""
        config, kwargs = with_run_capture(config, kwargs)
        inner = cast(
            AsyncGenerator[AIMessageChunk, None],
            super().astream(input, config, **kwargs),
        )
        try:
            async for chunk in inner:
                yield chunk
        finally:
            await inner.aclose()
            await kwargs[RUN_KEY].aclose_runs()

    # ----------------------------------------------------------------- the one path
    def _spec(self, role: Literal["small", "large"]) -> str | Backend:
        return self.small_model if role == "small" else self.large_model

    def _load_options(self) -> dict[str, Any]:
        """The arguments of :func:`load_backend` besides the spec (also the cache's key)."""
        return {
            "device": self.device,
            "trust_remote_code": self.trust_remote_code,
            "threads": self.threads,
        }

    def _backend(self, role: Literal["small", "large"]) -> Backend:
        spec = self._spec(role)
        if not isinstance(spec, str):
            return spec
        return load_backend(spec, **self._load_options())

    def _loaded(self, role: Literal["small", "large"]) -> Backend | None:
        """The role's backend if it needs no loading now (an object, or a spec loaded before)."""
        spec = self._spec(role)
        if not isinstance(spec, str):
            return spec
        return cached_backend(spec, **self._load_options())

    def _events(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        executor: Executor | None = None,
    ) -> Generator[Item, None, None]:
        """Run one request: chunks in order, with custom events placed after their text."""
        call = resolve_call(stop, kwargs, self)
        yield from reply_items(
            call,
            messages,
            load=self._backend,
            templates={"small": self.small_chat_template, "large": self.large_chat_template},
            handoff=self.handoff,
            names=self._names,
            executor=executor,
        )

    async def _streams_async(self, kwargs: dict[str, Any]) -> bool:
        """Whether every model of the call streams on the event loop (``async_streams``).

        Remote string specs not loaded yet are loaded first, in the default executor (loading
        a tokenizer blocks); a local spec or any failure picks the thread path, which reports
        the error.
        """
        mode = kwargs.get("mode") or self.mode
        if mode not in ("small", "large", "speculative"):
            return False
        roles = roles_of(mode)
        specs = [self._spec(role) for role in roles]
        if any(isinstance(s, str) and not s.startswith(REMOTE_PREFIXES) for s in specs):
            return False
        for role in roles:
            backend = self._loaded(role)
            try:
                if backend is None:
                    backend = await run_in_executor(None, self._backend, role)
            except Exception:  # noqa: BLE001 - the thread path raises it as it always did
                return False
            if not getattr(backend, "async_streams", False):
                return False
        return True

    # ------------------------------------------------------------ LangChain hooks
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        route = CustomEventRoute(CallbackManager, run_manager, kwargs, self)
        items = self._events(messages, stop, kwargs)
        if (capture := run_capture(kwargs)) is not None:
            capture.closers.append(items.close)
        try:
            for item in items:
                if isinstance(item, CustomEvent):
                    route.send(item)
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
        route = CustomEventRoute(AsyncCallbackManager, run_manager, kwargs, self)
        run: GreenletRun[Item] | ThreadedRun[Item]
        if await self._streams_async(kwargs):
            # Every model is remote: the engine runs on the loop thread, its streams suspend on
            # async HTTP reads, concurrent drafts are tasks on the loop (no thread per request).
            run = GreenletRun(lambda: self._events(messages, stop, kwargs, executor=LoopExecutor()))
        else:
            run = ThreadedRun(lambda: self._events(messages, stop, kwargs))
        if (capture := run_capture(kwargs)) is not None:
            capture.async_closers.append(run.aclose)
        run.start()
        try:
            async for item in run:
                if isinstance(item, CustomEvent):
                    await route.asend(item)
                    continue
                if run_manager is not None:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            await run.aclose()

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_strict(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [chunk async for chunk in self._astream(messages, stop, run_manager, **kwargs)]
        return await run_in_executor(None, generate_strict, chunks)
