"""Constrained decoding in its grammar form, over the contract of the engine and the backends.

A :class:`TokenConstraint` restricts which token ids one model may sample next, e.g. a grammar
compiled from a JSON schema. It is stateful and belongs to one session: the backend masks the
logits row with :meth:`TokenConstraint.mask` before sampling and reports the sampled id with
:meth:`TokenConstraint.accept`. The engine creates one with a :data:`ConstraintFactory` for the
model that writes the answer, at the position where the answer starts. Both are defined lower in
the layers (:mod:`langchain_spthink.engine.sampling`, :mod:`langchain_spthink.backends.base`)
and re-exported here.

:class:`GrammarConstraint` is the implementation, over **llguidance** (Earley parser + lexer on
the token trie; no torch dependency, fast masks, JSON-schema and Lark grammars, any tokenizer
given as token bytes). Grammars are llguidance grammar strings built by :func:`json_grammar`,
:func:`tool_call_grammar` (the ``<tool_call>`` wrapper over a union of tools) and
:func:`grammar_factory` turns one into a factory. The llguidance tokenizer of a backend is built
once and cached per backend: from its Hugging Face fast tokenizer (transformers backend), from its
token bytes (llama.cpp backend: ``token_bytes()``), or by the backend itself
(``constraint_tokenizer()``, e.g. the scripted test backend).

Invariant: EOS is allowed exactly when the grammar accepts the text so far, and :attr:`done` is
true once the grammar cannot be extended (only EOS may follow).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from langchain_spthink.backends.base import ConstraintFactory
from langchain_spthink.engine.sampling import TokenConstraint
from langchain_spthink.errors import BackendError, InvalidRequestError

if TYPE_CHECKING:
    import llguidance

    from langchain_spthink.backends.base import Backend

__all__ = [
    "JSON_FORMAT",
    "ConstraintFactory",
    "GrammarConstraint",
    "closed_schema",
    "default_reserve",
    "TokenConstraint",
    "grammar_factory",
    "json_grammar",
    "llg_tokenizer",
    "tool_call_grammar",
]


JSON_FORMAT: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
"""How constrained JSON is laid out: ``json.dumps``' default separators, no other whitespace.

Models have seen this layout most; it also bounds the output (no endless whitespace).
"""


def _with_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    guidance = {**JSON_FORMAT, **dict(schema.get("x-guidance") or {})}
    return {**closed_schema(schema), "x-guidance": guidance}


# Keywords whose values are JSON data, not schemas.
_VALUE_KEYWORDS = frozenset({"const", "enum", "default", "examples", "x-guidance"})


def closed_schema(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists properties.

    As OpenAI's strict mode: constrained output never invents keys a schema does not declare
    (JSON Schema allows them by default, and a small model would happily fill them in). An
    object schema without ``properties`` (e.g. "any JSON object") stays open, and so does one
    that sets ``additionalProperties`` itself.
    """
    if isinstance(schema, list):
        return [closed_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    out = {
        key: value if key in _VALUE_KEYWORDS else closed_schema(value)
        for key, value in schema.items()
    }
    if isinstance(schema.get("properties"), Mapping):
        # `properties` maps names to schemas: close each one, never treat the map as a schema.
        out["properties"] = {k: closed_schema(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def json_grammar(schema: Mapping[str, Any] | None = None) -> str:
    """An llguidance grammar for one JSON value following ``schema`` (any object if ``None``).

    Args:
        schema: A JSON schema (``$defs`` / ``$ref``, ``anyOf``, enums, bounds... as llguidance
            supports them).

    Returns:
        The grammar string.

    Raises:
        InvalidRequestError: The schema is not a JSON object.
    """
    if schema is not None and not isinstance(schema, Mapping):
        raise InvalidRequestError(f"a JSON schema must be a dict, got {type(schema).__name__}")
    import llguidance

    chosen: Mapping[str, Any] = schema if schema is not None else {"type": "object"}
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(_with_format(chosen)))
    except ValueError as exc:
        raise InvalidRequestError(f"invalid JSON schema: {exc}") from exc


def call_schema(tools: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """JSON schema of one call ``{"name": ..., "arguments": {...}}`` to one of ``names``."""
    options = []
    for tool in tools:
        function = tool["function"]
        if function["name"] not in names:
            continue
        parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not options:
        raise InvalidRequestError(f"no bound tool is named {list(names)}")
    return options[0] if len(options) == 1 else {"anyOf": options}


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]], names: Sequence[str], *, parallel: bool = False
) -> str:
    """A grammar for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` answers.

    Args:
        tools: The bound tools (OpenAI tool dicts).
        names: The tools that may be called (the union of their schemas is allowed).
        parallel: Allow several calls, one per line; otherwise exactly one.

    Returns:
        The grammar string (Lark with an inline JSON schema).
    """
    import llguidance

    from langchain_spthink.tools.schema import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

    schema = json.dumps(_with_format(call_schema(tools, names)))
    start = 'start: call ("\\n" call)*' if parallel else "start: call"
    lark = f"{start}\ncall: {json.dumps(TOOL_CALL_OPEN)} body {json.dumps(TOOL_CALL_CLOSE)}\n"
    lark += f"body: %json {schema}\n"
    return str(llguidance.LLMatcher.grammar_from_lark(lark))


