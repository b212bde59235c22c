"""Constrained decoding: the llguidance grammar constraint, and every backend honouring it.

The property tests sample at temperature 1 from tiny *random-weight* models with the tiny
byte-level BPE tokenizer of ``tests/tiny_models.py`` (1024 ids): the model itself has no idea of
JSON, so a valid, schema-conforming output every time is the mask's doing. Validation is
independent of the grammar: pydantic models.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from langchain_spthink.backends.remote import RemoteBackend
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import BackendError, InvalidRequestError
from langchain_spthink.tools.constraints import (
    GrammarConstraint,
    TokenConstraint,
    closed_schema,
    default_reserve,
    grammar_factory,
    json_grammar,
    llg_tokenizer,
    tool_call_grammar,
)
from langchain_spthink.tools.parsing import parse_tool_calls
from langchain_spthink.tools.schema import to_openai_tools


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Person(_Strict):
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=120)
    tags: list[Literal["a", "b", "c"]] = Field(max_length=3)


class Point(_Strict):
    x: int = Field(ge=-10, le=10)
    y: int = Field(ge=-10, le=10)


class Shape(_Strict):
    kind: Literal["dot", "line"]
    points: list[Point] = Field(min_length=1, max_length=2)
    label: str | None = Field(default=None, max_length=5)
    filled: bool


class Flags(_Strict):
    """Optional fields only: the grammar may close the object at once."""

    on: bool | None = None
    level: Literal[1, 2, 3] | None = None


SCHEMAS: list[type[BaseModel]] = [Person, Shape, Flags]


# ------------------------------------------------------------------------ closed schemas
def test_closed_schema_closes_every_object_with_properties() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "free": {"type": "object"},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
        },
        "$defs": {"A": {"type": "object", "properties": {"a": {}}}},
        "default": {"properties": {"kept": 1}},
    }
    closed = closed_schema(schema)
    assert closed["additionalProperties"] is False
    inner = closed["properties"]["properties"]
    assert inner["additionalProperties"] is False and inner["properties"] == {
        "x": {"type": "integer"}
    }
    assert "additionalProperties" not in closed["properties"]["free"]  # any object stays any
    assert closed["properties"]["open"]["additionalProperties"] is True
    assert closed["$defs"]["A"]["additionalProperties"] is False
    assert closed["default"] == {"properties": {"kept": 1}}  # data, not a schema
    assert "additionalProperties" not in schema  # the input is not modified


# ------------------------------------------------------------------ the grammar constraint
def tokenizer_backend(tiny_pair: tuple[Any, Any]) -> TransformersBackend:
    backend: TransformersBackend = tiny_pair[0]
    return backend


def allowed_ids(constraint: GrammarConstraint) -> set[int]:
    return {int(i) for i in constraint.allowed().nonzero().flatten()}


def test_eos_is_allowed_exactly_when_the_json_is_complete(tiny_pair: tuple[Any, Any]) -> None:
    backend = tokenizer_backend(tiny_pair)
    (eos,) = backend.eos_ids
    constraint = grammar_factory(json_grammar(Point.model_json_schema()))(backend)
    text = '{"x": 3, "y": -2}'
    for token in backend.encode(text):
        assert eos not in allowed_ids(constraint)
        assert not constraint.done
        constraint.accept(token)
    assert constraint.accepting and constraint.done
    assert allowed_ids(constraint) == {eos}


def test_done_waits_while_the_value_can_still_grow(tiny_pair: tuple[Any, Any]) -> None:
    backend = tokenizer_backend(tiny_pair)
    (eos,) = backend.eos_ids
    constraint = grammar_factory(json_grammar({"type": "integer"}))(backend)
    for token in backend.encode("12"):
        constraint.accept(token)
    assert constraint.accepting and not constraint.done  # "123" is still possible
    assert eos in allowed_ids(constraint)


def test_mask_sets_forbidden_ids_to_minus_infinity(tiny_pair: tuple[Any, Any]) -> None:
    backend = tokenizer_backend(tiny_pair)
    constraint = grammar_factory(json_grammar({"enum": ["yes", "no"]}))(backend)
    vocab = len(backend.tokenizer)
    logits = torch.randn(vocab + 64)  # an embedding padded past the tokenizer
    masked = constraint.mask(logits)
    allowed = torch.isfinite(masked)
    assert not bool(allowed[vocab:].any())
    assert {backend.decode([int(i)]) for i in allowed.nonzero().flatten()} <= {
        '"',
        '"y',
        '"n',
        '"yes',
        '"no',
        '"yes"',
        '"no"',
    }
    assert torch.equal(masked[allowed], logits[allowed])  # allowed logits are untouched


def test_accepting_a_forbidden_token_raises(tiny_pair: tuple[Any, Any]) -> None:
    backend = tokenizer_backend(tiny_pair)
    constraint = grammar_factory(json_grammar(Point.model_json_schema()))(backend)
    with pytest.raises(BackendError, match="not allowed"):
        constraint.accept(backend.encode("hello")[0])


def test_an_unsupported_schema_is_a_clear_request_error(tiny_pair: tuple[Any, Any]) -> None:
    backend = tokenizer_backend(tiny_pair)
    with pytest.raises(InvalidRequestError, match="grammar is invalid"):
        grammar_factory(json_grammar({"type": "no-such-type"}))(backend)
    with pytest.raises(InvalidRequestError, match="must be a dict"):
        json_grammar(["not", "a", "schema"])  # type: ignore[arg-type]


def test_the_llguidance_tokenizer_is_built_once_per_backend(tiny_pair: tuple[Any, Any]) -> None:
    small, large = tiny_pair
    assert llg_tokenizer(small) is llg_tokenizer(small)
    assert llg_tokenizer(large) is not llg_tokenizer(small)


def test_remote_models_cannot_be_constrained(tiny_tokenizer: Any) -> None:
    remote = RemoteBackend("http://127.0.0.1:9/v1", "m", tokenizer=tiny_tokenizer, max_retries=0)
    with pytest.raises(InvalidRequestError, match="needs a local model"):
        grammar_factory(json_grammar())(remote)
    session = remote.new_session([1, 2, 3], SamplingParams(temperature=0))
    dummy: Any = object()
    with pytest.raises(InvalidRequestError, match="needs a local model"):
        session.stream(4, constraint=dummy)  # raised before any request is sent


# ------------------------------------------------------------- property: always valid
def run_constrained(
    backend: TransformersBackend, grammar: str, seed: int, max_new: int = 300
) -> tuple[str, bool]:
    """Sample under the grammar until EOS or done: (text, finished)."""
    constraint = grammar_factory(grammar)(backend)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
    session = backend.new_session(backend.encode("Answer:"), sampling)
    out: list[int] = []
    finished = False
    for token in session.stream(max_new, constraint=constraint):
        if token in backend.eos_ids:
            finished = True
            break
        out.append(token)
        if constraint.done:
            finished = True
            break
    session.close()
    return backend.decode(out), finished


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schema=st.sampled_from(SCHEMAS),
    seed=st.integers(0, 2**31 - 1),
    role=st.sampled_from([0, 1]),
)
def test_constrained_json_always_parses_and_validates(
    tiny_pair: tuple[Any, Any], schema: type[BaseModel], seed: int, role: int
) -> None:
    backend = tiny_pair[role]
    text, finished = run_constrained(backend, json_grammar(schema.model_json_schema()), seed)
    assert finished, f"no complete value within the budget: {text!r}"
    schema.model_validate(json.loads(text))  # raises if invalid


class Joke(_Strict):
    """Unbounded free strings: a random model never closes them on its own."""

    setup: str
    punchline: str
    rating: int


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1), budget=st.integers(48, 80))
def test_with_a_budget_an_unbounded_schema_still_completes_in_time(
    tiny_pair: tuple[Any, Any], seed: int, budget: int
) -> None:
    backend = tiny_pair[0]
    grammar = json_grammar(Joke.model_json_schema())
    # A random model spells the remaining keys in arbitrary (often one-character) tokens, up to
    # ~35 for this schema; a real model needs far fewer (the default reserve is budget // 4).
    constraint = GrammarConstraint(llg_tokenizer(backend), grammar, budget=budget, reserve=40)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
    session = backend.new_session(backend.encode("Joke:"), sampling)
    out: list[int] = []
    for token in session.stream(budget, constraint=constraint):
        if token in backend.eos_ids:
            break
        out.append(token)
        if constraint.done:
            break
    session.close()
    assert len(out) <= budget
    Joke.model_validate_json(backend.decode(out))


def test_without_a_budget_a_random_model_runs_on(tiny_pair: tuple[Any, Any]) -> None:
    """The control for the test above: unsteered, the same model does not finish in 80."""
    text, finished = run_constrained(
        tiny_pair[0], json_grammar(Joke.model_json_schema()), seed=0, max_new=80
    )
    assert not finished, text


def test_steering_starts_at_budget_minus_reserve(tiny_pair: tuple[Any, Any]) -> None:
    backend = tiny_pair[0]
    grammar = json_grammar(Joke.model_json_schema())
    steered = GrammarConstraint(llg_tokenizer(backend), grammar, budget=40, reserve=10)
    assert steered.steer_from == 30
    assert GrammarConstraint(llg_tokenizer(backend), grammar, budget=8).steer_from == 0
    assert GrammarConstraint(llg_tokenizer(backend), grammar).steer_from is None
    for token in backend.encode('{"setup": "abc'):
        steered.accept(token)
    free = steered.mask(torch.zeros(len(backend.tokenizer)))
    steered.tokens = 30
    closing = steered.mask(torch.zeros(len(backend.tokenizer)))
    kept = {backend.decode([int(i)]) for i in torch.isfinite(closing).nonzero().flatten()}
    assert kept and all('"' in t for t in kept)  # only ids that can close the string
    assert int(torch.isfinite(free).sum()) > 10 * len(kept)


class AddArgs(_Strict):
    a: int = Field(ge=0, le=99)
    b: int = Field(ge=0, le=99)


class LookupArgs(_Strict):
    term: str = Field(max_length=6)
    exact: bool | None = None


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add.",
            "parameters": AddArgs.model_json_schema(),
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up.",
            "parameters": LookupArgs.model_json_schema(),
        },
    },
]
ARGS = {"add": AddArgs, "lookup": LookupArgs}


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**31 - 1),
    names=st.sampled_from([("add",), ("lookup",), ("add", "lookup")]),
)
def test_forced_tool_calls_always_parse_into_one_valid_call(
    tiny_pair: tuple[Any, Any], seed: int, names: tuple[str, ...]
) -> None:
    backend = tiny_pair[0]
    text, finished = run_constrained(
        backend, tool_call_grammar(to_openai_tools(TOOLS), names), seed
    )
    assert finished, text
    parsed = parse_tool_calls(text, names)
    assert parsed.content == "" and parsed.invalid_tool_calls == []
    (call,) = parsed.tool_calls
    assert call["name"] in names
    ARGS[call["name"]].model_validate(call["args"])


def test_parallel_tool_calls_allow_several_calls(tiny_pair: tuple[Any, Any]) -> None:
    backend = tiny_pair[0]
    grammar = tool_call_grammar(to_openai_tools(TOOLS), ("add",), parallel=True)
    constraint = grammar_factory(grammar)(backend)
    one = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    for token in backend.encode(one + "\n" + one):
        constraint.accept(token)
    assert constraint.accepting
    single = grammar_factory(tool_call_grammar(to_openai_tools(TOOLS), ("add",)))(backend)
    for token in backend.encode(one):
        single.accept(token)
    assert single.done  # exactly one call: nothing may follow


def test_any_json_object_mode(tiny_pair: tuple[Any, Any]) -> None:
    backend = tiny_pair[0]
    constraint = grammar_factory(json_grammar())(backend)
    (eos,) = backend.eos_ids
    first = {backend.decode([i]) for i in allowed_ids(constraint)}
    assert first and all(t.startswith("{") for t in first)  # an object, nothing else
    for token in backend.encode('{"any": [1, {"thing": null}], "goes": "x"}'):
        assert eos not in allowed_ids(constraint)
        constraint.accept(token)
    assert eos in allowed_ids(constraint)
    # Sampled: a random model left to itself rarely closes an open object, so under a budget
    # (steering from token 30 on); then every run ends within it, with one JSON object.
    for seed in range(3):
        steered = GrammarConstraint(llg_tokenizer(backend), json_grammar(), budget=60, reserve=30)
        sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
        session = backend.new_session(backend.encode("Answer:"), sampling)
        out: list[int] = []
        for token in session.stream(60, constraint=steered):
            if token in backend.eos_ids:
                break
            out.append(token)
            if steered.done:
                break
        else:
            pytest.fail(f"no complete object within the budget: {backend.decode(out)!r}")
        session.close()
        assert isinstance(json.loads(backend.decode(out)), dict)


# ------------------------------------------------------------------ scripted sessions
class OnlyPieces:
    """A small test constraint over the scripted vocabulary: only these pieces (and EOS)."""

    def __init__(self, backend: ScriptedBackend, pieces: set[str], limit: int) -> None:
        self.backend, self.pieces, self.limit, self.seen = backend, pieces, limit, 0

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        names = self.backend.vocab.by_id
        keep = torch.tensor(
            [i < len(names) and (names[i] in self.pieces) for i in range(len(logits))]
        )
        return logits.masked_fill(~keep, float("-inf"))

    def accept(self, token: int) -> None:
        self.seen += 1

    @property
    def done(self) -> bool:
        return self.seen >= self.limit


def test_scripted_sessions_take_the_script_when_allowed_else_the_best_ranked() -> None:
    backend = ScriptedBackend(["abc"], tokenizer="char")
    for piece in "abcz}":
        backend.vocab.id(piece)
    constraint = OnlyPieces(backend, {"a", "c", "z", "}"}, limit=4)
    assert isinstance(constraint, TokenConstraint)
    session = backend.new_session(backend.encode("q:"), SamplingParams(temperature=0))
    written = [backend.vocab.by_id[t] for t in session.stream(4, constraint=constraint)]
    # "b" is forbidden: a closer ("}") ranks before other pieces; the script goes on at its
    # own offset ("c"); then its EOS is forbidden too.
    assert written == ["a", "}", "c", "}"]


def test_scripted_session_with_nothing_allowed_raises() -> None:
    backend = ScriptedBackend(["alpha"])
    session = backend.new_session(backend.encode("q:"), SamplingParams(temperature=0))
    with pytest.raises(BackendError, match="allows no token"):
        list(session.stream(2, constraint=OnlyPieces(backend, set(), limit=2)))


def scripted_constrained(script: str, limit: int = 40) -> tuple[str, bool]:
    """A scripted model's output under the Point grammar: (text, the constraint is done)."""
    backend = ScriptedBackend([script])
    constraint = grammar_factory(json_grammar(Point.model_json_schema()))(backend)
    session = backend.new_session(backend.encode("q:"), SamplingParams(temperature=0))
    out = []
    for token in session.stream(limit, constraint=constraint):
        out.append(token)
        if constraint.done:
            break
    return backend.decode(out), constraint.done


