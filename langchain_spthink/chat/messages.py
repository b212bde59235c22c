"""LangChain messages to chat dicts, and chat dicts to each model's prompt ids.

* :func:`to_chat_dicts` turns LangChain messages (system / human / ai with tool calls / tool) into
  the OpenAI-style dicts chat templates read; content the text-only models cannot take (images,
  audio, files) is refused with :class:`~langchain_spthink.errors.InvalidRequestError`.
* :func:`render_prompt_ids` (defined in :mod:`langchain_spthink.chat.request`, which builds every
  request from chat dicts) renders those dicts with one backend's chat template (or a template
  given by the user), so two models with different templates each get the prompt in their own.

The split of the output into reasoning and answer lives in :mod:`langchain_spthink.chat.reasoning`
(:class:`ReasoningSplitter` and :func:`opens_reasoning` are re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_spthink.chat.reasoning import ReasoningSplitter, opens_reasoning
from langchain_spthink.chat.request import (
    render_prompt_ids,
    strict_alternation,
    wants_continuation,
)
from langchain_spthink.errors import InvalidRequestError

__all__ = [
    "ReasoningSplitter",
    "opens_reasoning",
    "render_prompt_ids",
    "strict_alternation",
    "to_chat_dicts",
    "wants_continuation",
]

_TEXT_BLOCKS = {"text"}
_SKIPPED_BLOCKS = {
    # Earlier reasoning is not fed back as answer text (carried as ``reasoning_content``).
    "reasoning",
    "thinking",
    # Tool calls of AI messages are carried by ``AIMessage.tool_calls``.
    "tool_call",
    "tool_call_chunk",
    "tool_use",
    "invalid_tool_call",
    "server_tool_call",
    "server_tool_call_chunk",
    "server_tool_result",
}
_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant"}


def _block_text(block: Any, index: int, role: str) -> tuple[str, str]:
    """Return ``(kind, text)`` of one content block: kind ``text``, ``reasoning`` or ``skip``."""
    if isinstance(block, str):
        return "text", block
    if not isinstance(block, dict):
        raise InvalidRequestError(
            f"message {index} ({role}): content blocks must be strings or dicts, "
            f"got {type(block).__name__}"
        )
    kind = block.get("type")
    if kind in _TEXT_BLOCKS:
        return "text", str(block.get("text") or "")
    if kind in ("reasoning", "thinking"):
        return "reasoning", str(block.get("reasoning") or block.get("thinking") or "")
    if kind in _SKIPPED_BLOCKS:
        return "skip", ""
    raise InvalidRequestError(
        f"message {index} ({role}) has a content block of type {kind!r}, which these "
        "text-only models cannot take; send text content (str or 'text' blocks) only"
    )


def _content(message: BaseMessage, index: int, role: str) -> tuple[str, str]:
    """Return ``(text, reasoning)`` of a message's content."""
    content = message.content
    if isinstance(content, str):
        return content, ""
    texts: list[str] = []
    reasoning: list[str] = []
    for block in content:
        kind, text = _block_text(block, index, role)
        if kind == "text":
            texts.append(text)
        elif kind == "reasoning":
            reasoning.append(text)
    return "".join(texts), "".join(reasoning)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to OpenAI-style dicts for a chat template.

    System, human, AI (with ``tool_calls``; earlier reasoning as ``reasoning_content``), tool and
    generic chat messages are supported; tool-call arguments are dicts, as Hugging Face chat
    templates expect.

    Args:
        messages: The conversation.

    Returns:
        One dict per message with ``role`` and ``content`` (and ``tool_calls``,
        ``tool_call_id``, ``name``, ``reasoning_content`` where present).

    Raises:
        InvalidRequestError: The list is empty, a message type is unknown, or a content block is
            not text (images, audio, files).
    """
    if not messages:
        raise InvalidRequestError("no messages: a chat request needs at least one message")
    tool_names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            role = "tool"
        elif isinstance(message, ChatMessage):
            role = _ROLES.get(message.role, message.role)
        else:
            raise InvalidRequestError(
                f"message {i}: unsupported message type {type(message).__name__}"
            )
        text, reasoning = _content(message, i, role)
        entry: dict[str, Any] = {"role": role, "content": text}
        if isinstance(message, AIMessage):
            extra = message.additional_kwargs.get("reasoning_content")
            reasoning = extra if isinstance(extra, str) and extra else reasoning
            if reasoning:
                entry["reasoning_content"] = reasoning
            if message.tool_calls:
                calls = []
                for n, call in enumerate(message.tool_calls):
                    call_id = call.get("id") or f"call_{i}_{n}"
                    tool_names[call_id] = call["name"]
                    calls.append(
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": call["name"], "arguments": dict(call["args"])},
                        }
                    )
                entry["tool_calls"] = calls
        elif isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
            name = message.name or tool_names.get(message.tool_call_id)
            if name:
                entry["name"] = name
        elif isinstance(message, FunctionMessage):
            entry["name"] = message.name
        if role in ("user", "system") and message.name:
            entry["name"] = message.name
        out.append(entry)
    return out