# ----------------------------------------------------------------------- tokenizers
_TOKENIZERS: weakref.WeakKeyDictionary[Any, llguidance.LLTokenizer] = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def _build_tokenizer(backend: Backend) -> tuple[llguidance.LLTokenizer, bool]:
    """Return ``(tokenizer, cacheable)`` for a backend."""
    import llguidance

    if getattr(backend, "is_remote", False):
        raise InvalidRequestError(
            f"constrained decoding needs a local model: {backend.name} is remote (its server "
            "samples the tokens); let a local model write the constrained answer"
        )
    eos = sorted(backend.eos_ids)
    own = getattr(backend, "constraint_tokenizer", None)
    if callable(own):
        return own(), False
    token_bytes = getattr(backend, "token_bytes", None)
    if callable(token_bytes):
        pieces: list[bytes] = token_bytes()
        wrapper = _BytesTokenizer(pieces, eos[0] if eos else 0, backend.encode)
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(wrapper), eos_token=eos), True
    hf = getattr(backend, "tokenizer", None)
    if hf is not None:
        import llguidance.hf

        try:
            return llguidance.hf.from_tokenizer(hf, eos_token=eos), True
        except ValueError as exc:
            raise InvalidRequestError(
                f"constrained decoding cannot read the tokenizer of {backend.name}: {exc}"
            ) from exc
    raise InvalidRequestError(
        f"constrained decoding cannot read the tokenizer of {backend.name}: it has neither a "
        "Hugging Face fast tokenizer, token_bytes() nor constraint_tokenizer()"
    )


