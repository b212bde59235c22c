"""The OpenAI-compatible HTTP app: ``/v1/chat/completions``, ``/v1/models`` and ``/health``.

:func:`create_app` wraps a chat model (normally
:class:`~langchain_spthink.chat.model.ChatSpeculativeThinking`) in a FastAPI app. Every request
runs through the model's async streaming API (``astream``), so the event loop never blocks on
generation; a bounded queue admits ``max_concurrency`` running plus ``max_queue`` waiting requests
and answers 503 beyond that. A client that disconnects cancels its generation (the engine stops
and frees its caches). Errors are OpenAI-style JSON: ``{"error": {"message", "type", "param",
"code"}}``.

Extensions to OpenAI's format (ignored by clients that do not know them):

* ``message.reasoning_content`` / ``delta.reasoning_content``: the ``<think>`` part;
* ``spthink`` on a streamed chunk: ``{"delegation": {...}}`` or ``{"fallback": {...}}`` (an event
  chunk with an empty delta, sent after the text the event refers to), and ``{"summary": {...}}``
  on the chunk carrying ``finish_reason``; on a non-streaming answer, the summary
  (``response_metadata["spthink"]`` of the chat model: delegations, per-model usage, large share);
* request fields ``top_k`` and ``mode`` (``speculative`` | ``small`` | ``large``).

``tools`` / ``tool_choice`` / ``parallel_tool_calls`` go to the model's ``bind_tools`` (answers
carry OpenAI ``tool_calls``, streamed as ``delta.tool_calls``) and ``response_format``
(``json_object`` / ``json_schema``) to the model's ``response_format`` call argument; a forced
tool choice and JSON formats are decoded under a grammar, so they always parse.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langchain_spthink.chat.callbacks import DELEGATION_EVENT, FALLBACK_EVENT
from langchain_spthink.errors import (
    ConfigError,
    InvalidRequestError,
    LargeModelError,
    ModelLoadError,
    SpThinkError,
)
from langchain_spthink_integrations.openai_server import schemas

__all__ = ["APIError", "ModelSource", "create_app"]

logger = logging.getLogger("spthink.server")

ModelSource = BaseChatModel | Callable[[], BaseChatModel]
"""A chat model, or a function that builds one (called once, by :func:`create_app`)."""

_T = TypeVar("_T")
_FINISH = {"stop": "stop", "eos": "stop", "length": "length", "timeout": "length"}
_EVENT_KEYS = {DELEGATION_EVENT: "delegation", FALLBACK_EVENT: "fallback"}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text}
    for code, text in (
        (400, "Invalid request"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Request body too large"),
        (500, "Server error"),
        (503, "Queue full"),
    )
}


class APIError(Exception):
    """An error answered as OpenAI-style JSON.

    Args:
        status: HTTP status.
        message: Human-readable message.
        type: OpenAI error type (``invalid_request_error``, ``server_error``, ...).
        param: The request field at fault, if any.
        code: Machine-readable code, if any.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return JSONResponse(self.body, status_code=self.status, headers=self.headers or None)


def _error_of(exc: BaseException) -> APIError:
    """The API error a model exception maps to."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, (InvalidRequestError, ConfigError)):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, ModelLoadError):
        return APIError(503, f"model could not be loaded: {exc}", type="server_error")
    if isinstance(exc, LargeModelError):
        return APIError(502, f"the large model failed: {exc}", type="server_error")
    if isinstance(exc, SpThinkError):
        return APIError(500, str(exc), type="server_error")
    logger.exception("request failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}", type="server_error")


# ------------------------------------------------------------------------------ limits
class _BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = APIError(
            413,
            f"request body too large (limit {self.limit} bytes)",
            code="request_too_large",
        )
        await error.response()(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            parts.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(parts), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Slot:
    """One admitted request: waits for a run slot, releases both on :meth:`release`."""

    def __init__(self, limiter: _Limiter) -> None:
        self.limiter = limiter
        self.running = False
        self.released = False

    async def run(self) -> None:
        await self.limiter.semaphore.acquire()
        self.running = True

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.running:
            self.limiter.semaphore.release()
        self.limiter.admitted -= 1


class _Limiter:
    """``max_concurrency`` requests run, ``max_queue`` more wait; beyond that: 503."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.capacity = max_concurrency + max_queue
        self.admitted = 0

    def admit(self) -> _Slot:
        if self.admitted >= self.capacity:
            raise APIError(
                503,
                f"server busy: {self.admitted} requests running or queued; retry later",
                type="server_error",
                code="queue_full",
            )
        self.admitted += 1
        return _Slot(self)

    def stats(self) -> dict[str, int]:
        running = self.max_concurrency - self.semaphore._value  # noqa: SLF001
        return {"running": running, "waiting": max(0, self.admitted - running)}


