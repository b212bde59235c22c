"""ChatSpeculativeThinking against scripted fake backends (known outputs, no weights)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableLambda

from langchain_spthink.backends import loading
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat import model as chat_model
from langchain_spthink.chat import request as chat_request
from langchain_spthink.chat.callbacks import (
    DELEGATION_EVENT,
    FALLBACK_EVENT,
    AsyncSpeculativeThinkingCallbackHandler,
    SpeculativeThinkingCallbackHandler,
)
from langchain_spthink.chat.messages import ReasoningSplitter, to_chat_dicts
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.events import DelegationEvent, FallbackEvent, FinishEvent, TextEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import (
    ConfigError,
    InvalidRequestError,
    LargeModelError,
    ModelLoadError,
)

PLAIN = ["Hello there, friend.\n\n", "The sum is 4."]
DELEG_SMALL = ["First step here.\n\n", "Wait, maybe not.\n\n", "So the answer is 4."]
DELEG_LARGE = ["First step here.\n\n", "Let me verify: yes it is 4.\n\n", "Final answer: 4."]
THINK = ["<think>Let me see, 2 and 2.\n\n", "That makes 4.</think>\n\n", "The answer is 4."]
LONG = [" ".join(f"w{i}" for i in range(400))]


def pair(
    small: list[str] = DELEG_SMALL, large: list[str] = DELEG_LARGE, **kw: Any
) -> tuple[ScriptedBackend, ScriptedBackend]:
    return (
        ScriptedBackend(small, name="small-fake", **kw),
        ScriptedBackend(large, name="large-fake"),
    )


def make(small: Any, large: Any = None, **kw: Any) -> ChatSpeculativeThinking:
    large = large if large is not None else ScriptedBackend(PLAIN, name="large-fake")
    return ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0, **kw)


class Recorder(SpeculativeThinkingCallbackHandler):
    def __init__(self) -> None:
        self.delegations: list[tuple[DelegationEvent, UUID]] = []
        self.fallbacks: list[tuple[FallbackEvent, UUID]] = []
        self.starts: list[tuple[UUID, dict[str, Any]]] = []
        self.custom_names: list[str] = []

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kw: Any
    ) -> None:
        self.starts.append((run_id, kw))

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kw: Any) -> None:
        self.custom_names.append(name)
        super().on_custom_event(name, data, run_id=run_id, **kw)

    def on_delegation(self, event: DelegationEvent, *, run_id: UUID, **kw: Any) -> None:
        self.delegations.append((event, run_id))

    def on_fallback(self, event: FallbackEvent, *, run_id: UUID, **kw: Any) -> None:
        self.fallbacks.append((event, run_id))


class RecordingBackend(ScriptedBackend):
    """Records the sampling parameters of every session."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.samplings: list[SamplingParams] = []

    def new_session(self, prompt_ids: Any, sampling: SamplingParams) -> Any:
        self.samplings.append(sampling)
        return super().new_session(prompt_ids, sampling)


def strip_seconds(d: DelegationEvent | dict[str, Any]) -> dict[str, Any]:
    data = dataclasses.asdict(d) if isinstance(d, DelegationEvent) else dict(d)
    data.pop("seconds")
    return data


def engine_reference(small: list[str], large: list[str], model: ChatSpeculativeThinking) -> tuple:
    """Run the engine directly on fresh backends with the model's config: text, delegations."""
    s, l_ = ScriptedBackend(small, name="s"), ScriptedBackend(large, name="l")
    engine = SpeculativeEngine(s, l_, model.effective_config)
    prompt = s.chat_prompt_ids([{"role": "user", "content": "hi"}])
    req = Request(prompt, l_.chat_prompt_ids([{"role": "user", "content": "hi"}]), max_tokens=512)
    events = list(engine.generate(req))
    text = "".join(e.text for e in events if isinstance(e, TextEvent))
    return text, [e for e in events if isinstance(e, DelegationEvent)], events[-1]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    chat_model.clear_backend_cache()
    yield
    chat_model.clear_backend_cache()