class _BytesTokenizer:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, EOS, and an encode function."""

    def __init__(self, tokens: list[bytes], eos: int, encode: Callable[[str], list[int]]) -> None:
        self.tokens = tokens
        self.eos_token_id = eos
        self.bos_token_id = None
        self.special_token_ids = [i for i, t in enumerate(tokens) if t.startswith(b"\xff")]
        self._encode = encode

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._encode(text)


def llg_tokenizer(backend: Backend) -> llguidance.LLTokenizer:
    """The llguidance tokenizer of a backend (built once per backend, ~0.3 s for SmolLM2).

    Raises:
        InvalidRequestError: The backend is remote, or its tokenizer cannot be read.
    """
    with _TOKENIZERS_LOCK:
        try:
            cached = _TOKENIZERS.get(backend)
        except TypeError:  # not weak-referenceable: build every time
            cached = None
        if cached is not None:
            return cached
        built, cacheable = _build_tokenizer(backend)
        if cacheable:
            try:
                _TOKENIZERS[backend] = built
            except TypeError:
                pass
        return built


# ----------------------------------------------------------------------- the constraint
# Token texts that end something and open nothing: an unescaped quote (ends a string) after
# nothing or after text that does not end in JSON punctuation (`, "` would open a key), followed
# only by punctuation; or closing brackets / braces only.
_CLOSES_STRING = re.compile(rb'^(?:[^"\\]*[^"\\\s,:\[{])?"[\s,:}\]]*$')
_CLOSES_BRACKETS = re.compile(rb"^[\s,]*[}\]][\s,}\]]*$")


def default_reserve(budget: int) -> int:
    """Tokens kept to finish a constrained answer: a quarter of the budget, at least 16."""
    return max(16, budget // 4)


class GrammarConstraint:
    """A :class:`TokenConstraint` over an llguidance grammar.

    **Finishing within a budget.** A grammar bounds the format, not the length of free strings,
    and a small model can repeat itself inside one until the token budget runs out, leaving a
    truncated, invalid value. Given ``budget`` (the most tokens this answer may take), the
    constraint *steers* once ``budget - reserve`` tokens are written: among the allowed ids it
    keeps EOS and the ids whose text ends a string (text, an unescaped ``"``, then only ``,:}]``
    and spaces) if any is allowed, else EOS and those that only close brackets / braces if any
    is, so open strings, arrays and objects close and the value completes. Before that point
    the model is free within the grammar.

    Args:
        tokenizer: The llguidance tokenizer of the model that samples.
        grammar: An llguidance grammar string (see :func:`json_grammar`).
        budget: The most tokens the answer may take; ``None``: no steering.
        reserve: Tokens kept for finishing (default :func:`default_reserve`).

    Raises:
        InvalidRequestError: The grammar is invalid (e.g. an unsupported schema feature).
    """

    def __init__(
        self,
        tokenizer: llguidance.LLTokenizer,
        grammar: str,
        *,
        budget: int | None = None,
        reserve: int | None = None,
    ) -> None:
        import llguidance

        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if failed:
            raise InvalidRequestError(f"the output grammar is invalid: {'; '.join(messages)}")
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        self._vocab = int(tokenizer.vocab_size)
        # One bit per token id, 32 ids per int32 word (llguidance's layout).
        self._bits = np.zeros((1, (self._vocab + 31) // 32), dtype=np.int32)
        self._tokenizer = tokenizer
        self.tokens = 0
        self.steer_from = (
            None
            if budget is None
            else max(0, budget - (reserve if reserve is not None else default_reserve(budget)))
        )
        # [2, vocab] bool (ends a string / closes brackets), built when steering starts.
        self._closers: torch.Tensor | None = None

    def limit(self, tokens: int) -> None:
        """The answer may take at most ``tokens`` more tokens (the engine's budget left).

        Steering then starts ``default_reserve(tokens)`` tokens before that, or earlier if the
        constructor's ``budget`` says so.
        """
        start = self.tokens + max(0, tokens - default_reserve(tokens))
        self.steer_from = start if self.steer_from is None else min(self.steer_from, start)

    @property
    def steering(self) -> bool:
        """Whether the answer is being steered to its end (see the class docstring)."""
        return self.steer_from is not None and self.tokens >= self.steer_from

    def _closing_ids(self) -> torch.Tensor:
        if self._closers is None:
            self._closers = _closing_ids_of(self._tokenizer)
        return self._closers

    def allowed(self) -> torch.Tensor:
        """The ``[vocab]`` bool tensor of the ids the grammar allows next."""
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bits)
        if self._matcher.is_error():
            raise BackendError(f"constrained decoding failed: {self._matcher.get_error()}")
        bits = np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self._vocab]
        return torch.from_numpy(bits.view(np.bool_))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (``[n]``) with forbidden ids at ``-inf``; ids past the tokenizer's too."""
        allowed = self.allowed()
        if self.steering:
            # Ending a string first (inside one, "]" is just text), then closing brackets.
            for closers in self._closing_ids():
                closing = allowed & closers
                if bool(closing.any()):
                    allowed = closing
                    break
        allowed = allowed.to(logits.device)
        n = logits.shape[-1]
        if n > self._vocab:  # the model's embedding is padded past the tokenizer
            allowed = torch.cat([allowed, allowed.new_zeros(n - self._vocab)])
        return logits.masked_fill(~allowed[:n], float("-inf"))

    def accept(self, token: int) -> None:
        """Advance by the sampled id.

        Raises:
            BackendError: The id is not allowed (the sampler ignored the mask).
        """
        if not self._matcher.consume_token(int(token)):
            raise BackendError(
                f"constrained decoding: token {token} is not allowed here "
                f"({self._matcher.get_error()})"
            )
        self.tokens += 1

    @property
    def done(self) -> bool:
        """True when the grammar is complete and cannot be extended."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """True when the text so far is a complete sentence of the grammar."""
        return bool(self._matcher.is_accepting())


# LLTokenizer -> [2, vocab] closers; keyed by id with the tokenizer held (so the id stays its
# own), a few entries (one per model in use; scripted vocabularies make a new one per request).
_CLOSERS: OrderedDict[int, tuple[llguidance.LLTokenizer, torch.Tensor]] = OrderedDict()
_CLOSERS_LOCK = threading.Lock()


def _closing_ids_of(tokenizer: llguidance.LLTokenizer) -> torch.Tensor:
    """``[2, vocab]`` bool: ids that can end a JSON string / close brackets (EOS in both)."""
    vocab = int(tokenizer.vocab_size)
    with _CLOSERS_LOCK:
        cached = _CLOSERS.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            _CLOSERS.move_to_end(id(tokenizer))
            return cached[1]
    pieces = [tokenizer.decode_bytes([i]) for i in range(vocab)]
    closers = torch.tensor(
        [
            [bool(_CLOSES_STRING.match(p)) for p in pieces],
            [bool(_CLOSES_BRACKETS.match(p)) for p in pieces],
        ],
        dtype=torch.bool,
    )
    closers[:, list(tokenizer.eos_tokens)] = True
    with _CLOSERS_LOCK:
        _CLOSERS[id(tokenizer)] = (tokenizer, closers)
        while len(_CLOSERS) > 4:
            _CLOSERS.popitem(last=False)
    return closers


def grammar_factory(grammar: str, *, budget: int | None = None) -> ConstraintFactory:
    """A :data:`ConstraintFactory` that compiles ``grammar`` for the backend that writes.

    Args:
        grammar: An llguidance grammar string.
        budget: The answer's token budget, for steering it to a complete value before the
            budget runs out (see :class:`GrammarConstraint`); ``None``: no steering.

    Returns:
        ``backend -> GrammarConstraint`` (the backend's llguidance tokenizer is cached).
    """

    def build(backend: Backend) -> TokenConstraint:
        return GrammarConstraint(llg_tokenizer(backend), grammar, budget=budget)

    return build