class _ClientGone(Exception):
    """The client disconnected while its request was being served."""


async def _watched(request: Request, coro: Awaitable[_T], poll: float = 0.2) -> _T:
    """Await ``coro``; cancel it when the client disconnects (raises :class:`_ClientGone`)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise _ClientGone
    finally:
        if not task.done():
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})


# ------------------------------------------------------------------------ conversion
def _text(content: schemas.Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def _arguments(call: schemas.ToolCall, index: int) -> dict[str, Any]:
    try:
        args = json.loads(call.function.arguments or "{}")
    except json.JSONDecodeError as exc:
        raise APIError(
            400,
            f"messages[{index}].tool_calls: arguments of {call.function.name!r} are not JSON",
            param=f"messages.{index}.tool_calls",
        ) from exc
    if not isinstance(args, dict):
        raise APIError(
            400,
            f"messages[{index}].tool_calls: arguments must be a JSON object",
            param=f"messages.{index}.tool_calls",
        )
    return args


def to_langchain(messages: list[schemas.Message]) -> list[BaseMessage]:
    """OpenAI chat messages as LangChain messages."""
    out: list[BaseMessage] = []
    for i, m in enumerate(messages):
        if isinstance(m, schemas.SystemMessage):
            out.append(SystemMessage(_text(m.content), name=m.name))
        elif isinstance(m, schemas.UserMessage):
            out.append(HumanMessage(_text(m.content), name=m.name))
        elif isinstance(m, schemas.AssistantMessage):
            kwargs: dict[str, Any] = {}
            if m.reasoning_content:
                kwargs["reasoning_content"] = m.reasoning_content
            calls = [
                {"name": c.function.name, "args": _arguments(c, i), "id": c.id, "type": "tool_call"}
                for c in m.tool_calls or []
            ]
            out.append(
                AIMessage(_text(m.content), name=m.name, tool_calls=calls, additional_kwargs=kwargs)
            )
        else:
            out.append(ToolMessage(_text(m.content), tool_call_id=m.tool_call_id))
    return out


def _supports_tools(model: BaseChatModel) -> bool:
    return type(model).bind_tools is not BaseChatModel.bind_tools


def _supports_response_format(model: BaseChatModel) -> bool:
    """Whether the model takes an OpenAI-style ``response_format`` call argument."""
    return bool(getattr(model, "accepts_response_format", False))


class _EventSink(AsyncCallbackHandler):
    """Collects the model's delegation / fallback custom events, in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    async def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: uuid.UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name in _EVENT_KEYS:
            self.items.append((_EVENT_KEYS[name], dict(data)))

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        items, self.items = self.items, []
        return items


_Item = AIMessageChunk | tuple[str, dict[str, Any]]


async def _items(
    model: BaseChatModel, messages: list[BaseMessage], call: dict[str, Any]
) -> AsyncGenerator[_Item, None]:
    """The model's chunks, with its custom events (``(key, data)``) after the text they follow."""
    sink = _EventSink()
    runnable: Any = model
    tools = call.pop("tools", None)
    tool_choice = call.pop("tool_choice", None)
    parallel = call.pop("parallel_tool_calls", None)
    if tools:
        extra: dict[str, Any] = {} if tool_choice is None else {"tool_choice": tool_choice}
        if parallel is not None:
            extra["parallel_tool_calls"] = parallel
        runnable = model.bind_tools(tools, **extra)
    stream = cast(
        AsyncGenerator[AIMessageChunk, None],
        runnable.astream(messages, config={"callbacks": [sink]}, **call),
    )
    try:
        async for chunk in stream:
            for event in sink.drain():
                yield event
            yield chunk
        for event in sink.drain():
            yield event
    finally:
        # Cancelling the consumer must still stop the engine and free its caches.
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            await stream.aclose()


