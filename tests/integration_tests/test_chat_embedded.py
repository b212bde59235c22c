"""ChatSpeculativeThinking on the embedded real models (SmolLM2-135M-Instruct + gemma-3-270m).

Greedy decoding and short budgets keep this cheap on 2 CPU cores; each model is loaded once per
session (``conftest.py`` fixtures and the chat model's string specs share the loaded weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from langchain_core.messages import HumanMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat.callbacks import DELEGATION_EVENT, SpeculativeThinkingCallbackHandler
from langchain_spthink.chat.messages import render_prompt_ids, to_chat_dicts
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.events import DelegationEvent
from tests.numerics import torch_threads, until_stop

pytestmark = pytest.mark.embedded

SMALL, LARGE = "smollm2-135m-instruct", "gemma3-270m"
MAX_TOKENS = 24
QUESTION = [HumanMessage("What is the capital of France? Answer in one short sentence.")]
MATH = [HumanMessage("Tom has 3 apples and buys 5 more. How many apples does he have? Explain.")]


def hf_greedy(backend: TransformersBackend, prompt_ids: list[int], max_new: int) -> tuple[str, int]:
    """The model's own ``generate()`` greedy continuation: (text, generated tokens before EOS)."""
    input_ids = torch.tensor([prompt_ids], device=backend.device)
    eos = sorted(backend.eos_ids)
    with torch.inference_mode():
        out = backend.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    new = [int(t) for t in out[0, len(prompt_ids) :]]
    for i, token in enumerate(new):
        if token in backend.eos_ids:
            new = new[:i]
            break
    # The engine ends a turn at the model's stop texts too (gemma: a new "Question:").
    return until_stop(backend.decode, new, backend.stop_texts)


class Recorder(SpeculativeThinkingCallbackHandler):
    def __init__(self) -> None:
        self.delegations: list[DelegationEvent] = []

    def on_delegation(self, event: DelegationEvent, **kwargs: Any) -> None:
        self.delegations.append(event)


def without_seconds(event: DelegationEvent | dict[str, Any]) -> dict[str, Any]:
    data = dataclasses.asdict(event) if isinstance(event, DelegationEvent) else dict(event)
    data.pop("seconds")
    return data


@pytest.mark.parametrize("role", ["small", "large"])
def test_single_model_mode_equals_hf_generate(
    role: str, small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    backend = small_backend if role == "small" else large_backend
    model = ChatSpeculativeThinking(
        small_model=small_backend,
        large_model=large_backend,
        mode=role,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    # Exact equality holds because both sides run the same forwards (prompt, then one token per
    # step) with the same thread count: bit-identical logits. The backend applies its own thread
    # count to its forwards; generate() runs with torch's, so the two are pinned together here.
    # (test_equivalence.py runs this comparison at 1 and at 2 threads.)
    with torch_threads(backend.threads, backend):
        result = model.invoke(QUESTION)
        expected, generated = hf_greedy(
            backend, render_prompt_ids(backend, to_chat_dicts(QUESTION)), MAX_TOKENS
        )
    assert result.content == expected
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_tokens"] == generated
    assert result.response_metadata["model_name"] == backend.name


def test_speculative_invoke_equals_stream(
    small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    model = ChatSpeculativeThinking(
        small_model=small_backend, large_model=large_backend, temperature=0, max_tokens=MAX_TOKENS
    )
    invoked = model.invoke(MATH)
    chunks = list(model.stream(MATH))
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == invoked.content and invoked.content
    assert full.usage_metadata == invoked.usage_metadata
    assert full.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]


async def test_instruct_preset_delegates_and_reports(
    small_backend: TransformersBackend, large_backend: TransformersBackend
) -> None:
    model = ChatSpeculativeThinking(
        small_model=small_backend,
        large_model=large_backend,
        preset="instruct",
        config=SpeculativeThinkingConfig(begin_tokens=6, draft_tokens=6),
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    handler = Recorder()
    result = model.invoke(MATH, config={"callbacks": [handler]})
    assert handler.delegations and handler.delegations[0].kind == "begin"
    meta = result.response_metadata["spthink"]
    assert [without_seconds(d) for d in meta["delegations"]] == [
        without_seconds(d) for d in handler.delegations
    ]
    assert meta["large_tokens"] > 0 and 0 < meta["large_share"] <= 1
    streamed, custom, start_run = "", [], None
    async for event in model.astream_events(MATH, version="v2"):
        if event["event"] == "on_chat_model_start":
            start_run = event["run_id"]
        elif event["event"] == "on_chat_model_stream":
            streamed += str(event["data"]["chunk"].content)
        elif event["event"] == "on_custom_event":
            custom.append(event)
    assert streamed == result.content
    assert [e["name"] for e in custom] == [DELEGATION_EVENT] * len(handler.delegations)
    assert {e["run_id"] for e in custom} == {start_run}
    assert [without_seconds(e["data"]) for e in custom] == [
        without_seconds(d) for d in handler.delegations
    ]


class TestEmbeddedStandard(ChatModelIntegrationTests):
    """langchain-tests' integration suite on the embedded pair (greedy, short answers).

    Tool calling, structured output and JSON mode run in
    ``test_tools_embedded.py::TestEmbeddedStandardTools`` instead, with a budget a tool call fits
    in (about 27 tokens; 16 here); multimodal tests skip because the models are text-only.
    """

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def chat_model_class(self) -> type[ChatSpeculativeThinking]:
        return ChatSpeculativeThinking

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"small_model": SMALL, "large_model": LARGE, "temperature": 0, "max_tokens": 16}

    @property
    def supports_model_override(self) -> bool:
        return False