# --------------------------------------------------------------------------- basics
def test_invoke_plain_text_and_metadata() -> None:
    small, large = pair(PLAIN, PLAIN)
    result = make(small, large).invoke("hi")
    assert result.content == "Hello there, friend.\n\nThe sum is 4."
    assert result.response_metadata["finish_reason"] == "stop"
    assert result.response_metadata["model_name"] == "small-fake+large-fake"
    meta = result.response_metadata["spthink"]
    assert meta["stop_reason"] == "eos"
    assert meta["mode"] == "speculative"
    assert meta["delegations"] == [] and meta["fallbacks"] == []
    assert meta["small_tokens"] == 9 and meta["large_tokens"] == 0
    assert meta["large_share"] == 0.0
    assert result.usage_metadata is not None
    assert result.usage_metadata["input_tokens"] == len(small.encode("user: hi\nassistant:"))
    assert result.usage_metadata["output_tokens"] == 9
    assert result.usage_metadata["total_tokens"] == result.usage_metadata["input_tokens"] + 9
    assert result.usage_metadata["output_token_details"] == {"reasoning": 0}


def test_stream_equals_invoke_and_batch() -> None:
    small, large = pair()
    model = make(small, large)
    invoked = model.invoke("hi")
    chunks = list(model.stream("hi"))
    assert "".join(str(c.content) for c in chunks) == invoked.content
    assert len(chunks) > 3
    assert chunks[-1].chunk_position == "last"
    batched = model.batch(["hi", "hi"])
    assert [b.content for b in batched] == [invoked.content] * 2


async def test_async_paths_equal_sync() -> None:
    small, large = pair()
    model = make(small, large)
    expected = model.invoke("hi").content
    assert (await model.ainvoke("hi")).content == expected
    chunks = [c async for c in model.astream("hi")]
    assert "".join(str(c.content) for c in chunks) == expected
    assert [m.content for m in await model.abatch(["hi", "hi"])] == [expected] * 2
    streamed = ""
    async for event in model.astream_events("hi", version="v2"):
        if event["event"] == "on_chat_model_stream":
            streamed += str(event["data"]["chunk"].content)
    assert streamed == expected


def test_matches_engine_directly() -> None:
    small, large = pair()
    model = make(small, large)
    result = model.invoke("hi")
    text, delegations, finish = engine_reference(DELEG_SMALL, DELEG_LARGE, model)
    assert result.content == text
    assert [strip_seconds(d) for d in result.response_metadata["spthink"]["delegations"]] == [
        strip_seconds(d) for d in delegations
    ]
    assert isinstance(finish, FinishEvent)
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_tokens"] == finish.output_tokens


def test_no_empty_chunks() -> None:
    for script, stop in ((DELEG_SMALL, None), (PLAIN, ["sum is"]), (THINK, None)):
        small, large = pair(script, DELEG_LARGE, tokenizer="char")
        for chunk in make(small, large, mode="small").stream("hi", stop=stop):
            assert chunk.content or chunk.additional_kwargs.get("reasoning_content"), chunk


def test_empty_output_is_one_chunk_with_usage() -> None:
    small, large = pair([], [])
    model = make(small, large, mode="small")
    chunks = list(model.stream("hi"))
    assert len(chunks) == 1
    assert chunks[0].content == ""
    assert chunks[0].usage_metadata is not None
    assert chunks[0].usage_metadata["input_tokens"] > 0
    assert chunks[0].usage_metadata["output_tokens"] == 0
    assert model.invoke("hi").content == ""


# ------------------------------------------------------------------- stop / budget
@pytest.mark.parametrize("tokenizer", ["word", "char"])
def test_stop_multi_token_in_invoke_and_stream(tokenizer: str) -> None:
    small, large = pair(PLAIN, PLAIN, tokenizer=tokenizer)
    model = make(small, large, mode="small")
    result = model.invoke("hi", stop=["sum is"])
    assert result.content == "Hello there, friend.\n\nThe "
    assert result.response_metadata["finish_reason"] == "stop"
    assert "".join(str(c.content) for c in model.stream("hi", stop=["sum is"])) == result.content
    fielded = make(*pair(PLAIN, PLAIN, tokenizer=tokenizer), mode="small", stop=["there"])
    assert fielded.invoke("hi").content == "Hello "
    # a call-time stop replaces the field's
    assert fielded.invoke("hi", stop=["friend"]).content == "Hello there, "


def test_call_time_max_tokens() -> None:
    model = make(*pair(PLAIN, PLAIN))
    result = model.invoke("hi", max_tokens=3)
    assert result.content == "Hello there, friend."
    assert result.response_metadata["finish_reason"] == "length"
    assert result.usage_metadata is not None and result.usage_metadata["output_tokens"] == 3
    streamed = list(model.stream("hi", max_tokens=2))
    assert "".join(str(c.content) for c in streamed) == "Hello there,"
    assert model.bind(max_tokens=1).invoke("hi").content == "Hello"