class _Totals:
    """What the chunks add up to: text, reasoning, tool calls, usage and the summary."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_chunks: list[Any] = []
        self.input_tokens = 0
        self.output_tokens = 0
        self.reasoning_tokens = 0
        self.metadata: dict[str, Any] = {}

    def add(self, chunk: AIMessageChunk) -> None:
        if isinstance(chunk.content, str) and chunk.content:
            self.content.append(chunk.content)
        reasoning = chunk.additional_kwargs.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            self.reasoning.append(reasoning)
        self.tool_chunks.extend(chunk.tool_call_chunks)
        usage = chunk.usage_metadata
        if usage:
            self.input_tokens += usage.get("input_tokens", 0)
            self.output_tokens += usage.get("output_tokens", 0)
            details = usage.get("output_token_details") or {}
            self.reasoning_tokens += int(details.get("reasoning", 0) or 0)
        if chunk.response_metadata:
            self.metadata.update(chunk.response_metadata)

    @property
    def finish_reason(self) -> str:
        if self.tool_chunks:
            return "tool_calls"
        reason = str(self.metadata.get("finish_reason") or "stop")
        return _FINISH.get(reason, reason)

    @property
    def summary(self) -> dict[str, Any] | None:
        value = self.metadata.get("spthink")
        return dict(value) if isinstance(value, dict) else None

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    def tool_calls(self) -> list[dict[str, Any]] | None:
        merged: dict[int, dict[str, Any]] = {}
        for c in self.tool_chunks:
            index = c.get("index")
            entry = merged.setdefault(
                len(merged) if index is None else index, {"id": None, "name": "", "args": ""}
            )
            entry["id"] = entry["id"] or c.get("id")
            entry["name"] += c.get("name") or ""
            entry["args"] += c.get("args") or ""
        calls = [
            {
                "id": e["id"] or f"call_{i}",
                "type": "function",
                "function": {"name": e["name"], "arguments": e["args"] or "{}"},
            }
            for i, e in enumerate(merged[k] for k in sorted(merged))
        ]
        return calls or None


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _sse(obj: Any) -> str:
    return f"data: {_dumps(obj)}\n\n"


# ------------------------------------------------------------------------------- app
class _EventStream(StreamingResponse):
    """SSE response that always closes its body (stopping generation) and frees its slot."""

    def __init__(
        self, body: AsyncGenerator[str, None], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._body_gen = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._body_gen.aclose()
                await self._on_close()


class _AccessLog:
    """ASGI middleware: one INFO line per HTTP request, written when its response has ended.

    ``POST /v1/chat/completions 200 tokens=42 delegations=1 seconds=3.21``: the handler leaves
    ``tokens`` / ``delegations`` in ``request.state`` (``-`` when a request produced none). No
    header, body or key is logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 0

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            logger.info(
                "%s %s %s tokens=%s delegations=%s seconds=%.2f",
                scope.get("method", "-"),
                scope.get("path", "-"),
                status or "-",
                state.get("tokens", "-"),
                state.get("delegations", "-"),
                time.perf_counter() - started,
            )


def _log_totals(request: Request, totals: _Totals) -> None:
    """Leave the request's output tokens and delegation count for the access log."""
    request.state.tokens = totals.output_tokens
    summary = totals.summary or {}
    delegations = summary.get("delegations")
    request.state.delegations = len(delegations) if isinstance(delegations, list) else "-"


