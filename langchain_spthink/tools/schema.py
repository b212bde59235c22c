r"""Tools for the chat model: conversion, ``tool_choice``, and rendering tools into the prompt.

Pure functions, no model calls. Parsing the generated answer lives in
:mod:`langchain_spthink.tools.parsing`.

**Prompt format.** A chat template that knows tools (it reads the ``tools`` variable, as Qwen 2.5's
and Llama 3.1's do) renders them itself: the tool schemas go to the template and the history's
tool calls and results stay structured. Templates that do not (SmolLM2's, Gemma 3's) get the
documented format of :func:`tools_system_prompt` appended to the system message, and the history
rewritten as text: an assistant's tool calls become ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` lines of its message and tool results become a user turn of
``<tool_response name="...">...</tool_response>`` blocks (consecutive results share one turn).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.utils.function_calling import convert_to_openai_tool

from langchain_spthink.errors import InvalidRequestError

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolChoice",
    "format_tool_call",
    "native_tools",
    "prepare_messages",
    "resolve_tool_choice",
    "to_openai_tools",
    "tools_system_prompt",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


def to_openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Convert tools to OpenAI tool dicts (``{"type": "function", "function": {...}}``).

    Args:
        tools: LangChain tools, pydantic models, TypedDicts, Python functions or OpenAI-style
            dicts (a tool dict, or a bare function schema with ``name`` and ``parameters``).

    Returns:
        One OpenAI tool dict per tool, ``parameters`` always an object schema.

    Raises:
        InvalidRequestError: A tool cannot be converted.
    """
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        try:
            converted = convert_to_openai_tool(tool)
        except Exception as exc:  # noqa: BLE001 - langchain raises ValueError / TypeError / ...
            raise InvalidRequestError(f"tools[{i}] cannot be used as a tool: {exc}") from exc
        function = converted.get("function")
        if converted.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError(
                f"tools[{i}] is not a function tool (type {converted.get('type')!r}); "
                "only function tools can be called by a local model"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError(f"tools[{i}] has no name")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": {**function, "parameters": parameters}})
    return out


@dataclass(frozen=True)
class ToolChoice:
    """What the model may or must do with its tools.

    Attributes:
        mode: ``auto`` (may call tools or answer), ``none`` (tools are not offered), or
            ``required`` (must call one of ``names``; the answer is constrained to a call).
        names: The tools that may be called (all bound tools, or the one forced tool).
    """

    mode: Literal["auto", "none", "required"]
    names: tuple[str, ...]

    @property
    def forced(self) -> bool:
        """Whether the answer must be a tool call."""
        return self.mode == "required"


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(t["function"]["name"]) for t in tools]


def resolve_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> ToolChoice:
    """Normalise a ``tool_choice`` value against the bound tools.

    Args:
        choice: ``None`` / ``"auto"``, ``"none"``, ``"any"`` / ``"required"`` / ``True``, a tool
            name, or a dict ``{"type": "function", "function": {"name": ...}}`` (also
            ``{"name": ...}`` and ``{"type": "auto" | "any" | "none" | "required"}``).
        tools: The bound tools as OpenAI tool dicts.

    Returns:
        The normalised choice.

    Raises:
        InvalidRequestError: The value is not one of these, names an unknown tool, or forces a
            call with no tools bound.
    """
    names = list(dict.fromkeys(_tool_names(tools)))  # unique, in order
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and function.get("name"):
            choice = function["name"]
        elif choice.get("name"):
            choice = choice["name"]
        elif choice.get("type") in ("auto", "any", "none", "required"):
            choice = choice["type"]
        else:
            raise InvalidRequestError(f"tool_choice {choice!r} names no tool")
    if choice is None or choice == "auto" or choice is False:
        return ToolChoice("auto", tuple(names))
    if choice == "none":
        return ToolChoice("none", ())
    if not names:
        raise InvalidRequestError(
            f"tool_choice {choice!r} forces a tool call but no tools are bound"
        )
    if choice in ("any", "required") or choice is True:
        return ToolChoice("required", tuple(names))
    if isinstance(choice, str):
        if choice not in names:
            raise InvalidRequestError(
                f"tool_choice names the tool {choice!r}, which is not bound; bound tools: {names}"
            )
        return ToolChoice("required", (choice,))
    raise InvalidRequestError(
        "tool_choice must be 'auto', 'none', 'any', 'required', a tool name or a dict naming "
        f"a tool, got {choice!r}"
    )