def test_call_time_sampling_overrides_fields() -> None:
    small = RecordingBackend(PLAIN, name="s")
    large = RecordingBackend(PLAIN, name="l")
    model = ChatSpeculativeThinking(small_model=small, large_model=large, top_k=9, seed=3)
    model.invoke("hi")
    assert small.samplings[-1] == SamplingParams(0.6, 0.95, 9, 3)
    assert large.samplings[-1] == SamplingParams(0.6, 0.95, 9, 4)
    model.invoke("hi", temperature=0.3, top_p=0.5, top_k=7, seed=11)
    assert small.samplings[-1] == SamplingParams(0.3, 0.5, 7, 11)
    assert large.samplings[-1] == SamplingParams(0.3, 0.5, 7, 12)


def test_timeout_returns_partial_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    # No wall clock: the engine's clock is a fake that only the model's tokens advance, 1 s per
    # token, so the 5.5 s cap falls right after the sixth token on any machine.
    now = [0.0]

    def tick() -> None:
        now[0] += 1.0

    monkeypatch.setattr(
        chat_request,
        "SpeculativeEngine",
        functools.partial(SpeculativeEngine, clock=lambda: now[0]),
    )
    small = ScriptedBackend(LONG, name="s", on_token=tick)
    result = make(small, mode="small", timeout=5.5).invoke("hi")
    assert result.response_metadata["finish_reason"] == "timeout"
    assert result.content == "w0 w1 w2 w3 w4 w5"


# -------------------------------------------------------------------- reasoning split
def test_reasoning_split_invoke_and_stream_char_tokens() -> None:
    small = ScriptedBackend(THINK, name="s", tokenizer="char")
    model = make(small, mode="small")
    result = model.invoke("hi")
    assert result.content == "The answer is 4."
    assert result.additional_kwargs["reasoning_content"] == "Let me see, 2 and 2.\n\nThat makes 4."
    chunks = list(model.stream("hi"))
    assert len(chunks) > 20  # one char per token: the tags were split across chunks
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == result.content
    assert full.additional_kwargs == result.additional_kwargs
    # usage: reasoning tokens are the think part's tokens (tags included), exactly
    think_part = "<think>Let me see, 2 and 2.\n\nThat makes 4.</think>"
    assert result.usage_metadata is not None
    assert result.usage_metadata["output_token_details"] == {"reasoning": len(think_part)}
    assert full.usage_metadata == result.usage_metadata


def test_prompt_that_opens_think_starts_in_reasoning() -> None:
    class OpensThink(ScriptedBackend):
        def chat_prompt_ids(self, messages: Any, **kw: Any) -> list[int]:
            return super().chat_prompt_ids(messages, **kw) + self.encode(" <think>")

    small = OpensThink(["I reason here.</think> Answer: 4."], name="s")
    result = make(small, mode="small").invoke("hi")
    assert result.additional_kwargs["reasoning_content"] == "I reason here."
    assert result.content == "Answer: 4."


@pytest.mark.parametrize("cut", range(1, 12))
def test_splitter_any_cut(cut: int) -> None:
    text = "<think> a <b> </thin </think>\n\nans <t"
    splitter = ReasoningSplitter()
    parts = splitter.feed(text[:cut]) + splitter.feed(text[cut:]) + splitter.flush()
    reasoning = "".join(t for p, t in parts if p == "reasoning")
    content = "".join(t for p, t in parts if p == "content")
    assert reasoning == "a <b> </thin"
    assert content == "ans <t"
    assert splitter.reasoning_raw == "<think> a <b> </thin </think>"


def test_output_version_v1_content_blocks() -> None:
    small = ScriptedBackend(THINK, name="s")
    model = make(small, mode="small", output_version="v1")
    result = model.invoke("hi")
    assert isinstance(result.content, list)
    types = [b["type"] for b in result.content if isinstance(b, dict)]
    assert types == ["reasoning", "text"]
    blocks = {b["type"]: b for b in result.content if isinstance(b, dict)}
    assert blocks["reasoning"]["reasoning"] == "Let me see, 2 and 2.\n\nThat makes 4."
    assert blocks["text"]["text"] == "The answer is 4."
    full: AIMessageChunk | None = None
    for chunk in model.stream("hi"):
        full = chunk if full is None else full + chunk
    assert full is not None
    assert [b["type"] for b in full.content_blocks] == ["reasoning", "text"]
    assert full.text == "The answer is 4."


