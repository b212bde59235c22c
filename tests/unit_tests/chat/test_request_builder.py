"""The one request builder (chat/request.py) and the three surfaces that use it."""

from __future__ import annotations

import io
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat import request as chat_request
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.chat.request import REASONING_CLOSE, build_request, roles_of
from langchain_spthink.cli.main import run_cli
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.eval import runner
from langchain_spthink.eval.datasets import Problem

MESSAGES = [{"role": "user", "content": "q"}]


class Thinking(ScriptedBackend):
    """A scripted model whose chat template opens a think block."""

    def chat_prompt_ids(self, messages: Any, **kw: Any) -> list[int]:
        return super().chat_prompt_ids(messages, **kw) + self.encode("<think>\n")


def pair() -> dict[str, ScriptedBackend]:
    return {"small": ScriptedBackend(["A.\n\n"], name="s"), "large": ScriptedBackend(["B.\n\n"])}


@pytest.mark.parametrize("mode", ["speculative", "small", "large"])
def test_prompts_of_the_models_the_mode_uses_and_sampling_from_the_config(mode: str) -> None:
    backends = {role: b for role, b in pair().items() if role in roles_of(mode)}  # type: ignore[arg-type]
    config = SpeculativeThinkingConfig(temperature=0.3, top_p=0.5, top_k=7)
    prepared = build_request(MESSAGES, backends, config, mode=mode, max_tokens=9, seed=4)  # type: ignore[arg-type]
    request = prepared.request
    assert set(prepared.prompts) == set(backends)
    for role, backend in backends.items():
        assert prepared.prompts[role] == backend.chat_prompt_ids(MESSAGES)
    assert list(request.small_prompt) == prepared.prompts.get("small", [])
    assert list(request.large_prompt) == prepared.prompts.get("large", [])
    assert request.sampling == SamplingParams(0.3, 0.5, 7, 4) == config.sampling(seed=4)
    assert (request.mode, request.max_tokens, request.answer_marker) == (mode, 9, None)
    assert prepared.primary == ("large" if mode == "large" else "small")
    assert prepared.engine.config is config


def test_an_opened_think_block_sets_the_answer_marker_and_fit_context_caps_the_budget() -> None:
    small = Thinking(["A.\n\n"], name="s", context_length=64)
    prepared = build_request(
        MESSAGES,
        {"small": small},
        SpeculativeThinkingConfig(),
        mode="small",
        max_tokens=500,
        fit_context=True,
    )
    assert prepared.in_reasoning and prepared.request.answer_marker == REASONING_CLOSE
    assert prepared.request.max_tokens == 64
    continued = [*MESSAGES, {"role": "assistant", "content": "<think>so far"}]
    plain = build_request(
        continued,
        {"small": ScriptedBackend(["A."])},
        SpeculativeThinkingConfig(),
        mode="small",
        max_tokens=5,
    )
    assert plain.in_reasoning and plain.request.answer_marker == REASONING_CLOSE


def test_chat_model_cli_and_eval_all_build_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, int | None]] = []
    real = chat_request.build_request

    def spy(messages: Any, backends: Any, config: Any, **kw: Any) -> Any:
        built.append((messages[-1]["content"], kw.get("seed")))
        return real(messages, backends, config, **kw)

    monkeypatch.setattr(chat_request, "build_request", spy)
    monkeypatch.setattr("langchain_spthink.chat.streaming.build_request", spy)
    monkeypatch.setattr(runner, "build_request", spy)
    backends = pair()
    chat = ChatSpeculativeThinking(
        small_model=backends["small"], large_model=backends["large"], seed=1
    )
    chat.invoke("from chat")
    out, err = io.StringIO(), io.StringIO()
    specs = {"s": backends["small"], "l": backends["large"]}
    code = run_cli(
        ["run", "from cli", "--small", "s", "--large", "l", "--seed", "2"],
        backends=specs,
        stdout=out,
        stderr=err,
    )
    assert code == 0, err.getvalue()
    runner.run_eval(
        [Problem("p", "from eval", "1")],
        runner.EvalSettings(dataset="x", seed=None),
        small=backends["small"],
        large=backends["large"],
    )
    assert built == [("from chat", 1), ("from cli", 2), (runner.build_prompt("from eval"), None)]