def test_scripted_backends_build_an_llguidance_constraint() -> None:
    # A script the grammar allows token by token (json.dumps' layout) is written unchanged.
    assert scripted_constrained('{"x": 4, "y": -5}') == ('{"x": 4, "y": -5}', True)
    # A script that strays ("Sure:" first) is steered into the grammar's layout, complete.
    text, done = scripted_constrained('Sure: {"x": 4, "y": 5}')
    assert done and re.fullmatch(r'\{"x": -?\d+, "y": -?\d+\}', text), text
    point = Point.model_validate_json(text)
    assert text == json.dumps(point.model_dump())


def test_limit_moves_steering_to_the_tokens_left(tiny_pair: tuple[Any, Any]) -> None:
    backend = tiny_pair[0]
    grammar = json_grammar(Joke.model_json_schema())
    constraint = GrammarConstraint(llg_tokenizer(backend), grammar)
    assert constraint.steer_from is None
    constraint.limit(40)
    assert constraint.steer_from == 40 - default_reserve(40)
    constraint.tokens = 10
    constraint.limit(100)  # a later, looser limit never postpones steering
    assert constraint.steer_from == 40 - default_reserve(40)


@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**31 - 1))
def test_answer_after_a_closed_reasoning_is_steered_to_completion(
    tiny_pair: tuple[Any, Any], seed: int
) -> None:
    """The engine tells the constraint the tokens left after the reasoning (here closed by the
    thinking budget), so an unbounded schema still completes within max_tokens."""
    from langchain_spthink import Request, SpeculativeEngine, SpeculativeThinkingConfig

    backend = tiny_pair[0]
    config = SpeculativeThinkingConfig(max_reasoning_tokens=10)
    engine = SpeculativeEngine(backend, None, config)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, seed=seed)
    request = Request(
        backend.encode("Joke:"),
        (),
        10 + 160,  # 160 left for the answer: steering keeps default_reserve(160) = 40
        sampling,
        mode="small",
        constraint=grammar_factory(json_grammar(Joke.model_json_schema())),
        answer_marker="</think>",
    )
    *_, finish = engine.generate(request)
    reasoning, marker, answer = finish.text.partition("\n</think>\n\n")
    if not marker:  # ~1% of seeds: EOS before the thinking budget, so no answer to steer
        assert finish.stop_reason == "eos" and finish.output_tokens < 10, finish.text
        assume(False)
    assert finish.stop_reason == "eos"
    Joke.model_validate_json(answer)


def test_closing_ids_are_computed_once_per_tokenizer(tiny_pair: tuple[Any, Any]) -> None:
    from langchain_spthink.tools.constraints import _closing_ids_of

    backend = tiny_pair[0]
    tokenizer = llg_tokenizer(backend)
    grammar = json_grammar(Joke.model_json_schema())
    first = GrammarConstraint(tokenizer, grammar, budget=8)
    second = GrammarConstraint(tokenizer, grammar, budget=8)
    assert first._closing_ids() is second._closing_ids()
    closers = _closing_ids_of(tokenizer)
    quote = backend.encode('"')[0]
    assert bool(closers[0, quote]) and closers.shape == (2, tokenizer.vocab_size)