# -------------------------------------------------------------------------- usage
@pytest.mark.parametrize("script", [PLAIN, DELEG_SMALL, THINK])
def test_streamed_usage_sums_to_invoke_usage(script: list[str]) -> None:
    model = make(*pair(script, DELEG_LARGE))
    invoked = model.invoke("hi").usage_metadata
    chunks = list(model.stream("hi"))
    with_input = [c for c in chunks if c.usage_metadata and c.usage_metadata["input_tokens"]]
    assert with_input == [chunks[0]]
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata["output_tokens"] == invoked["output_tokens"]  # type: ignore[index]
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.usage_metadata == invoked
    metas = [c for c in chunks if c.response_metadata.get("model_name")]
    assert metas == [chunks[-1]]


# ------------------------------------------------------------------ custom events
def test_handler_receives_delegations_with_engine_fields() -> None:
    model = make(*pair())
    handler = Recorder()
    result = model.invoke("hi", config={"callbacks": [handler]})
    _, reference, _ = engine_reference(DELEG_SMALL, DELEG_LARGE, model)
    assert len(reference) >= 1
    assert [strip_seconds(e) for e, _ in handler.delegations] == [
        strip_seconds(d) for d in reference
    ]
    run_id = handler.starts[0][0]
    assert all(rid == run_id for _, rid in handler.delegations)
    assert str(result.id).startswith(f"lc_run--{run_id}")
    assert handler.custom_names == [DELEGATION_EVENT] * len(reference)
    # the private run capture never shows up in the traced invocation params
    assert "_spthink_run" not in handler.starts[0][1]["invocation_params"]


@pytest.mark.parametrize("how", ["stream", "batch", "bind"])
def test_handler_receives_delegations_in_every_sync_path(how: str) -> None:
    model = make(*pair())
    handler = Recorder()
    config: Any = {"callbacks": [handler]}
    if how == "stream":
        chunks = list(model.stream("hi", config=config))
        assert chunks[0].id == f"lc_run--{handler.starts[0][0]}"
    elif how == "batch":
        model.batch(["hi", "hi"], config=config)
    else:
        model.bind(max_tokens=100).with_config(config).invoke("hi")
    runs = {rid for rid, _ in handler.starts}
    assert handler.delegations and {rid for _, rid in handler.delegations} == runs


async def test_async_handler_and_typed_async_base() -> None:
    received: list[DelegationEvent] = []

    class AsyncRecorder(AsyncSpeculativeThinkingCallbackHandler):
        async def on_delegation(self, event: DelegationEvent, **kw: Any) -> None:
            received.append(event)

    model = make(*pair())
    sync_handler = Recorder()
    await model.ainvoke("hi", config={"callbacks": [AsyncRecorder(), sync_handler]})
    assert received and len(received) == len(sync_handler.delegations)
    received.clear()
    async for _ in model.astream("hi", config={"callbacks": [AsyncRecorder()]}):
        pass
    assert received


async def test_astream_events_order_and_run_ids() -> None:
    model = make(*pair())
    chain = RunnableLambda(lambda x: x) | model
    events = [e async for e in chain.astream_events("hi", version="v2")]
    start = next(e for e in events if e["event"] == "on_chat_model_start")
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert custom and all(e["name"] == DELEGATION_EVENT for e in custom)
    for e in custom:
        assert e["run_id"] == start["run_id"]
        assert e["parent_ids"] == start["parent_ids"] and len(e["parent_ids"]) == 1
    # each delegation comes after the text it wrote and before the model's end event
    text_so_far = ""
    for e in events:
        if e["event"] == "on_chat_model_stream":
            text_so_far += str(e["data"]["chunk"].content)
        elif e["event"] == "on_custom_event":
            data = e["data"]
            assert data["kept"] == "large"
            end = data["position"] + len(data["large_text"])
            assert text_so_far[data["position"] : end] == data["large_text"]
    names = [e["event"] for e in events]
    assert names.index("on_chat_model_end") > max(
        i for i, n in enumerate(names) if n == "on_custom_event"
    )
    reference = [strip_seconds(d) for d in engine_reference(DELEG_SMALL, DELEG_LARGE, model)[1]]
    assert [strip_seconds(e["data"]) for e in custom] == reference


