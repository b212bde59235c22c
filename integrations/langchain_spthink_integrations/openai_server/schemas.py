"""Request and response bodies of the OpenAI-compatible server (the subset it implements).

Field names and shapes follow OpenAI's Chat Completions API. Extensions are marked as such:
``reasoning_content`` (the vLLM / DeepSeek convention), ``top_k`` and ``mode`` in the request, and
the ``spthink`` field of responses and chunks (delegation events and the request's summary).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ErrorBody",
    "ErrorResponse",
    "FunctionCall",
    "ModelCard",
    "ModelList",
    "ResponseFormat",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "ToolCall",
    "ToolMessage",
    "Usage",
    "UserMessage",
]


class _Lenient(BaseModel):
    """Unknown fields are ignored, as OpenAI clients send fields this server has no use for."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    """A text content part (the only kind these text-only models take)."""

    type: Literal["text"]
    text: str

    @field_validator("type", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if value != "text":
            raise ValueError(
                f"content part type {value!r} is not supported: these models take text only"
            )
        return value


Content = str | list[TextPart]


class FunctionCall(_Lenient):
    """A function call: name and JSON-encoded arguments."""

    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    """A tool call of an earlier assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Lenient):
    """A system (or developer) message."""

    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Lenient):
    """A user message."""

    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Lenient):
    """An earlier assistant message (its reasoning may come back as ``reasoning_content``)."""

    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class ToolMessage(_Lenient):
    """A tool result."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class StreamOptions(_Lenient):
    """Streaming options."""

    include_usage: bool | None = None


class ResponseFormat(_Lenient):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (``{"name", "schema"}``).

    JSON answers are decoded under a grammar (constrained decoding), so they always parse.
    """

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Lenient):
    """``POST /v1/chat/completions`` body."""

    model: str = Field(description="A model id from /v1/models.")
    messages: list[Message] = Field(min_length=1, description="The conversation.")
    max_tokens: int | None = Field(default=None, ge=1, description="Output token budget.")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Output token budget (takes precedence over max_tokens)."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, description="Extension: top-k cut (0: off).")
    stop: Annotated[str, Field(min_length=1)] | list[Annotated[str, Field(min_length=1)]] | None = (
        Field(default=None, description="Stop string(s), not empty.")
    )
    seed: int | None = Field(default=None, ge=-(2**53), le=2**53)
    n: int | None = Field(default=None, ge=1, le=1, description="Only 1 is supported.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    mode: Literal["speculative", "small", "large"] | None = Field(
        default=None, description="Extension: run both models (default) or one alone."
    )


class ErrorBody(BaseModel):
    """The ``error`` object of an error response."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the server."""

    error: ErrorBody


class Usage(BaseModel):
    """Token usage, as OpenAI reports it."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: dict[str, int] | None = None


class _ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _Choice(BaseModel):
    index: int = 0
    message: _ResponseMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    """Non-streaming answer; ``spthink`` (extension) is the request's summary."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[_Choice]
    usage: Usage
    spthink: dict[str, Any] | None = None


class _Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class _ChunkChoice(BaseModel):
    index: int = 0
    delta: _Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One SSE ``data:`` payload of a streamed answer.

    ``spthink`` (extension) is ``{"delegation": {...}}`` or ``{"fallback": {...}}`` on an event
    chunk (empty delta), and ``{"summary": {...}}`` on the chunk with ``finish_reason``.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[_ChunkChoice]
    usage: Usage | None = None
    spthink: dict[str, Any] | None = None


class ModelCard(BaseModel):
    """One entry of ``/v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "spthink"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