def create_app(
    model: ModelSource,
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    max_body_bytes: int = 1_000_000,
    max_tokens_limit: int = 4096,
    max_queue: int = 8,
    max_concurrency: int = 1,
) -> FastAPI:
    """Build the OpenAI-compatible app serving ``model``.

    Args:
        model: The chat model (e.g. ``ChatSpeculativeThinking(...)``), or a function building it
            (called once, here).
        model_id: Id clients send as ``model`` (default ``"spthink"``); the chat model's own
            ``model_name`` (e.g. ``smollm2-135m-instruct+gemma3-270m``) is accepted too.
        api_key: When set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        max_body_bytes: Larger request bodies get 413.
        max_tokens_limit: Requests asking for more output tokens get 400; also caps the default.
        max_queue: Requests that may wait for a run slot; beyond that: 503.
        max_concurrency: Requests generating at the same time.

    Returns:
        The FastAPI app (serve it with uvicorn, e.g.
        :func:`~langchain_spthink_integrations.openai_server.serve`).
    """
    if max_concurrency < 1 or max_queue < 0 or max_body_bytes < 1 or max_tokens_limit < 1:
        raise ValueError(
            "max_concurrency, max_body_bytes and max_tokens_limit must be >= 1, max_queue >= 0"
        )
    chat_model = model if isinstance(model, BaseChatModel) else model()
    if not isinstance(chat_model, BaseChatModel):
        raise TypeError(f"the model factory returned {type(chat_model).__name__}, not a chat model")
    primary_id = model_id or "spthink"
    ids = [primary_id]
    own_name = getattr(chat_model, "model_name", None)
    if isinstance(own_name, str) and own_name and own_name not in ids:
        ids.append(own_name)
    default_budget = min(int(getattr(chat_model, "max_tokens", None) or 512), max_tokens_limit)
    limiter = _Limiter(max_concurrency, max_queue)
    created = int(time.time())
    secret = api_key.encode() if api_key else None

    async def check_key(request: Request) -> None:
        if secret is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), secret):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    app = FastAPI(
        title="langchain-spthink OpenAI-compatible server",
        version="1",
        description=__doc__,
    )
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_AccessLog)  # added last: outermost, so it sees 413s too
    app.state.chat_model = chat_model
    app.state.limiter = limiter

    def openapi() -> dict[str, Any]:
        """The OpenAPI schema, with this app's max_tokens limit written into it."""
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            request = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
            for name in ("max_tokens", "max_completion_tokens"):
                for option in request[name].get("anyOf", [request[name]]):
                    if option.get("type") == "integer":
                        option["maximum"] = max_tokens_limit
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
            param = None
        else:
            param = loc[0] if loc else None  # the top-level field; the message has the path
            message = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: "
                f"{e.get('msg')}"
                for e in errors[:5]
            )
        return APIError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind, headers=exc.headers).response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and load: model ids and the running / waiting request counts."""
        return {"status": "ok", "models": ids, **limiter.stats()}

    @app.get(
        "/v1/models",
        response_model=schemas.ModelList,
        dependencies=[Depends(check_key)],
        responses={k: v for k, v in _ERROR_RESPONSES.items() if k == 401},
    )
    async def list_models() -> schemas.ModelList:
        """The served model ids."""
        return schemas.ModelList(data=[schemas.ModelCard(id=i, created=created) for i in ids])

    def call_arguments(body: schemas.ChatCompletionRequest) -> dict[str, Any]:
        if body.model not in ids:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; available: {ids}",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )
        budget = body.max_completion_tokens or body.max_tokens
        if budget is not None and budget > max_tokens_limit:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise APIError(
                400,
                f"{param} is {budget}, over this server's limit of {max_tokens_limit}",
                param=param,
                code="max_tokens_too_large",
            )
        call: dict[str, Any] = {"max_tokens": budget or default_budget}
        if body.response_format is not None and body.response_format.type != "text":
            if not _supports_response_format(chat_model):
                raise APIError(
                    400,
                    f"response_format {body.response_format.type!r} is not supported by this "
                    "model; only 'text'",
                    param="response_format",
                    code="unsupported_parameter",
                )
            call["response_format"] = body.response_format.model_dump(exclude_none=True)
        for name in ("temperature", "top_p", "top_k", "seed", "mode"):
            value = getattr(body, name)
            if value is not None:
                call[name] = value
        if body.stop is not None:
            stops = [body.stop] if isinstance(body.stop, str) else list(body.stop)
            if any(not s for s in stops):
                raise APIError(400, "stop strings must not be empty", param="stop")
            if stops:
                call["stop"] = stops
        if body.tools and body.tool_choice != "none":
            if not _supports_tools(chat_model):
                raise APIError(
                    400,
                    "tools are not supported by this model (it has no bind_tools)",
                    param="tools",
                    code="unsupported_parameter",
                )
            call["tools"] = body.tools
            if body.tool_choice is not None:
                call["tool_choice"] = body.tool_choice
            if body.parallel_tool_calls is not None:
                call["parallel_tool_calls"] = body.parallel_tool_calls
        return call

    @app.post(
        "/v1/chat/completions",
        response_model=schemas.ChatCompletion,
        dependencies=[Depends(check_key)],
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "The completion (JSON), or SSE chunks when stream is true.",
            },
            **_ERROR_RESPONSES,
        },
    )
    async def chat_completions(body: schemas.ChatCompletionRequest, request: Request) -> Response:
        """Create a chat completion (OpenAI Chat Completions API, streaming or not)."""
        call = call_arguments(body)
        messages = to_langchain(body.messages)
        slot = limiter.admit()
        try:
            await _watched(request, slot.run())
        except _ClientGone:
            slot.release()
            return Response(status_code=499)
        except BaseException:
            slot.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        items = _items(chat_model, messages, call)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return await _stream(
                request,
                items,
                slot,
                completion_id=completion_id,
                model_name=body.model,
                include_usage=include_usage,
            )
        try:
            totals = await _watched(request, _collect(items))
        except _ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            return _error_of(exc).response()
        finally:
            with anyio.CancelScope(shield=True):
                await items.aclose()
            slot.release()
        _log_totals(request, totals)
        reasoning = "".join(totals.reasoning) or None
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(totals.content),
            "reasoning_content": reasoning,
        }
        if (tool_calls := totals.tool_calls()) is not None:
            message["tool_calls"] = tool_calls
        answer = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": totals.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": totals.usage(),
            "spthink": totals.summary,
        }
        return Response(_dumps(answer), media_type="application/json")

    async def _collect(items: AsyncIterator[_Item]) -> _Totals:
        totals = _Totals()
        async for item in items:
            if isinstance(item, AIMessageChunk):
                totals.add(item)
        return totals

    async def _stream(
        request: Request,
        items: AsyncGenerator[_Item, None],
        slot: _Slot,
        *,
        completion_id: str,
        model_name: str,
        include_usage: bool,
    ) -> Response:

        async def close() -> None:
            with anyio.CancelScope(shield=True):
                await items.aclose()
            slot.release()

        # The first item decides the status: errors before any output are JSON 4xx/5xx.
        try:
            first: _Item | None = await _watched(request, anext(items))
        except StopAsyncIteration:
            first = None
        except _ClientGone:
            await close()
            return Response(status_code=499)
        except BaseException as exc:
            await close()
            if isinstance(exc, Exception):
                return _error_of(exc).response()
            raise

        created_at = int(time.time())

        def chunk(
            delta: dict[str, Any],
            finish: str | None = None,
            spthink: dict[str, Any] | None = None,
        ) -> str:
            obj: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created_at,
                "model": model_name,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                obj["usage"] = None
            if spthink is not None:
                obj["spthink"] = spthink
            return _sse(obj)

        async def body() -> AsyncGenerator[str, None]:
            totals = _Totals()
            tool_index: dict[int, int] = {}
            yield chunk({"role": "assistant", "content": ""})
            try:
                pending = [first] if first is not None else []

                async def all_items() -> AsyncIterator[_Item]:
                    for item in pending:
                        yield item
                    async for item in items:
                        yield item

                async for item in all_items():
                    if isinstance(item, tuple):
                        key, data = item
                        yield chunk({}, spthink={key: data})
                        continue
                    totals.add(item)
                    reasoning = item.additional_kwargs.get("reasoning_content")
                    if isinstance(reasoning, str) and reasoning:
                        yield chunk({"reasoning_content": reasoning})
                    if isinstance(item.content, str) and item.content:
                        yield chunk({"content": item.content})
                    for tc in item.tool_call_chunks:
                        index = tc.get("index") or 0
                        position = tool_index.setdefault(index, len(tool_index))
                        call: dict[str, Any] = {
                            "index": position,
                            "function": {"arguments": tc.get("args") or ""},
                        }
                        if tc.get("id"):
                            call["id"] = tc["id"]
                            call["type"] = "function"
                        if tc.get("name"):
                            call["function"]["name"] = tc["name"]
                        yield chunk({"tool_calls": [call]})
            except Exception as exc:  # after the 200: report in-band, as OpenAI does
                yield _sse(_error_of(exc).body)
                yield "data: [DONE]\n\n"
                return
            _log_totals(request, totals)
            yield chunk({}, totals.finish_reason, spthink={"summary": totals.summary})
            if include_usage:
                yield _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created_at,
                        "model": model_name,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": totals.usage(),
                    }
                )
            yield "data: [DONE]\n\n"

        return _EventStream(body(), close)

    return app