async def test_astream_events_from_invoke_inside_chain() -> None:
    """``invoke`` under ``astream_events`` streams through ``_stream`` without a run manager."""
    model = make(*pair())
    chain = RunnableLambda(lambda x: model.invoke(x))
    events = [e async for e in chain.astream_events("hi", version="v2")]
    start = next(e for e in events if e["event"] == "on_chat_model_start")
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert custom and {e["run_id"] for e in custom} == {start["run_id"]}


def test_langgraph_custom_stream_mode() -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    model = make(*pair())

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("llm", node)
    graph.add_edge(START, "llm")
    compiled = graph.compile()
    custom = [c for c in compiled.stream({"messages": [("user", "hi")]}, stream_mode="custom")]
    assert custom and all(c["name"] == DELEGATION_EVENT for c in custom)
    assert custom[0]["data"]["kind"] == "reflection"


async def test_langgraph_custom_stream_mode_async() -> None:
    from langgraph.graph import START, MessagesState, StateGraph

    model = make(*pair())

    async def node(state: MessagesState) -> dict[str, Any]:
        chunks = [c async for c in model.astream(state["messages"])]
        full = chunks[0]
        for c in chunks[1:]:
            full = full + c
        return {"messages": [AIMessage(content=full.content)]}

    graph = StateGraph(MessagesState)
    graph.add_node("llm", node)
    graph.add_edge(START, "llm")
    compiled = graph.compile()
    custom = [
        c async for c in compiled.astream({"messages": [("user", "hi")]}, stream_mode="custom")
    ]
    assert custom and all(c["name"] == DELEGATION_EVENT for c in custom)


# ------------------------------------------------------------------- fallback
@pytest.mark.parametrize("fail_after", [0, 3])
def test_fallback_completes_with_small_and_one_event(fail_after: int) -> None:
    small = ScriptedBackend(DELEG_SMALL, name="s")
    large = ScriptedBackend(DELEG_LARGE, name="l", fail_after=fail_after)
    handler = Recorder()
    result = make(small, large).invoke("hi", config={"callbacks": [handler]})
    assert result.content == "".join(DELEG_SMALL)
    assert len(handler.fallbacks) == 1
    event = handler.fallbacks[0][0]
    assert event.new_mode == "small" and event.error_type == "RuntimeError"
    assert handler.custom_names.count(FALLBACK_EVENT) == 1
    meta = result.response_metadata["spthink"]
    assert meta["fallbacks"] == [dataclasses.asdict(event)]
    assert meta["final_mode"] == "small"
    assert result.response_metadata["finish_reason"] == "stop"


def test_fallback_raise_policy() -> None:
    small = ScriptedBackend(DELEG_SMALL, name="s")
    large = ScriptedBackend(DELEG_LARGE, name="l", fail_after=3)
    with pytest.raises(LargeModelError, match="injected"):
        make(small, large, config={"fallback": "raise"}).invoke("hi")
    with pytest.raises(LargeModelError):
        failing = make(small, ScriptedBackend(DELEG_LARGE, fail_after=0))
        list(failing.stream("hi", config_overrides={"fallback": "raise"}))


async def test_fallback_async_stream() -> None:
    small = ScriptedBackend(DELEG_SMALL, name="s")
    large = ScriptedBackend(DELEG_LARGE, name="l", fail_after=2)
    handler = Recorder()
    text = "".join(
        [
            str(c.content)
            async for c in make(small, large).astream("hi", config={"callbacks": [handler]})
        ]
    )
    assert text == "".join(DELEG_SMALL)
    assert len(handler.fallbacks) == 1


# ------------------------------------------------------------------------- modes
def test_small_and_large_modes() -> None:
    small, large = pair()
    only_small = make(small, large, mode="small").invoke("hi")
    assert only_small.content == "".join(DELEG_SMALL)
    assert only_small.response_metadata["model_name"] == "small-fake"
    assert large.sessions == []
    small2, large2 = pair()
    only_large = make(small2, large2).invoke("hi", mode="large")
    assert only_large.content == "".join(DELEG_LARGE)
    assert only_large.response_metadata["model_name"] == "large-fake"
    assert only_large.response_metadata["spthink"]["large_share"] == 1.0
    assert small2.sessions == []


