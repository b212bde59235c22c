"""Tool calls and structured output on the embedded real models, decoded under grammars.

SmolLM2-135M-Instruct's template knows nothing of tools, so the tools are described in the system
prompt; forced calls and structured answers are decoded under llguidance grammars. Assertions are
on structure and schema validity (what the grammar guarantees), not on the model's arithmetic.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from langchain_core.tools import tool
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel, Field

from langchain_spthink.backends.llamacpp import LlamaCppBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.tools.constraints import GrammarConstraint, json_grammar, llg_tokenizer

pytestmark = pytest.mark.embedded


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def convert(amount: float, unit: Literal["km", "mile"]) -> float:
    """Convert a distance to the other unit."""
    return amount


class Answer(BaseModel):
    """The answer to a word problem."""

    reasoning: str = Field(description="one short sentence", max_length=40)
    value: int = Field(description="the number asked for", ge=0, le=10_000)
    unit: Literal["apples", "dollars", "km"]


QUESTION = "Tom has 3 bags with 4 apples each. How many apples does he have?"


def model(small: TransformersBackend, large: TransformersBackend, **kw: Any) -> Any:
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 64)
    return ChatSpeculativeThinking(small_model=small, large_model=large, **kw)


@pytest.mark.parametrize("mode", ["small", "speculative"])
def test_forced_tool_call_is_a_valid_call(
    mode: str, small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    llm = model(small_backend, large_backend, mode=mode, preset="instruct")
    bound = llm.bind_tools([multiply, convert], tool_choice="any")
    result = bound.invoke(QUESTION + " Use a tool.")
    assert result.invalid_tool_calls == [] and len(result.tool_calls) == 1
    (call,) = result.tool_calls
    schema = multiply if call["name"] == "multiply" else convert
    schema.args_schema.model_validate(call["args"])  # type: ignore[union-attr]
    assert result.response_metadata["finish_reason"] == "tool_calls"
    assert result.response_metadata["spthink"]["stop_reason"] == "eos"  # the grammar completed
    # The same through the stream.
    chunks = list(bound.stream(QUESTION + " Use a tool."))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [(call["name"], call["args"])]


def test_named_tool_choice_calls_that_tool(
    small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    llm = model(small_backend, large_backend, mode="small")
    result = llm.bind_tools([multiply, convert], tool_choice="convert").invoke(
        "How many miles is 10 km?"
    )
    (call,) = result.tool_calls
    assert call["name"] == "convert"
    convert.args_schema.model_validate(call["args"])  # type: ignore[union-attr]


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
@pytest.mark.parametrize("mode", ["small", "speculative"])
def test_structured_output_validates(
    method: str, mode: str, small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    # The schema bounds every string and number, so a complete answer fits the budget.
    llm = model(small_backend, large_backend, mode=mode, max_tokens=128)
    out = llm.with_structured_output(Answer, method=method, include_raw=True).invoke(QUESTION)  # type: ignore[arg-type]
    assert out["parsing_error"] is None, out["raw"]
    assert isinstance(out["parsed"], Answer)
    raw = out["raw"]
    assert raw.response_metadata["spthink"]["stop_reason"] == "eos"
    if method != "function_calling":
        Answer.model_validate(json.loads(raw.content))  # strict JSON, not a repaired prefix


def test_large_mode_constrains_gemma(
    small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    llm = model(small_backend, large_backend, mode="large", max_tokens=96)
    out = llm.with_structured_output(Answer, method="json_schema", include_raw=True).invoke(
        QUESTION
    )
    assert isinstance(out["parsed"], Answer)
    assert out["raw"].response_metadata["model_name"] == large_backend.name


def test_llamacpp_and_transformers_masks_agree(small_backend: TransformersBackend) -> None:
    # Grammar masks come from the two runtimes' vocabularies, not from logits: no float enters,
    # so exact equality across runtimes is what is guaranteed. (``make setup`` installs
    # llama-cpp-python: a missing or broken install fails this test, it is not skipped.)
    llama = LlamaCppBackend.load("smollm2-135m-instruct")
    try:
        grammar = json_grammar(Answer.model_json_schema())
        a = GrammarConstraint(llg_tokenizer(llama), grammar)
        b = GrammarConstraint(llg_tokenizer(small_backend), grammar)
        text = '{"reasoning": "3 × 4 = 12, héhé", "value": 12, "unit": "apples"}'
        ids = small_backend.encode(text)
        assert ids == llama.encode(text)
        for token in ids:
            assert bool((a.allowed() == b.allowed()).all())
            a.accept(token)
            b.accept(token)
        assert a.done and b.done
        # And a constrained answer on the llama.cpp backend itself.
        llm = ChatSpeculativeThinking(
            small_model=llama, large_model=llama, mode="small", temperature=0, max_tokens=96
        )
        parsed = llm.with_structured_output(Answer, method="json_schema").invoke(QUESTION)
        assert isinstance(parsed, Answer)
    finally:
        llama.close()


def test_sampled_constrained_answers_validate(small_backend: TransformersBackend) -> None:
    llm = ChatSpeculativeThinking(
        small_model=small_backend,
        large_model=small_backend,
        mode="small",
        temperature=1.0,
        max_tokens=96,
    )
    chain = llm.with_structured_output(Answer, method="json_schema", include_raw=True)
    for seed in (1, 2):
        out = chain.invoke(QUESTION, seed=seed)
        if out["raw"].response_metadata["finish_reason"] == "stop":
            Answer.model_validate(json.loads(out["raw"].content))
        else:  # the budget ran out mid-string: then the text is a prefix the grammar allowed
            assert out["raw"].response_metadata["finish_reason"] == "length"


def test_session_level_mask_matches_generation(small_backend: TransformersBackend) -> None:
    """The backend applies the mask before sampling: greedy constrained == argmax over allowed."""
    grammar = json_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    constraint = GrammarConstraint(llg_tokenizer(small_backend), grammar)
    prompt = small_backend.chat_prompt_ids([{"role": "user", "content": "Is 2+2=4? JSON."}])
    session = small_backend.new_session(prompt, SamplingParams(temperature=0))
    reference = small_backend.new_session(prompt, SamplingParams(temperature=0))
    shadow = GrammarConstraint(llg_tokenizer(small_backend), grammar)
    for token in session.stream(12, constraint=constraint):
        logits = reference.next_logits()
        expected = int(shadow.mask(logits).argmax())
        assert token == expected
        shadow.accept(expected)
        reference.extend([expected])
        if token in small_backend.eos_ids or constraint.done:
            break
    session.close()
    reference.close()


# ------------------------------------------------------------------ standard tests
_TOOL_TESTS = {
    name
    for name in dir(ChatModelIntegrationTests)
    if name.startswith("test_")
    and any(key in name for key in ("tool", "structured", "json", "agent"))
}


class TestEmbeddedStandardTools(ChatModelIntegrationTests):
    """langchain-tests' tool-calling, structured-output and JSON-mode tests on the embedded pair.

    The rest of the suite runs in ``test_chat_embedded.py::TestEmbeddedStandard`` with a
    16-token budget; a tool call takes about 27 tokens, so these run here with 96. Forced
    calls (``tool_choice="any"`` / a name), structured output and JSON mode are decoded under
    grammars. Greedy decoding.
    """

    @property
    def chat_model_class(self) -> type[ChatSpeculativeThinking]:
        return ChatSpeculativeThinking

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "small_model": "smollm2-135m-instruct",
            "large_model": "gemma3-270m",
            "temperature": 0,
            "max_tokens": 96,
        }

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @pytest.mark.xfail(
        reason="binds get_weather with tool_choice='auto' (nothing forced, so nothing "
        "constrained): the model may answer in text, and SmolLM2-135M-Instruct does (measured: "
        "a prose weather report); forced calls pass in test_tool_calling / test_tool_choice",
        strict=True,
    )
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)


# Every other standard test is hidden from this class (they run in TestEmbeddedStandard).
for _name in dir(ChatModelIntegrationTests):
    if _name.startswith("test_") and _name not in _TOOL_TESTS:
        setattr(TestEmbeddedStandardTools, _name, None)
