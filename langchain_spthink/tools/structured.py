"""What a call's answer must look like: tools, ``tool_choice``, ``response_format``, grammar.

:func:`answer_format` turns a call's tool and response-format arguments into an
:class:`AnswerFormat`: the tools offered in the prompt, extra system instructions, whether tool
calls are parsed from the answer, and the grammar the answer is decoded under (a forced tool
call, a JSON schema, or any JSON object). :func:`structured_output` builds
``with_structured_output``'s runnable on top of ``bind_tools`` / ``response_format``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from langchain_core.output_parsers import (
    BaseOutputParser,
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from langchain_spthink.errors import InvalidRequestError
from langchain_spthink.tools.constraints import json_grammar, tool_call_grammar
from langchain_spthink.tools.schema import ToolChoice, resolve_tool_choice, to_openai_tools

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.messages import AIMessage

__all__ = [
    "AnswerFormat",
    "ToolCallingMixin",
    "answer_format",
    "normalize_response_format",
    "structured_output",
]

Method = Literal["function_calling", "json_schema", "json_mode"]


@dataclass(frozen=True)
class AnswerFormat:
    """How one call's answer is prompted, decoded and parsed.

    Attributes:
        tools: The bound tools (OpenAI tool dicts), ``None`` without tools.
        choice: The normalised ``tool_choice``.
        parse_tools: Tool calls are parsed from the answer (tools offered, choice not ``none``).
        system: Extra system instructions (the JSON schema of a JSON answer).
        grammar: The llguidance grammar the answer is decoded under, ``None``: free text.
    """

    tools: list[dict[str, Any]] | None
    choice: ToolChoice
    parse_tools: bool
    system: str | None
    grammar: str | None


def normalize_response_format(value: Any) -> dict[str, Any] | None:
    """Check an OpenAI-style ``response_format``; return ``None`` for plain text.

    Args:
        value: ``{"type": "text"}``, ``{"type": "json_object"}``, or ``{"type": "json_schema",
            "json_schema": {"name": ..., "schema": {...}}}`` (a bare JSON schema under
            ``json_schema`` is accepted too).

    Returns:
        ``{"type": "json_object"}`` or ``{"type": "json_schema", "schema": {...}}``, or ``None``.

    Raises:
        InvalidRequestError: The value has another shape.
    """
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("type") not in (
        "text",
        "json_object",
        "json_schema",
    ):
        raise InvalidRequestError(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema', ...}, "
            f"got {value!r}"
        )
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidRequestError("response_format json_schema needs a 'json_schema' object")
    schema = spec.get("schema") if "schema" in spec else spec
    if not isinstance(schema, Mapping):
        raise InvalidRequestError("response_format json_schema.schema must be a JSON schema dict")
    return {"type": "json_schema", "schema": dict(schema)}


def _json_instruction(schema: Mapping[str, Any] | None) -> str:
    if schema is None:
        return "Answer with one JSON object and nothing else."
    return (
        "Answer with one JSON object and nothing else. It must follow this JSON schema:\n"
        + json.dumps(schema, ensure_ascii=False)
    )


def answer_format(
    tools: Sequence[Any] | None,
    tool_choice: Any = None,
    *,
    parallel_tool_calls: bool | None = None,
    response_format: Any = None,
) -> AnswerFormat:
    """Decide how a call's answer is prompted, decoded and parsed.

    A forced ``tool_choice`` (``any`` / ``required`` / a tool name) decodes the answer under the
    ``<tool_call>`` grammar of the allowed tools (one call, several when
    ``parallel_tool_calls``); otherwise a JSON ``response_format`` decodes it under its schema
    (or any JSON object). ``auto`` leaves the answer free and parses tool calls from it.

    Args:
        tools: The call's tools (anything :func:`~langchain_spthink.tools.schema.to_openai_tools`
            converts), or ``None``.
        tool_choice: The call's ``tool_choice``.
        parallel_tool_calls: Allow several calls in a forced answer.
        response_format: The call's ``response_format``.

    Returns:
        The answer's format.

    Raises:
        InvalidRequestError: A tool, ``tool_choice`` or ``response_format`` is invalid.
    """
    converted = to_openai_tools(tools) if tools else None
    choice = resolve_tool_choice(tool_choice, converted or [])
    response = normalize_response_format(response_format)
    grammar: str | None = None
    system: str | None = None
    if converted and choice.forced:
        grammar = tool_call_grammar(converted, choice.names, parallel=bool(parallel_tool_calls))
    elif response is not None:
        schema = response.get("schema")
        grammar = json_grammar(schema)
        system = _json_instruction(schema)
    return AnswerFormat(
        tools=converted,
        choice=choice,
        parse_tools=bool(converted) and choice.mode != "none",
        system=system,
        grammar=grammar,
    )


def structured_output(
    model: BaseChatModel,
    schema: Any,
    *,
    method: Method = "function_calling",
    include_raw: bool = False,
) -> Runnable[LanguageModelInput, Any]:
    """``with_structured_output`` for a chat model that has ``bind_tools`` and ``response_format``.

    Args:
        model: The chat model.
        schema: A pydantic model, a TypedDict, a JSON schema dict or an OpenAI tool dict
            (``json_mode`` also accepts ``None``: any JSON object, parsed to a dict).
        method: ``function_calling`` (a forced tool call), ``json_schema`` (the answer is a JSON
            value of the schema) or ``json_mode`` (a JSON object; with a schema it is decoded
            under the schema too).
        include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.

    Returns:
        A runnable from the model's input to the parsed output (pydantic instance or dict).

    Raises:
        InvalidRequestError: Unknown method, or no schema where one is needed.
    """
    if method not in ("function_calling", "json_schema", "json_mode"):
        raise InvalidRequestError(
            f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
        )
    if schema is None and method != "json_mode":
        raise InvalidRequestError(f"with_structured_output(method={method!r}) needs a schema")
    is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
    ls_format = {"kwargs": {"method": method}, "schema": schema}
    parser: BaseOutputParser[Any]
    llm: Runnable[LanguageModelInput, Any]
    if method == "function_calling":
        name = to_openai_tools([schema])[0]["function"]["name"]
        llm = model.bind_tools([schema], tool_choice=name, ls_structured_output_format=ls_format)
        if is_pydantic:
            parser = PydanticToolsParser(tools=[schema], first_tool_only=True)
        else:
            parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    else:
        if schema is None:
            response: dict[str, Any] = {"type": "json_object"}
        else:
            json_schema = _json_schema(schema)
            response = {"type": "json_schema", "json_schema": {"schema": json_schema}}
        llm = model.bind(response_format=response, ls_structured_output_format=ls_format)
        parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
    if not include_raw:
        return llm | parser
    parser_assign = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    parser_none = RunnablePassthrough.assign(parsed=lambda _: None)
    with_fallback = parser_assign.with_fallbacks([parser_none], exception_key="parsing_error")
    return RunnableMap(raw=llm) | with_fallback


def _json_schema(schema: Any) -> dict[str, Any]:
    """The JSON schema of a pydantic model, TypedDict, JSON schema or OpenAI tool dict."""
    if isinstance(schema, Mapping) and schema.get("type") == "function":
        function = schema.get("function") or {}
        return dict(function.get("parameters") or {})
    try:
        return dict(convert_to_json_schema(schema))
    except Exception as exc:  # noqa: BLE001 - langchain raises ValueError / TypeError
        raise InvalidRequestError(f"cannot make a JSON schema of {schema!r}: {exc}") from exc


class ToolCallingMixin:
    """``bind_tools`` and ``with_structured_output`` for a chat model.

    The model must read the call arguments ``tools``, ``tool_choice``, ``parallel_tool_calls``
    and ``response_format`` (see :func:`answer_format`).
    """

    accepts_response_format: ClassVar[bool] = True
    """Takes OpenAI-style ``response_format`` call arguments (read by the OpenAI server)."""

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools the model may call; tool calls come back in ``AIMessage.tool_calls``.

        Args:
            tools: LangChain tools, pydantic models, TypedDicts, functions or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default: call tools or answer), ``"none"`` (tools not
                offered), ``"any"`` / ``"required"`` / ``True`` (must call one of them) or a
                tool name / ``{"type": "function", "function": {"name": ...}}`` (must call that
                one). A forced call is decoded under a grammar, so it is always a valid call
                of an allowed tool with schema-conforming arguments.
            parallel_tool_calls: Allow several calls in a forced answer (default: one).
            **kwargs: Further call arguments to bind (e.g. ``max_tokens``).

        Returns:
            The model with the tools bound (a runnable).

        Raises:
            InvalidRequestError: A tool cannot be converted or ``tool_choice`` is invalid.
        """
        formatted = to_openai_tools(tools)
        resolve_tool_choice(tool_choice, formatted)  # fail now, not at the first call
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return cast("BaseChatModel", self).bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Method = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Answer as an instance of ``schema``, decoded under a grammar built from it.

        Args:
            schema: A pydantic model (parsed to an instance), a TypedDict, a JSON schema or an
                OpenAI tool dict (parsed to a dict); ``None`` only with ``json_mode``.
            method: ``"function_calling"`` (a forced tool call), ``"json_schema"`` (the answer
                is the JSON value) or ``"json_mode"`` (a JSON object; a given schema is enforced
                too).
            include_raw: Return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
            strict: Accepted for compatibility; output is always schema-constrained.
            **kwargs: Not accepted (raises).

        Returns:
            A runnable from the model's input to the parsed output.

        Raises:
            InvalidRequestError: Unknown arguments or method, or a schema that cannot be used.
        """
        if kwargs:
            raise InvalidRequestError(
                f"with_structured_output got unknown argument(s) {sorted(kwargs)}"
            )
        return structured_output(
            cast("BaseChatModel", self), schema, method=method, include_raw=include_raw
        )