def test_large_mode_does_not_load_small_and_vice_versa(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[str] = []

    def fake(spec: str, device: Any, trust: bool, threads: Any) -> ScriptedBackend:
        loaded.append(spec)
        return ScriptedBackend(PLAIN, name=spec)

    monkeypatch.setattr(loading, "_load_backend_uncached", fake)
    ChatSpeculativeThinking(small_model="a", large_model="b", mode="large").invoke("hi")
    assert loaded == ["b"]
    ChatSpeculativeThinking(small_model="c", large_model="d", mode="small").invoke("hi")
    assert loaded == ["b", "c"]


# ------------------------------------------------------------------ cancellation
def test_sync_stream_close_stops_generation() -> None:
    small = ScriptedBackend(LONG, name="s")
    stream = make(small, mode="small").stream("hi")
    next(stream)
    next(stream)
    stream.close()
    assert small.sessions[0].closed
    assert small.tokens_sampled < 20


# 0.01 s per token: the whole 400-token LONG script takes >= 4 s (a sleep only gets longer on
# a busy machine), so "stopped before the script's end" is a generous bound on how soon a close
# or cancel takes effect (normally within a token or two).
SLOW = 0.01


async def test_astream_aclose_stops_generation_and_frees_session() -> None:
    small = ScriptedBackend(LONG, name="s", on_token=lambda: time.sleep(SLOW))
    stream = make(small, mode="small").astream("hi")
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    assert small.sessions[0].closed  # aclose waited for the worker to close the session
    sampled = small.tokens_sampled
    await asyncio.sleep(0.05)  # a closed session writes nothing more (waiting longer is stricter)
    assert small.tokens_sampled == sampled < 400


async def test_astream_task_cancel_stops_generation() -> None:
    small = ScriptedBackend(LONG, name="s", on_token=lambda: time.sleep(SLOW))
    model = make(small, mode="small")
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in model.astream("hi"):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()  # cancelled mid-generation, however fast or slow the machine is
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert small.sessions[0].closed
    sampled = small.tokens_sampled
    await asyncio.sleep(0.05)
    assert small.tokens_sampled == sampled < 400


async def test_async_does_not_block_the_loop() -> None:
    """Generation runs off the event loop: mid-generation, a task on the loop gets to run.

    The model pauses after its fifth token until that task answers. Were generation running on
    the loop, the task could only run after it, and the pause would give up (after 20 s: a hang
    guard, not a timing) with the answer missing.
    """
    answered = threading.Event()
    waited: list[bool] = []
    seen: list[int] = []

    def on_token() -> None:
        if small.tokens_sampled == 5:
            waited.append(answered.wait(20))

    small = ScriptedBackend(LONG[:1], name="s", on_token=on_token)
    model = make(small, mode="small", max_tokens=150)

    async def on_the_loop() -> None:
        while small.tokens_sampled < 5:
            await asyncio.sleep(0.001)
        seen.append(small.tokens_sampled)
        answered.set()

    task = asyncio.create_task(on_the_loop())
    reply = await model.ainvoke("hi")
    await task
    assert waited == [True] and seen == [5]
    assert reply.content == " ".join(f"w{i}" for i in range(150))


# --------------------------------------------------------------- prompt rendering
def test_tool_message_history_renders() -> None:
    small, large = pair(PLAIN, PLAIN)
    messages = [
        SystemMessage("be brief"),
        HumanMessage("what is 2+2"),
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": 2, "b": 2}, "id": "c1"}]),
        ToolMessage("4", tool_call_id="c1"),
    ]
    result = make(small, large).invoke(messages)
    assert result.content == "".join(PLAIN)
    assert (
        small.last_prompt == "system: be brief\nuser: what is 2+2\nassistant: \ntool: 4\nassistant:"
    )
    dicts = to_chat_dicts(messages)
    assert dicts[2]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
    ]
    assert dicts[3] == {"role": "tool", "content": "4", "tool_call_id": "c1", "name": "add"}


def test_history_ending_in_ai_message_is_continued() -> None:
    small, large = pair(PLAIN, PLAIN)
    result = make(small, large).invoke([HumanMessage("Count"), AIMessage("one two")])
    assert small.last_prompt == "user: Count\nassistant: one two"
    assert large.last_prompt == small.last_prompt
    assert result.content == "".join(PLAIN)


def test_continued_open_think_is_reasoning() -> None:
    small = ScriptedBackend(["more thought</think> Done."], name="s")
    result = make(small, mode="small").invoke([HumanMessage("q"), AIMessage("<think>I start")])
    assert result.additional_kwargs["reasoning_content"] == "more thought"
    assert result.content == "Done."


