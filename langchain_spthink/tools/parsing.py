r"""Tool calls from the generated answer: whole-text parsing and the streaming parser.

Recognised forms (the answer is the text after any reasoning):

* ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>`` blocks, several per answer, with
  a JSON object or a list of objects inside; ``parameters`` is accepted for ``arguments``, and
  arguments given as a JSON-encoded string are decoded. An unclosed last block whose JSON is
  complete counts (a model that stops right after the JSON).
* Plain JSON: the whole answer (optionally in a ````json`` fence) is such an object or a list of
  them, every ``name`` one of the bound tools. Any other JSON stays text.

A block that is not a JSON object with a tool name and object arguments becomes an
``InvalidToolCall`` carrying the raw text; nothing raises and no text is lost.
:class:`ToolCallStream` is the incremental form (text before a call streams out, the call is held
back until complete); :func:`parse_tool_calls` is the same parser over a whole text, so the two
agree by construction.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    InvalidToolCall,
    ToolCall,
    message_chunk_to_message,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from langchain_spthink.tools.schema import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

__all__ = [
    "AnswerParser",
    "ParsedAnswer",
    "ToolCallStream",
    "finalize_tool_calls",
    "new_call_id",
    "generate_strict",
    "parse_tool_calls",
]

_NAME = re.compile(r'"name"\s*:\s*"([^"\\]{1,200})"')
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def new_call_id() -> str:
    """A fresh tool-call id (``call_`` + 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


Call = ToolCall | InvalidToolCall
Piece = tuple[Literal["text"], str] | tuple[Literal["call"], Call]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def _one_call(obj: Any, raw: str, new_id: Callable[[], str]) -> Call:
    """A tool call from one decoded JSON value, or an invalid call saying what is wrong."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI's {"type": "function", "function": {...}} shape
    if not isinstance(obj, dict):
        return invalid_tool_call(
            name=None, args=raw, id=new_id(), error="a tool call must be a JSON object"
        )
    name = obj.get("name")
    args: Any = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    if not isinstance(name, str) or not name:
        return invalid_tool_call(
            name=None, args=raw, id=new_id(), error='the tool call has no "name"'
        )
    if not isinstance(args, dict):
        return invalid_tool_call(
            name=name,
            args=args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
            id=new_id(),
            error=f"the arguments of {name!r} are not a JSON object",
        )
    return tool_call(name=name, args=args, id=new_id())


def _unfenced(text: str) -> str:
    """``text`` stripped, without a Markdown code fence around it."""
    body = text.strip()
    fenced = _FENCE.match(body)
    return fenced.group(1) if fenced else body


def _json_items(body: str) -> list[Any]:
    """The JSON value of ``body`` as a list (a lone value is one item); raises JSONDecodeError."""
    value = json.loads(body)
    return value if isinstance(value, list) else [value]


def _calls_of_block(inner: str, new_id: Callable[[], str]) -> list[Call]:
    """The calls inside one ``<tool_call>`` block (an object, or a list of objects)."""
    text = _unfenced(inner)
    try:
        items = _json_items(text)
    except json.JSONDecodeError as exc:
        found = _NAME.search(text)
        return [
            invalid_tool_call(
                name=found.group(1) if found else None,
                args=inner,
                id=new_id(),
                error=f"the tool call is not valid JSON: {exc.msg} at character {exc.pos}",
            )
        ]
    if not items:
        return [invalid_tool_call(name=None, args=inner, id=new_id(), error="empty tool call")]
    return [_one_call(item, inner, new_id) for item in items]


def _plain_json_calls(
    text: str, names: Collection[str], new_id: Callable[[], str]
) -> list[Call] | None:
    """Tool calls when the whole answer is a tool-call JSON value naming bound tools, else None."""
    body = _unfenced(text)
    try:
        items = _json_items(body)
    except json.JSONDecodeError:
        return None
    if not items or not all(
        isinstance(i, dict)
        and i.get("name") in names
        and set(i) <= {"name", "arguments", "parameters", "type", "id"}
        for i in items
    ):
        return None
    return [_one_call(item, body, new_id) for item in items]


@dataclass
class ToolCallStream:
    """Incremental tool-call parser over the answer's text.

    Text is fed in arbitrary pieces; :meth:`feed` returns ``("text", str)`` pieces that are
    certainly answer text and ``("call", ToolCall | InvalidToolCall)`` for each complete call.
    Held back: a possible start of ``<tool_call>``, trailing whitespace (dropped if a call
    follows), everything from ``<tool_call>`` until its close, and a whole answer that starts
    with ``{``, ``[`` or a fence while it may still be a plain-JSON call. Whitespace between
    calls, before the first text after calls and at the end of an answer with calls is dropped;
    an answer without calls is passed through unchanged.

    Args:
        names: The bound tools' names (a plain-JSON answer must name one of them).
        new_id: Makes tool-call ids.
    """

    names: Collection[str]
    new_id: Callable[[], str] = new_call_id
    _buf: str = ""
    _mode: Literal["start", "text", "call", "json"] = "start"
    _calls: int = field(default=0)
    _emitted: bool = False  # some answer text went out

    @property
    def calls(self) -> int:
        """Number of calls (valid or not) found so far."""
        return self._calls

    def _text(self, out: list[Piece], text: str) -> None:
        if self._calls and not self._emitted:
            text = text.lstrip()  # the answer text starts after the calls
        if text:
            out.append(("text", text))
            self._emitted = True

    def _found(self, out: list[Piece], calls: list[Call]) -> None:
        self._calls += len(calls)
        out.extend(("call", c) for c in calls)

    def feed(self, text: str) -> list[Piece]:
        """Add answer text; return what is now certain."""
        self._buf += text
        out: list[Piece] = []
        while True:
            if self._mode == "start":
                stripped = self._buf.lstrip()
                if not stripped:
                    return out
                if stripped[0] in "{[`" and self.names:
                    self._mode = "json"
                else:
                    self._mode = "text"
            if self._mode == "json":
                if TOOL_CALL_OPEN in self._buf:
                    self._mode = "text"  # a tagged call follows: the JSON so far is text
                else:
                    return out
            if self._mode == "text":
                at = self._buf.find(TOOL_CALL_OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buf, TOOL_CALL_OPEN)
                    upto = len(self._buf) - keep
                    upto = len(self._buf[:upto].rstrip())
                    self._text(out, self._buf[:upto])
                    self._buf = self._buf[upto:]
                    return out
                self._text(out, self._buf[:at].rstrip())
                self._buf = self._buf[at + len(TOOL_CALL_OPEN) :]
                self._mode = "call"
            if self._mode == "call":
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                self._found(out, _calls_of_block(self._buf[:end], self.new_id))
                self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :]
                self._mode = "text"

    def flush(self) -> list[Piece]:
        """The answer has ended: return whatever is held back, parsed."""
        out: list[Piece] = []
        buf, self._buf = self._buf, ""
        if self._mode == "call":
            if buf.strip():
                self._found(out, _calls_of_block(buf, self.new_id))
            else:
                self._found(
                    out,
                    [invalid_tool_call(name=None, args="", id=self.new_id(), error="empty call")],
                )
        elif self._mode == "json":
            calls = _plain_json_calls(buf, self.names, self.new_id)
            if calls is not None:
                self._found(out, calls)
            else:
                self._text(out, buf)
        else:
            self._text(out, buf.rstrip() if self._calls else buf)
        self._mode = "text"
        return out


@dataclass(frozen=True)
class ParsedAnswer:
    """An answer split into its text and its tool calls."""

    content: str
    tool_calls: list[ToolCall]
    invalid_tool_calls: list[InvalidToolCall]


def parse_tool_calls(
    text: str, names: Collection[str] = (), *, new_id: Callable[[], str] = new_call_id
) -> ParsedAnswer:
    """Parse a whole answer (see the module docstring for the forms).

    Args:
        text: The answer (reasoning already removed).
        names: The bound tools' names (needed for the plain-JSON form).
        new_id: Makes tool-call ids.

    Returns:
        The text outside the calls, the valid calls and the invalid ones.
    """
    stream = ToolCallStream(names, new_id)
    pieces = stream.feed(text) + stream.flush()
    content = "".join(p[1] for p in pieces if p[0] == "text")
    calls = [p[1] for p in pieces if p[0] == "call"]
    valid = [c for c in calls if c.get("type") == "tool_call"]
    invalid = [c for c in calls if c.get("type") == "invalid_tool_call"]
    return ParsedAnswer(content, valid, invalid)  # type: ignore[arg-type]


def finalize_tool_calls(message: AIMessageChunk) -> AIMessage:
    """The finished reply of an aggregated chunk, its tool calls decided strictly.

    LangChain parses streamed tool-call chunks leniently when chunks are added (a truncated
    JSON object is "repaired"); a finished reply must not turn a malformed call into a valid
    one. A call is valid iff it has a name and its arguments are a JSON object.

    Args:
        message: The reply aggregated from streamed chunks.

    Returns:
        The message, with ``tool_calls`` / ``invalid_tool_calls`` decided strictly from its
        tool-call chunks (as LangChain's conversion when it has none).
    """
    finished = message_chunk_to_message(message)
    chunks = message.tool_call_chunks
    if not chunks or not isinstance(finished, AIMessage):
        return cast(AIMessage, finished)
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for chunk in chunks:
        name, raw, call_id = chunk.get("name"), chunk.get("args") or "", chunk.get("id")
        args: Any = None
        try:
            args = json.loads(raw) if raw.strip() else {}
            error = None if isinstance(args, dict) else "the arguments are not a JSON object"
        except json.JSONDecodeError as exc:
            error = f"the arguments are not valid JSON: {exc.msg}"
        if not name:
            error = 'the tool call has no "name"'
        if error is None and isinstance(args, dict):
            valid.append(tool_call(name=str(name), args=args, id=call_id))
        else:
            invalid.append(invalid_tool_call(name=name, args=raw, id=call_id, error=error))
    return finished.model_copy(update={"tool_calls": valid, "invalid_tool_calls": invalid})


def generate_strict(chunks: Iterable[ChatGenerationChunk]) -> ChatResult:
    """``generate_from_stream`` with the tool calls decided by :func:`finalize_tool_calls`.

    Raises:
        ValueError: The stream has no chunks.
    """
    items = list(chunks)
    if not items:
        raise ValueError("No generations found in stream.")
    generation = items[0]
    if len(items) > 1:
        generation += items[1:]
    message = generation.message
    finished = (
        finalize_tool_calls(message)
        if isinstance(message, AIMessageChunk)
        else message_chunk_to_message(message)
    )
    return ChatResult(
        generations=[ChatGeneration(message=finished, generation_info=generation.generation_info)]
    )


Kind = Literal["reasoning", "content", "tool"]


class AnswerParser:
    """Routes the split output's pieces: reasoning as is, answer text through the tool parser.

    Args:
        names: The bound tools' names when tool calls are parsed from the answer; ``None``: no
            tools (answer text passes through).

    Yields (from :meth:`feed` / :meth:`flush`) ``(kind, payload)``: ``("reasoning" | "content",
    text)`` or ``("tool", tool_call_chunk)`` with consecutive indexes.
    """

    def __init__(self, names: Collection[str] | None) -> None:
        self.tools = ToolCallStream(names) if names is not None else None
        self.calls = 0  # index of the next tool call
        self.valid_calls = 0

    def _out(self, pieces: list[Piece]) -> Iterator[tuple[Kind, Any]]:
        for kind, value in pieces:
            if kind == "text":
                yield "content", value
            else:
                call = cast(Call, value)
                self.valid_calls += call.get("type") == "tool_call"
                yield "tool", tool_call_chunk_of(call, self.calls)
                self.calls += 1

    def feed(self, part: Literal["reasoning", "content"], text: str) -> Iterator[tuple[Kind, Any]]:
        """Add a piece of the split output."""
        if part == "reasoning" or self.tools is None:
            yield part, text
        else:
            yield from self._out(self.tools.feed(text))

    def flush(self) -> Iterator[tuple[Kind, Any]]:
        """The output has ended: whatever the tool parser held back."""
        if self.tools is not None:
            yield from self._out(self.tools.flush())


def tool_call_chunk_of(call: Call, index: int) -> dict[str, Any]:
    """A parsed call as one ``tool_call_chunk``: arguments JSON-encoded (raw text if invalid)."""
    args = call.get("args")
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {"name": call.get("name"), "args": text, "id": call.get("id"), "index": index}