def native_tools(template: str | None) -> bool:
    """Whether a Jinja chat template renders tools itself (reads a ``tools`` variable).

    Args:
        template: The chat template, or ``None`` when the backend renders chat its own way
            (then it is given the tools and trusted to render them).

    Returns:
        True when the template (or the backend) takes the tools.
    """
    if template is None:
        return True
    try:
        import jinja2
        from jinja2 import meta

        parsed = jinja2.Environment().parse(template)
    except Exception:  # noqa: BLE001 - an unparsable template is refused later, when rendered
        return "tools" in template
    return "tools" in meta.find_undeclared_variables(parsed)


def format_tool_call(name: str, args: Mapping[str, Any]) -> str:
    """The text of one tool call in the documented format (how the model is asked to write it)."""
    payload = json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{payload}{TOOL_CALL_CLOSE}"


def tools_system_prompt(tools: Sequence[Mapping[str, Any]], choice: ToolChoice) -> str:
    """The system-prompt block that offers tools to a model whose template does not know them.

    Args:
        tools: The bound tools (OpenAI tool dicts).
        choice: The normalised tool choice; a forced choice says so.

    Returns:
        The block: the tools' schemas inside ``<tools>`` and the call format.
    """
    offered = [t for t in tools if t["function"]["name"] in choice.names]
    schemas = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in offered)
    lines = [
        "You can call the following tools. Their names, descriptions and JSON-schema parameters:",
        f"<tools>\n{schemas}\n</tools>",
        "To call a tool, write the call on its own line exactly like this, with the arguments "
        "as a JSON object:",
        f'{TOOL_CALL_OPEN}{{"name": "<tool name>", "arguments": {{...}}}}{TOOL_CALL_CLOSE}',
        'Each result comes back as <tool_response name="<tool name>">...</tool_response>.',
    ]
    if choice.forced and len(choice.names) == 1:
        lines.append(f"Now call the tool {choice.names[0]}.")
    elif choice.forced:
        lines.append("Now call one of the tools.")
    else:
        lines.append("If no tool is needed, answer directly.")
    return "\n".join(lines)


def _history_as_text(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rewrite tool calls and results as text, for templates that drop or refuse them."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                format_tool_call(c["function"]["name"], c["function"]["arguments"])
                for c in m["tool_calls"]
            )
            text = f"{m['content']}\n{calls}" if m["content"] else calls
            entry = {k: v for k, v in m.items() if k != "tool_calls"}
            out.append({**entry, "content": text})
        elif role == "tool":
            name = m.get("name")
            attr = f' name="{name}"' if name else ""
            block = f"<tool_response{attr}>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("_tool_results", None)
    return out


def prepare_messages(
    messages: Sequence[dict[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    choice: ToolChoice,
    *,
    native: bool,
    extra_system: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat dicts and template tools for one model's prompt.

    Args:
        messages: Chat dicts (see :func:`~langchain_spthink.chat.messages.to_chat_dicts`).
        tools: The bound tools (OpenAI tool dicts), if any.
        choice: The normalised tool choice (``none``: tools are not offered).
        native: The model's template renders tools itself (see :func:`native_tools`).
        extra_system: More system instructions (e.g. the JSON schema an answer must follow).

    Returns:
        ``(messages, tools for the template)``: with a native template the messages are
        unchanged and the offered tools are returned; otherwise the history's tool calls and
        results are rewritten as text and the tools described in the system message.
    """
    offered = [dict(t) for t in tools or () if t["function"]["name"] in choice.names]
    out = [dict(m) for m in messages] if native else _history_as_text(messages)
    system_parts = [] if native or not offered else [tools_system_prompt(offered, choice)]
    if extra_system:
        system_parts.append(extra_system)
    if system_parts:
        addition = "\n\n".join(system_parts)
        if out and out[0]["role"] == "system":
            first = out[0]["content"]
            out[0] = {**out[0], "content": f"{first}\n\n{addition}" if first else addition}
        else:
            out.insert(0, {"role": "system", "content": addition})
    return out, (offered or None) if native else None