def test_each_model_gets_its_own_template() -> None:
    class OtherTemplate(ScriptedBackend):
        def chat_prompt_ids(self, messages: Any, **kw: Any) -> list[int]:
            text = "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"
            self.last_prompt = text
            return self.encode(text)

    small = ScriptedBackend(DELEG_SMALL, name="s")
    large = OtherTemplate(DELEG_LARGE, name="l", tokenizer="char")
    make(small, large).invoke("hi")
    assert small.last_prompt == "user: hi\nassistant:"
    assert large.last_prompt == "<|user|>hi<|assistant|>"
    prompt_len = large.sessions[0].prompt_len
    assert large.decode(large.sessions[0].ids[:prompt_len]) == "<|user|>hi<|assistant|>"


def test_model_without_template_needs_one() -> None:
    class NoTemplate(ScriptedBackend):
        chat_prompt_ids = None  # type: ignore[assignment]
        chat_template = None

    small = NoTemplate(PLAIN, name="bare")
    with pytest.raises(ConfigError, match="small_chat_template"):
        make(small, mode="small").invoke("hi")
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    result = make(NoTemplate(PLAIN, name="bare"), mode="small", small_chat_template=template)
    assert result.invoke("hi").content == "".join(PLAIN)
    override = NoTemplate(PLAIN, name="bare")
    make(override, mode="small", small_chat_template=template).invoke("hi")
    prompt = override.decode(override.sessions[0].ids[: override.sessions[0].prompt_len])
    assert prompt == "[user] hi\n[assistant]"


def test_strict_template_gets_alternating_roles() -> None:
    class Strict(ScriptedBackend):
        def chat_prompt_ids(self, messages: Any, **kw: Any) -> list[int]:
            roles = [m["role"] for m in messages if m["role"] != "system"]
            if any(a == b for a, b in zip(roles, roles[1:], strict=False)) or "tool" in roles:
                raise ValueError("Conversation roles must alternate user/assistant")
            return super().chat_prompt_ids(messages, **kw)

    small = Strict(PLAIN, name="strict")
    messages = [SystemMessage("a"), SystemMessage("b"), HumanMessage("x"), HumanMessage("y")]
    assert make(small, mode="small").invoke(messages).content == "".join(PLAIN)
    assert small.last_prompt == "system: a\n\nb\nuser: x\n\ny\nassistant:"


# ------------------------------------------------------------------ bad input
def test_invalid_requests_raise_typed_errors() -> None:
    model = make(*pair(PLAIN, PLAIN))
    with pytest.raises(InvalidRequestError, match="no messages"):
        model.invoke([])
    image = HumanMessage(
        content=[
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]
    )
    with pytest.raises(InvalidRequestError, match="image_url"):
        model.invoke([image])
    with pytest.raises(InvalidRequestError, match="unknown argument"):
        model.invoke("hi", max_new_tokens=5)
    with pytest.raises(InvalidRequestError, match="model"):
        model.invoke("hi", model="other")
    with pytest.raises(InvalidRequestError, match="mode"):
        model.invoke("hi", mode="huge")
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        model.invoke("hi", max_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        model.invoke("hi", temperature=-1.0)
    with pytest.raises(InvalidRequestError, match="stop"):
        model.invoke("hi", stop=[""])


def test_bad_settings_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        ChatSpeculativeThinking(temperature=-1)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        ChatSpeculativeThinking(max_new_tokens=5)
    with pytest.raises(ConfigError, match="mode"):
        ChatSpeculativeThinking(mode="huge")
    with pytest.raises(ConfigError, match="small_model"):
        ChatSpeculativeThinking(small_model=42)
    with pytest.raises(ConfigError, match="draft_tokens"):
        ChatSpeculativeThinking(config={"draft_tokens": 0})


def test_preset_config_and_field_overrides() -> None:
    model = ChatSpeculativeThinking(
        preset="instruct", config=SpeculativeThinkingConfig(draft_tokens=5), temperature=0.2
    )
    cfg = model.effective_config
    assert cfg.begin and cfg.not_reasoning and cfg.draft_tokens == 5 and cfg.temperature == 0.2
    assert ChatSpeculativeThinking(config={"begin": True}).effective_config.begin
    assert ChatSpeculativeThinking(timeout=3).effective_config.time_out == 3


def test_unloadable_model_fails_fast() -> None:
    started = time.monotonic()
    model = ChatSpeculativeThinking(small_model="/nonexistent/model.gguf", mode="small")
    with pytest.raises(ModelLoadError, match="nonexistent"):
        model.invoke("hi")
    # A missing file is refused in milliseconds; 30 s only catches retrying or waiting on a
    # network, and holds on a CPU loaded 10x and more.
    assert time.monotonic() - started < 30


def test_loader_errors_become_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: str, device: Any, trust: bool, threads: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(loading, "_load_backend_uncached", broken)
    with pytest.raises(ModelLoadError, match="disk on fire"):
        ChatSpeculativeThinking(small_model="x", mode="small").invoke("hi")


# --------------------------------------------------------------- lazy shared loads
def test_lazy_loading_shared_across_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(spec: str, device: Any, trust: bool, threads: Any) -> ScriptedBackend:
        calls.append(spec)
        return ScriptedBackend(PLAIN, name=spec)

    monkeypatch.setattr(loading, "_load_backend_uncached", fake)
    model = ChatSpeculativeThinking(small_model="tiny", large_model="big", temperature=0)
    assert calls == []  # nothing loads at construction
    model.invoke("hi")
    assert sorted(calls) == ["big", "tiny"]
    model.model_copy().invoke("hi")
    model.bind(max_tokens=2).invoke("hi")
    model.with_config(tags=["x"]).invoke("hi")
    ChatSpeculativeThinking(small_model="tiny", large_model="big").invoke("hi", max_tokens=2)
    assert sorted(calls) == ["big", "tiny"]


def test_concurrent_first_calls_load_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def slow(spec: str, device: Any, trust: bool, threads: Any) -> ScriptedBackend:
        calls.append(spec)
        time.sleep(0.05)
        return ScriptedBackend(PLAIN, name=spec)

    monkeypatch.setattr(loading, "_load_backend_uncached", slow)
    model = ChatSpeculativeThinking(small_model="tiny", mode="small", temperature=0)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(str(model.invoke("hi").content)))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["tiny"]
    assert results == ["".join(PLAIN)] * 6


