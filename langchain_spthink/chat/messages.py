"""LangChain messages to chat dicts, and chat dicts to each model's prompt ids.

* :func:`to_chat_dicts` turns LangChain messages (system / human / ai with tool calls / tool) into
  the OpenAI-style dicts chat templates read; content the text-only models cannot take (images,
  audio, files) is refused with :class:`~langchain_spthink.errors.InvalidRequestError`.
* :func:`render_prompt_ids` renders those dicts with one backend's chat template (or a template
  given by the user), so two models with different templates each get the prompt in their own.

The split of the output into reasoning and answer lives in :mod:`langchain_spthink.chat.reasoning`
(:class:`ReasoningSplitter` and :func:`opens_reasoning` are re-exported here).
"""

from __future__ import annotations

import json
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

from langchain_spthink.backends.base import Backend
from langchain_spthink.chat.reasoning import ReasoningSplitter, opens_reasoning
from langchain_spthink.errors import ConfigError, InvalidRequestError, SpThinkError

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


def wants_continuation(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether the conversation ends in an assistant message whose text the model continues."""
    last = messages[-1]
    return (
        last["role"] == "assistant" and bool(last["content"].strip()) and not last.get("tool_calls")
    )


def strict_alternation(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite a conversation for templates that demand user/assistant alternation.

    System messages are joined into one leading system message, tool results become user
    messages, tool calls become assistant text, and consecutive messages of one role are merged.
    Used only when a template refuses the conversation as it is (e.g. Gemma's).
    """
    system = [m["content"] for m in messages if m["role"] == "system" and m["content"]]
    out: list[dict[str, Any]] = (
        [{"role": "system", "content": "\n\n".join(system)}] if system else []
    )
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        text = m["content"]
        if role == "tool":
            role = "user"
            name = m.get("name")
            text = f"Tool result{f' ({name})' if name else ''}: {text}"
        elif role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                f"Tool call: {c['function']['name']}({json.dumps(c['function']['arguments'])})"
                for c in m["tool_calls"]
            )
            text = f"{text}\n{calls}" if text else calls
        elif role not in ("user", "assistant"):
            role = "user"
        if out and out[-1]["role"] == role and role != "system":
            out[-1] = {"role": role, "content": f"{out[-1]['content']}\n\n{text}"}
        else:
            out.append({"role": role, "content": text})
    return out


def _no_template(backend: Backend, template_field: str) -> ConfigError:
    return ConfigError(
        f"model {getattr(backend, 'name', backend)!r} has no chat template; "
        f"pass one with {template_field}=..."
    )


def _render_once(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    continue_final: bool,
    chat_template: str | None,
    template_field: str,
) -> list[int]:
    if chat_template is None:
        render = getattr(backend, "chat_prompt_ids", None)
        if not callable(render):  # a backend that cannot render chat needs a template
            raise _no_template(backend, template_field)
        ids = render(
            list(messages),
            tools=tools,
            add_generation_prompt=not continue_final,
            continue_final_message=continue_final,
        )
        return [int(i) for i in ids]
    if not chat_template:
        raise _no_template(backend, template_field)
    return _render_template(backend, messages, tools, continue_final, chat_template)


def _render_template(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    continue_final: bool,
    template: str,
) -> list[int]:
    """Render with a user's template: the model's tokenizer when it has one, else plain Jinja."""
    options: dict[str, Any] = {
        "tools": list(tools) if tools else None,
        "chat_template": template,
        "add_generation_prompt": not continue_final,
        "continue_final_message": continue_final,
    }
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "apply_chat_template"):
        ids = tokenizer.apply_chat_template(
            list(messages), **options, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]
    from transformers.utils.chat_template_utils import render_jinja_template

    result: Any = render_jinja_template(
        conversations=[list(messages)], **options, bos_token="", eos_token=""
    )
    text = result[0][0] if isinstance(result, tuple) else result
    return backend.encode(text if isinstance(text, str) else text[0])


def render_prompt_ids(
    backend: Backend,
    messages: Sequence[dict[str, Any]],
    *,
    tools: Sequence[dict[str, Any]] | None = None,
    continue_final: bool = False,
    chat_template: str | None = None,
    template_field: str = "chat_template",
) -> list[int]:
    """Render chat dicts into prompt ids with one backend's chat template.

    The backend's own rendering (``chat_prompt_ids``) is used unless ``chat_template`` overrides
    it (then the backend's tokenizer renders with that template, or plain Jinja without one).
    When the template refuses the conversation (e.g. roles must alternate), it is rendered again
    after :func:`strict_alternation`.

    Args:
        backend: The model's backend.
        messages: Chat dicts from :func:`to_chat_dicts`.
        tools: OpenAI-style tool schemas for the template.
        continue_final: Continue the final assistant message instead of opening a new turn.
        chat_template: A Jinja chat template to use instead of the model's own.
        template_field: Name of the setting to mention when the model has no template.

    Returns:
        The prompt's token ids.

    Raises:
        ConfigError: The backend cannot render chat (no ``chat_prompt_ids``) and no template was
            given, or the given template is empty.
        InvalidRequestError: The template cannot render the conversation.
    """
    try:
        return _render_once(backend, messages, tools, continue_final, chat_template, template_field)
    except SpThinkError:
        raise
    except Exception as first:  # noqa: BLE001 - templates raise anything (jinja, ValueError, ...)
        retry = strict_alternation(messages)
        try:
            return _render_once(
                backend, retry, tools, continue_final, chat_template, template_field
            )
        except SpThinkError:
            raise
        except Exception:  # noqa: BLE001
            name = getattr(backend, "name", backend)
            raise InvalidRequestError(
                f"the chat template of {name!r} cannot render this conversation: {first}"
            ) from first
