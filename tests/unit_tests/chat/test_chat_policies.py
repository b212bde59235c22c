"""Policies and budgets through ChatSpeculativeThinking: model fields, per-call kwargs, metadata."""

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


def make(**kw: Any) -> ChatSpeculativeThinking:
    return ChatSpeculativeThinking(
        small_model=ScriptedBackend(SMALL, name="s"),
        large_model=ScriptedBackend(LARGE, name="L"),
        temperature=0,
        preset="instruct",
        config={"begin": False, "draft_tokens": 3, "verify_tokens": 0},
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
    message = model.invoke("go", max_large_tokens=5, config={"callbacks": [handler]})
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


def test_budget_fields_on_the_model_and_streaming() -> None:
    model = make(max_large_tokens=5)
    chunks = list(model.stream("go"))
    text = "".join(str(c.content) for c in chunks)
    assert text == "A.\n\nY y y.\n\nZ z. c c.\n\nD.\n\n"
    meta = [c.response_metadata["spthink"] for c in chunks if "spthink" in c.response_metadata]
    assert meta and meta[-1]["budgets"]["large_exhausted"] is True


def test_thinking_budget_per_call() -> None:
    model = make()
    message = model.invoke("go", max_reasoning_tokens=4, mode="small")
    meta = message.response_metadata["spthink"]
    assert (
        meta["budgets"]["reasoning_exhausted"] is True and meta["budgets"]["reasoning_tokens"] == 4
    )
    assert str(message.content).startswith("A.\n\nB\n\nFinal answer: ")


def test_policy_by_name_object_and_errors() -> None:
    model = make()
    judged = model.invoke("go", policy="judge", judge_threshold=0)
    assert judged.response_metadata["spthink"]["policy"] == "judge"
    custom = make(policy=KeywordPolicy(word_boundary=True))
    assert custom.invoke("go").response_metadata["spthink"]["policy"] == "KeywordPolicy"
    with pytest.raises(ConfigError, match="policy"):
        model.invoke("go", policy="coin-flip")
    with pytest.raises(InvalidRequestError, match="policy"):
        model.invoke("go", policy=42)
    with pytest.raises(ConfigError, match="max_large_tokens"):
        model.invoke("go", max_large_tokens=-1)
    assert model.invoke("go").response_metadata["spthink"]["policy"] == "keyword"


def test_bad_policy_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="policy"):
        make(policy="coin-flip")
    with pytest.raises(ConfigError, match="judge_threshold"):
        make(judge_threshold=11)