# ------------------------------------------------------------------ descriptors
def test_tracing_params() -> None:
    model = make(*pair(), max_tokens=77, stop=["x"])
    params = model._get_ls_params()
    assert params["ls_provider"] == "spthink"
    assert params["ls_model_name"] == "small-fake+large-fake"
    assert params["ls_model_type"] == "chat"
    assert params["ls_temperature"] == 0
    assert params["ls_max_tokens"] == 77
    assert params["ls_stop"] == ["x"]
    assert model._get_ls_params(model="other")["ls_model_name"] == "other"
    assert model._get_ls_params(mode="small")["ls_model_name"] == "small-fake"
    assert model._get_ls_params(max_tokens=5, temperature=0.5)["ls_max_tokens"] == 5
    assert model._llm_type == "spthink"
    ident = model._identifying_params
    assert ident["small_model"] == "small-fake" and ident["mode"] == "speculative"
    assert ident["config"]["temperature"] == 0


class _TokenCounter(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kw: Any) -> None:
        self.tokens.append(token)


def test_new_token_callbacks_in_invoke_and_stream() -> None:
    model = make(*pair(PLAIN, PLAIN), mode="small")
    for call in (
        lambda c: model.invoke("hi", config=c),
        lambda c: list(model.stream("hi", config=c)),
    ):
        counter = _TokenCounter()
        call({"callbacks": [counter]})
        assert "".join(counter.tokens) == "".join(PLAIN)


async def test_async_errors_are_typed() -> None:
    small = ScriptedBackend(DELEG_SMALL, name="s")
    large = ScriptedBackend(DELEG_LARGE, name="l", fail_after=1)
    with pytest.raises(LargeModelError):
        await make(small, large, config={"fallback": "raise"}).ainvoke("hi")
    with pytest.raises(InvalidRequestError, match="no messages"):
        async for _ in make(*pair()).astream([]):
            pass
    with pytest.raises(ModelLoadError):
        await ChatSpeculativeThinking(small_model="/nonexistent/m.gguf", mode="small").ainvoke("hi")
    assert small.sessions and all(s.closed for s in small.sessions)


def test_splitter_drops_stray_closing_tag() -> None:
    splitter = ReasoningSplitter()
    parts = splitter.feed("thoughts</th") + splitter.feed("ink>\n\nanswer") + splitter.flush()
    assert parts == [("content", "thoughts"), ("content", "answer")]
