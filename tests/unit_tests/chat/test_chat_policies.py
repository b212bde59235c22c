"""Policies and budgets through ChatSpeculativeThinking: config, per-call overrides, metadata."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from langchain_spthink import (
    BudgetEvent,
    ChatSpeculativeThinking,
    ConfigError,
    InvalidRequestError,
    KeywordPolicy,
    SpeculativeThinkingCallbackHandler,
)
from langchain_spthink.backends.scripted import ScriptedBackend

SMALL = ["A.\n\n", "B b b.\n\n", "C c c c.\n\n", "D.\n\n"]
LARGE = ["X.\n\n", "Y y y.\n\n", "Z z.\n\n", "W.\n\n"]


def make(knobs: dict[str, Any] | None = None, **kw: Any) -> ChatSpeculativeThinking:
    return ChatSpeculativeThinking(
        small_model=ScriptedBackend(SMALL, name="s"),
        large_model=ScriptedBackend(LARGE, name="L"),
        temperature=0,
        preset="instruct",
        config={"begin": False, "draft_tokens": 3, "verify_tokens": 0, **(knobs or {})},
        **kw,
    )


class Budgets(SpeculativeThinkingCallbackHandler):
    def __init__(self) -> None:
        self.events: list[BudgetEvent] = []

    def on_budget(self, event: BudgetEvent, *, run_id: UUID, **kw: Any) -> None:
        self.events.append(event)


def test_max_large_tokens_per_call_reaches_metadata_and_callbacks() -> None:
    model = make()
    handler = Budgets()
    message = model.invoke(
        "go", config_overrides={"max_large_tokens": 5}, config={"callbacks": [handler]}
    )
    # Same script and numbers as the engine test: large 3 + 2 tokens, then small mode.
    assert message.content == "A.\n\nY y y.\n\nZ z. c c.\n\nD.\n\n"
    meta = message.response_metadata["spthink"]
    assert meta["budgets"] == {"max_large_tokens": 5, "large_tokens": 5, "large_exhausted": True}
    assert meta["final_mode"] == "small" and meta["policy"] == "keyword"
    assert [e["budget"] for e in meta["budget_events"]] == ["max_large_tokens"]
    assert [(e.budget, e.limit, e.spent) for e in handler.events] == [("max_large_tokens", 5, 5)]
    # The instance is unchanged: the next call has no budget.
    again = model.invoke("go")
    assert again.response_metadata["spthink"]["budgets"] == {}
    assert again.content != message.content


def test_budget_knobs_on_the_model_and_streaming() -> None:
    model = make({"max_large_tokens": 5})
    chunks = list(model.stream("go"))
    text = "".join(str(c.content) for c in chunks)
    assert text == "A.\n\nY y y.\n\nZ z. c c.\n\nD.\n\n"
    meta = [c.response_metadata["spthink"] for c in chunks if "spthink" in c.response_metadata]
    assert meta and meta[-1]["budgets"]["large_exhausted"] is True


def test_thinking_budget_per_call() -> None:
    model = make()
    message = model.invoke("go", config_overrides={"max_reasoning_tokens": 4}, mode="small")
    meta = message.response_metadata["spthink"]
    assert (
        meta["budgets"]["reasoning_exhausted"] is True and meta["budgets"]["reasoning_tokens"] == 4
    )
    assert str(message.content).startswith("A.\n\nB\n\nFinal answer: ")


def test_policy_by_name_object_and_errors() -> None:
    model = make()
    judged = model.invoke("go", config_overrides={"policy": "judge", "judge_threshold": 0})
    assert judged.response_metadata["spthink"]["policy"] == "judge"
    custom = make({"word_boundary": True}, policy=KeywordPolicy(word_boundary=True))
    assert custom.invoke("go").response_metadata["spthink"]["policy"] == "KeywordPolicy"
    with pytest.raises(ConfigError, match="policy"):
        model.invoke("go", config_overrides={"policy": "coin-flip"})
    with pytest.raises(InvalidRequestError, match="policy"):
        model.invoke("go", policy=42)
    with pytest.raises(ConfigError, match="max_large_tokens"):
        model.invoke("go", config_overrides={"max_large_tokens": -1})
    assert model.invoke("go").response_metadata["spthink"]["policy"] == "keyword"


def test_bad_policy_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="policy"):
        make({"policy": "coin-flip"})
    with pytest.raises(ConfigError, match="judge_threshold"):
        make({"judge_threshold": 11})


def test_knobs_have_one_place_and_old_fields_say_where() -> None:
    # Removed fields and call arguments fail, naming the config knob and where it goes now.
    with pytest.raises(ConfigError, match=r"config=\{'max_large_tokens'"):
        make(max_large_tokens=5)
    with pytest.raises(ConfigError, match=r"config=\{'policy': 'judge'\}"):
        make(policy="judge")
    with pytest.raises(InvalidRequestError, match=r"config_overrides=\{'judge_threshold'"):
        make().invoke("go", judge_threshold=0)
    with pytest.raises(InvalidRequestError, match=r"config_overrides=\{'policy': 'judge'\}"):
        make().invoke("go", policy="judge")
    with pytest.raises(InvalidRequestError, match="config_overrides must be a dict"):
        make().invoke("go", config_overrides=[("draft_tokens", 2)])
    # LangChain's `timeout` is the config's `time_out`, on the model and per call.
    assert make(timeout=3).effective_config.time_out == 3
    assert make({"time_out": 4}).effective_config.time_out == 4
    assert make({"time_out": 4}, timeout=3).effective_config.time_out == 3


def test_a_keyword_policy_must_carry_the_configs_cue_words() -> None:
    # One list of cue words: a KeywordPolicy with other words than the config's would delegate
    # on words the step labels, the negative count and the verify step do not see.
    with pytest.raises(ConfigError, match="negative_words=.*config: .*config=\\{'negative_words'"):
        make(policy=KeywordPolicy(negative_words=("hmm",)))
    with pytest.raises(ConfigError, match="word_boundary"):
        make().invoke("go", policy=KeywordPolicy(word_boundary=True))
    same = make({"negative_words": ("hmm",)}, policy=KeywordPolicy(negative_words=("hmm",)))
    assert same.invoke("go").response_metadata["spthink"]["policy"] == "KeywordPolicy"
    with pytest.raises(ConfigError, match="positive_words"):
        make().invoke(
            "go",
            config_overrides={"positive_words": ("ja",)},
            policy=KeywordPolicy(),
        )
