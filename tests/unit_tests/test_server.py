"""The OpenAI-compatible server on loopback, driven by the real ``openai`` client and ChatOpenAI.

Models are scripted fakes (:class:`~langchain_spthink.backends.scripted.ScriptedBackend`), so
outputs are known and every test is fast. The server runs in uvicorn on a background thread per
test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink_integrations.openai_server import create_app

PLAIN = ["Hello there, friend.\n\n", "The sum is 4."]
DELEG_SMALL = ["First step here.\n\n", "Wait, maybe not.\n\n", "So the answer is 4."]
DELEG_LARGE = ["First step here.\n\n", "Let me verify: yes it is 4.\n\n", "Final answer: 4."]
THINK = ["<think>Let me see, 2 and 2.\n\n", "That makes 4.</think>\n\n", "The answer is 4."]
LONG = [" ".join(f"w{i}" for i in range(3000))]
# Upper bound of every wait in this module (server start, client calls, polling). Generous on
# purpose: each thing waited for takes milliseconds here, so 20 s holds on a CPU loaded 10x and
# more; only a hang reaches it.
TIMEOUT = 20.0


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (ephemeral port) in a daemon thread."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def serving(app: FastAPI) -> Iterator[ServerThread]:
    server = ServerThread(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scripted_model(
    small: list[str] = PLAIN, large: list[str] = PLAIN, **kw: Any
) -> tuple[ChatSpeculativeThinking, ScriptedBackend, ScriptedBackend]:
    s = ScriptedBackend(small, name="small-fake", on_token=kw.pop("on_token", None))
    g = ScriptedBackend(large, name="large-fake")
    kw.setdefault("temperature", 0)
    return ChatSpeculativeThinking(small_model=s, large_model=g, **kw), s, g


@pytest.fixture(scope="module")
def deleg() -> Iterator[tuple[ServerThread, ScriptedBackend, ScriptedBackend]]:
    model, small, large = scripted_model(DELEG_SMALL, DELEG_LARGE, max_tokens=64)
    with serving(create_app(model, max_concurrency=4)) as server:
        yield server, small, large


@pytest.fixture(scope="module")
def think() -> Iterator[ServerThread]:
    model, _, _ = scripted_model(THINK, THINK, mode="small", max_tokens=64)
    with serving(create_app(model, model_id="thinker")) as server:
        yield server


def client(server: ServerThread, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0
    )


USER = [{"role": "user", "content": "What is 2 + 2?"}]


# ------------------------------------------------------------------ openai client
def test_invoke_with_openai_client(deleg: Any) -> None:
    server, small, large = deleg
    reply = client(server).chat.completions.create(model="spthink", messages=USER)
    assert reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and "4" in choice.message.content
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    summary = reply.model_extra["spthink"]  # type: ignore[index]
    assert summary["delegations"], summary
    assert summary["large_tokens"] > 0
    assert "Let me verify" in choice.message.content


def test_models_and_health(deleg: Any) -> None:
    server, _, _ = deleg
    models = client(server).models.list()
    ids = [m.id for m in models.data]
    assert ids[0] == "spthink" and "small-fake+large-fake" in ids
    health = httpx.get(server.url + "/health", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["models"] == ids


def test_model_name_alias_accepted(deleg: Any) -> None:
    server, _, _ = deleg
    reply = client(server).chat.completions.create(model="small-fake+large-fake", messages=USER)
    assert reply.model == "small-fake+large-fake"


def test_stream_chunks_usage_and_delegation_events(deleg: Any) -> None:
    server, _, _ = deleg
    stream = client(server).chat.completions.create(
        model="spthink",
        messages=[{"role": "system", "content": "Be brief."}, *USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    events = [c.model_extra["spthink"] for c in chunks if (c.model_extra or {}).get("spthink")]
    delegations = [e["delegation"] for e in events if "delegation" in e]
    assert delegations and delegations[0]["kept"] in ("large", "small")
    assert all(set(d) >= {"kind", "large_text", "small_draft", "position"} for d in delegations)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    summary = finals[0].model_extra["spthink"]["summary"]  # type: ignore[index]
    assert len(summary["delegations"]) == len(delegations)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # same text as the non-streaming answer
    reply = client(server).chat.completions.create(model="spthink", messages=USER)
    assert text == reply.choices[0].message.content
    # each delegation event follows the text it refers to
    seen = ""
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            seen += c.choices[0].delta.content
        extra = (c.model_extra or {}).get("spthink") or {}
        if "delegation" in extra:
            d = extra["delegation"]
            kept = d["large_text"] if d["kept"] == "large" else d["small_draft"]
            assert kept.strip() in seen


def test_stream_without_usage_has_no_usage_chunk(deleg: Any) -> None:
    server, _, _ = deleg
    chunks = list(
        client(server).chat.completions.create(model="spthink", messages=USER, stream=True)
    )
    assert all(c.choices for c in chunks)
    assert "usage" not in chunks[1].model_dump(exclude_unset=True)


def test_raw_sse_format(deleg: Any) -> None:
    server, _, _ = deleg
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": "spthink", "messages": USER, "stream": True, "max_tokens": 4},
        timeout=TIMEOUT,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["id"].startswith("chatcmpl-")
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length"


def test_reasoning_content(think: ServerThread) -> None:
    c = client(think)
    reply = c.chat.completions.create(model="thinker", messages=USER)
    message = reply.choices[0].message
    reasoning = message.model_extra["reasoning_content"]  # type: ignore[index]
    assert "Let me see" in reasoning and "That makes 4." in reasoning
    assert "<think>" not in (message.content or "")
    assert (message.content or "").strip() == "The answer is 4."
    assert reply.usage is not None and reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens > 0
    chunks = list(c.chat.completions.create(model="thinker", messages=USER, stream=True))
    streamed = "".join(
        (ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for ch in chunks
        if ch.choices
    )
    assert streamed == reasoning


def test_sampling_fields_and_stop(deleg: Any) -> None:
    server, _, _ = deleg
    reply = client(server).chat.completions.create(
        model="spthink",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
            {"role": "assistant", "content": "Let me think."},
            {"role": "user", "content": "Go on."},
        ],
        temperature=0.5,
        top_p=0.9,
        seed=7,
        max_completion_tokens=32,
        stop="step",
    )
    assert reply.choices[0].message.content == "First "
    assert reply.choices[0].finish_reason == "stop"
    stopped = client(server).chat.completions.create(
        model="spthink", messages=USER, stop=["here", "xyz"], max_tokens=8
    )
    assert stopped.choices[0].message.content == "First step "


def test_mode_extension(deleg: Any) -> None:
    server, _, _ = deleg
    reply = client(server).chat.completions.create(
        model="spthink", messages=USER, extra_body={"mode": "small"}
    )
    assert reply.model_extra["spthink"]["delegations"] == []  # type: ignore[index]
    assert "Wait, maybe not." in (reply.choices[0].message.content or "")


# ------------------------------------------------------------------------ ChatOpenAI
def test_chat_openai_invoke_and_stream(deleg: Any) -> None:
    from langchain_openai import ChatOpenAI

    server, _, _ = deleg
    llm = ChatOpenAI(
        model="spthink",
        base_url=server.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        timeout=TIMEOUT,
        max_retries=0,
        temperature=0,
        stream_usage=True,
    )
    message = llm.invoke("What is 2 + 2?")
    assert "4" in str(message.content)
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    chunks = list(llm.stream("What is 2 + 2?"))
    text = "".join(str(c.content) for c in chunks)
    assert text == message.content
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.usage_metadata is not None and total.usage_metadata["input_tokens"] > 0


async def test_chat_openai_async(deleg: Any) -> None:
    from langchain_openai import ChatOpenAI

    server, _, _ = deleg
    llm = ChatOpenAI(
        model="spthink",
        base_url=server.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        timeout=TIMEOUT,
        max_retries=0,
    )
    replies = await asyncio.gather(*(llm.ainvoke("2+2?") for _ in range(3)))
    assert len({r.content for r in replies}) == 1


def test_chat_openai_reasoning(think: ServerThread) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="thinker",
        base_url=think.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        timeout=TIMEOUT,
        max_retries=0,
    )
    message = llm.invoke("2+2?")
    assert str(message.content).strip() == "The answer is 4."


# ------------------------------------------------------------------------ bad requests
def post(server: ServerThread, body: Any, **kw: Any) -> httpx.Response:
    kwargs: dict[str, Any] = {"timeout": TIMEOUT, **kw}
    if isinstance(body, (bytes, str, Iterator)):
        kwargs.setdefault("headers", {"content-type": "application/json"})
        return httpx.post(server.url + "/v1/chat/completions", content=body, **kwargs)
    return httpx.post(server.url + "/v1/chat/completions", json=body, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "spthink"}, "messages"),
        ({"model": "spthink", "messages": []}, "messages"),
        ({"model": "spthink", "messages": "hi"}, "messages"),
        ({"model": "spthink", "messages": [{"role": "wizard", "content": "x"}]}, None),
        ({"model": "spthink", "messages": [{"role": "user", "content": 5}]}, None),
        ({"model": "spthink", "messages": USER, "max_tokens": "many"}, "max_tokens"),
        ({"model": "spthink", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "spthink", "messages": USER, "temperature": -1}, "temperature"),
        ({"model": "spthink", "messages": USER, "top_p": 0}, "top_p"),
        ({"model": "spthink", "messages": USER, "stop": [""]}, "stop"),
        ({"model": "spthink", "messages": USER, "n": 2}, "n"),
        ({"messages": USER}, "model"),
        ([1, 2], None),
        (
            {
                "model": "spthink",
                "messages": [{"role": "user", "content": [{"type": "image_url", "x": 1}]}],
            },
            None,
        ),
    ],
)
def test_invalid_requests(deleg: Any, body: Any, param: str | None) -> None:
    server, _, _ = deleg
    assert_openai_error(post(server, body), 400, param)


def test_huge_max_tokens(deleg: Any) -> None:
    server, _, _ = deleg
    for field in ("max_tokens", "max_completion_tokens"):
        response = post(server, {"model": "spthink", "messages": USER, field: 10**9})
        assert_openai_error(response, 400, field)
        assert response.json()["error"]["code"] == "max_tokens_too_large"


def test_unknown_model_404(deleg: Any) -> None:
    server, _, _ = deleg
    response = post(server, {"model": "gpt-5", "messages": USER})
    assert_openai_error(response, 404, "model")
    assert response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-5", messages=USER)


def test_bad_json_and_openai_client_errors(deleg: Any) -> None:
    server, _, _ = deleg
    assert_openai_error(post(server, b'{"model": "spthink", "messages": ['), 400)
    assert_openai_error(post(server, b"\xff\xfe"), 400)
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(model="spthink", messages=USER, max_tokens=10**7)
    assert "limit" in str(info.value)


def test_tools_and_response_format_refused_by_a_model_without_them() -> None:
    with serving(create_app(PlainModel(), model_id="plain")) as server:
        tool = {
            "type": "function",
            "function": {"name": "add", "parameters": {"type": "object", "properties": {}}},
        }
        response = post(server, {"model": "plain", "messages": USER, "tools": [tool]})
        assert_openai_error(response, 400, "tools")
        # tool_choice "none": the tools are not used, the request runs
        ok = post(
            server, {"model": "plain", "messages": USER, "tools": [tool], "tool_choice": "none"}
        )
        assert ok.status_code == 200
        response = post(
            server,
            {"model": "plain", "messages": USER, "response_format": {"type": "json_object"}},
        )
        assert_openai_error(response, 400, "response_format")
        ok = post(server, {"model": "plain", "messages": USER, "response_format": {"type": "text"}})
        assert ok.status_code == 200


def test_tool_messages_in_history(deleg: Any) -> None:
    server, small, _ = deleg
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    reply = client(server).chat.completions.create(model="spthink", messages=messages)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    bad = [*messages[:1], {**messages[1], "tool_calls": [{"id": "c", "type": "function",
           "function": {"name": "add", "arguments": "{nope"}}]}]  # fmt: skip
    assert_openai_error(post(server, {"model": "spthink", "messages": bad}), 400)


def test_oversize_body_413() -> None:
    model, _, _ = scripted_model()
    with serving(create_app(model, max_body_bytes=2000)) as server:
        big = {"model": "spthink", "messages": [{"role": "user", "content": "x" * 5000}]}
        assert_openai_error(post(server, big), 413)

        def chunked() -> Iterator[bytes]:
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i : i + 500]

        assert_openai_error(post(server, chunked()), 413)
        assert post(server, {"model": "spthink", "messages": USER}).status_code == 200


def test_unknown_path_is_openai_style(deleg: Any) -> None:
    server, _, _ = deleg
    response = httpx.get(server.url + "/v1/nothing", timeout=TIMEOUT)
    assert_openai_error(response, 404)


# ------------------------------------------------------------------------ auth
def test_api_key_required_when_set() -> None:
    model, _, _ = scripted_model()
    with serving(create_app(model, api_key="s3cret")) as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = post(server, {"model": "spthink", "messages": USER}, headers=headers)
            assert_openai_error(response, 401)
            assert "s3cret" not in response.text
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").chat.completions.create(model="spthink", messages=USER)
        with pytest.raises(openai.AuthenticationError):
            client(server, "wrong").models.list()
        reply = client(server, "s3cret").chat.completions.create(model="spthink", messages=USER)
        assert reply.choices[0].message.content
        assert client(server, "s3cret").models.list().data
        # health is open (for load balancers); it reveals no secret
        health = httpx.get(server.url + "/health", timeout=TIMEOUT)
        assert health.status_code == 200 and "s3cret" not in health.text


def test_no_api_key_means_open(deleg: Any) -> None:
    server, _, _ = deleg
    response = post(
        server,
        {"model": "spthink", "messages": USER},
        headers={"Authorization": "Bearer anything"},
    )
    assert response.status_code == 200


# --------------------------------------------------------------- disconnect and queue
def slow_model(delay: float = 0.01) -> tuple[ChatSpeculativeThinking, ScriptedBackend]:
    """A model writing the 3000-token LONG script, sleeping ``delay`` s after each token.

    A sleep only ever lasts longer on a busy machine, so an uncancelled request takes at least
    3000 * delay seconds (30 s by default) however loaded the CPU is.
    """
    model, small, _ = scripted_model(
        LONG, LONG, mode="small", max_tokens=3000, on_token=lambda: time.sleep(delay)
    )
    return model, small


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_disconnect_mid_stream_cancels_generation() -> None:
    model, small = slow_model()
    with serving(create_app(model)) as server:
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json={"model": "spthink", "messages": USER, "stream": True},
            timeout=TIMEOUT,
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any("w1" in line for line in got)
        # the client hung up: the session is closed long before the 3000-token script ends
        # (2000 tokens take >= 20 s: generous next to the milliseconds a disconnect takes)
        assert wait_for(lambda: bool(small.sessions) and small.sessions[-1].closed)
        assert small.tokens_sampled < 2000
        sampled = small.tokens_sampled
        time.sleep(0.3)
        assert small.tokens_sampled == sampled
        assert wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 0)


def test_disconnect_non_streaming_cancels_generation() -> None:
    model, small = slow_model()
    with serving(create_app(model)) as server:
        # The answer needs >= 30 s (slow_model), so the client's 0.5 s read timeout always fires
        # first, loaded CPU or not; then the hang-up must stop generation within 2000 tokens
        # (>= 20 s), generous next to the milliseconds it takes.
        with pytest.raises(httpx.ReadTimeout):
            post(server, {"model": "spthink", "messages": USER}, timeout=0.5)
        assert wait_for(lambda: bool(small.sessions) and small.sessions[-1].closed)
        assert small.tokens_sampled < 2000
        assert wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 0)


def test_queue_full_503() -> None:
    # The running request lasts >= 30 s unless its client hangs up (at the end of the `with`
    # below): the queue-full checks happen while it runs, however slow the machine.
    model, small = slow_model()
    app = create_app(model, max_concurrency=1, max_queue=1)
    body = {"model": "spthink", "messages": USER, "stream": True}
    with serving(app) as server:
        url = server.url + "/v1/chat/completions"
        statuses: list[int] = []

        def queued() -> None:  # waits for the slot, then hangs up at once
            with httpx.stream("POST", url, json=body, timeout=TIMEOUT) as r:
                statuses.append(r.status_code)

        with httpx.stream("POST", url, json=body, timeout=TIMEOUT) as running:
            assert running.status_code == 200
            waiter = threading.Thread(target=queued, daemon=True)
            waiter.start()
            assert wait_for(lambda: httpx.get(server.url + "/health").json()["waiting"] == 1)
            response = post(server, {"model": "spthink", "messages": USER})
            assert_openai_error(response, 503)
            assert response.json()["error"]["code"] == "queue_full"
            with pytest.raises(openai.InternalServerError):
                client(server).chat.completions.create(model="spthink", messages=USER)
        waiter.join(TIMEOUT)
        assert statuses == [200]
        assert wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 0)
        assert wait_for(lambda: len(small.sessions) == 2 and all(s.closed for s in small.sessions))
        short = post(server, {"model": "spthink", "messages": USER, "max_tokens": 3})
        assert short.status_code == 200


async def test_event_loop_not_blocked() -> None:
    """While a slow request generates, /health answers: mid-generation, not after it.

    No clock: a server whose loop generation blocked could only answer /health once the
    generation is over (>= 30 s, see slow_model), so the answer arriving while the request is
    still running and its model still writing is the proof.
    """
    model, small = slow_model()
    with serving(create_app(model, max_concurrency=2)) as server:
        async with httpx.AsyncClient(timeout=TIMEOUT) as ac:
            slow = asyncio.create_task(
                ac.post(
                    server.url + "/v1/chat/completions",
                    json={"model": "spthink", "messages": USER},
                )
            )
            for _ in range(int(TIMEOUT / 0.01)):  # until the model has started writing
                if small.tokens_sampled:
                    break
                await asyncio.sleep(0.01)
            assert small.tokens_sampled > 0
            health = await ac.get(server.url + "/health")
            assert health.status_code == 200 and health.json()["running"] == 1
            assert not slow.done() and small.tokens_sampled < 3000  # still generating
            slow.cancel()  # hang up: the server stops generating (test_disconnect_*)
            with contextlib.suppress(asyncio.CancelledError):
                await slow
        assert wait_for(lambda: httpx.get(server.url + "/health").json()["running"] == 0)


def test_mid_stream_error_is_reported_in_band() -> None:
    small = ScriptedBackend(LONG, name="small-fake", fail_after=5)
    model = ChatSpeculativeThinking(
        small_model=small, large_model=small, mode="small", temperature=0
    )
    with serving(create_app(model)) as server:
        with pytest.raises(openai.APIError):
            list(
                client(server).chat.completions.create(model="spthink", messages=USER, stream=True)
            )
        response = post(server, {"model": "spthink", "messages": USER})
        assert_openai_error(response, 500)


def test_create_app_validates_limits() -> None:
    model, _, _ = scripted_model()
    with pytest.raises(ValueError):
        create_app(model, max_concurrency=0)
    app = create_app(lambda: model)
    assert app.state.chat_model is model


def raw_http(port: int, request: bytes) -> tuple[str, dict[str, Any]]:
    """Send one HTTP/1.1 request over a plain socket: (status line, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), json.loads(body)


def test_free_port_helper_serves_on_loopback_only() -> None:
    model, _, _ = scripted_model()
    with serving(create_app(model)) as server:
        host, port = server.server.servers[0].sockets[0].getsockname()[:2]
        assert (host, port) == ("127.0.0.1", server.port) and port > 0  # an ephemeral port
        # Another loopback address reaches no listener: bound to 127.0.0.1, not 0.0.0.0.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        # Plain HTTP/1.1 on that port is the app: /health, then a chat completion whose
        # content is the scripted answer.
        status, health = raw_http(
            port, b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        assert status == "HTTP/1.1 200 OK"
        assert health == {
            "status": "ok",
            "models": ["spthink", "small-fake+large-fake"],
            "running": 0,
            "waiting": 0,
        }
        body = json.dumps({"model": "spthink", "messages": USER}).encode()
        status, reply = raw_http(
            port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        assert status == "HTTP/1.1 200 OK"
        assert reply["choices"][0]["message"]["content"] == "".join(PLAIN)


# ------------------------------------------------------------------------------ tools
class PlainModel(BaseChatModel):
    """A chat model without tools or response_format: the server refuses them for it."""

    @property
    def _llm_type(self) -> str:
        return "plain"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        raise NotImplementedError

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        yield ChatGenerationChunk(message=AIMessageChunk(content="4"))


class ToolCaller(BaseChatModel):
    """A chat model that streams one tool call (the server's tool-call output path)."""

    @property
    def _llm_type(self) -> str:
        return "tool-caller"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kw: Any) -> Any:
        return self.bind(tools=tools)

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        raise NotImplementedError

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        assert kw["tools"][0]["function"]["name"] == "add"
        for part in ('{"a": ', "2, ", '"b": 2}'):
            first = part.startswith("{")
            yield ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    tool_call_chunks=[
                        {
                            "name": "add" if first else None,
                            "args": part,
                            "id": "call_9" if first else None,
                            "index": 0,
                        }
                    ],
                )
            )
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata={"input_tokens": 3, "output_tokens": 5, "total_tokens": 8},
                response_metadata={"finish_reason": "tool_calls"},
            )
        )


ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}


def test_tools_pass_through_to_bind_tools() -> None:
    small = ScriptedBackend(PLAIN, name="small-fake")
    model = ChatSpeculativeThinking(
        small_model=small, large_model=small, mode="small", temperature=0
    )
    with serving(create_app(model)) as server:
        reply = client(server).chat.completions.create(
            model="spthink", messages=USER, tools=[ADD_TOOL], tool_choice="auto"
        )
        # The script writes no call: the text is the answer, no tool_calls.
        assert reply.choices[0].message.content == "".join(PLAIN)
        assert reply.choices[0].message.tool_calls is None
        assert small.last_prompt.startswith("tools: add")


CALL_SCRIPT = ['I will add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call>']


def test_scripted_tool_call_in_openai_format_streamed_and_not() -> None:
    small = ScriptedBackend(CALL_SCRIPT, name="small-fake")
    model = ChatSpeculativeThinking(
        small_model=small, large_model=small, mode="small", temperature=0, max_tokens=64
    )
    with serving(create_app(model)) as server:
        c = client(server)
        reply = c.chat.completions.create(model="spthink", messages=USER, tools=[ADD_TOOL])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "I will add."
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "add" and call.id.startswith("call_")
        assert json.loads(call.function.arguments) == {"a": 2, "b": 2}
        chunks = list(
            c.chat.completions.create(model="spthink", messages=USER, tools=[ADD_TOOL], stream=True)
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        deltas = [d for ch in chunks if ch.choices for d in ch.choices[0].delta.tool_calls or []]
        assert text == "I will add."
        assert [d.function.name for d in deltas if d.function and d.function.name] == ["add"]
        args = "".join(d.function.arguments or "" for d in deltas if d.function)
        assert json.loads(args) == {"a": 2, "b": 2}
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


def test_forced_tool_choice_and_json_schema_are_constrained() -> None:
    # The script writes prose: only the grammar makes these answers a call / a JSON object.
    small = ScriptedBackend(["Four, I think. It is simple."], name="small-fake")
    model = ChatSpeculativeThinking(
        small_model=small, large_model=small, mode="small", temperature=0, max_tokens=200
    )
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["answer"],
    }
    with serving(create_app(model)) as server:
        c = client(server)
        reply = c.chat.completions.create(
            model="spthink",
            messages=USER,
            tools=[ADD_TOOL],
            tool_choice={"type": "function", "function": {"name": "add"}},
        )
        (call,) = reply.choices[0].message.tool_calls or []
        args = json.loads(call.function.arguments)
        assert call.function.name == "add" and set(args) == {"a", "b"}
        assert all(isinstance(v, (int, float)) for v in args.values())
        reply = c.chat.completions.create(
            model="spthink",
            messages=USER,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema},
            },
        )
        # No scripted piece fits the schema, so every token is the scripted fake's documented
        # fallback (langchain_spthink/backends/scripted.py): the allowed piece that ends a value
        # soonest, then the shortest, then the lowest id. That spells '{"answer": ' one character
        # at a time; then the allowed one-character pieces are the ten digits, and the one with
        # the lowest id in the (process-wide) word vocabulary is written; then "}".
        digit = min("0123456789", key=lambda d: small.vocab.by_text[d])
        assert reply.choices[0].message.content == '{"answer": ' + digit + "}"
        reply = c.chat.completions.create(
            model="spthink", messages=USER, response_format={"type": "json_object"}
        )
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
        response = post(
            server,
            {"model": "spthink", "messages": USER, "tools": [ADD_TOOL], "tool_choice": "mul"},
        )
        assert_openai_error(response, 400)
        assert "mul" in response.json()["error"]["message"]


def test_tool_calls_in_openai_format() -> None:
    from langchain_openai import ChatOpenAI

    with serving(create_app(ToolCaller(), model_id="tc")) as server:
        c = client(server)
        reply = c.chat.completions.create(model="tc", messages=USER, tools=[ADD_TOOL])
        call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert call.id == "call_9" and call.function.name == "add"
        assert json.loads(call.function.arguments) == {"a": 2, "b": 2}
        assert reply.choices[0].finish_reason == "tool_calls"
        chunks = list(
            c.chat.completions.create(model="tc", messages=USER, tools=[ADD_TOOL], stream=True)
        )
        deltas = [ch.choices[0].delta.tool_calls for ch in chunks if ch.choices]
        args = "".join(d[0].function.arguments or "" for d in deltas if d)  # type: ignore[union-attr]
        assert json.loads(args) == {"a": 2, "b": 2}
        llm = ChatOpenAI(
            model="tc",
            base_url=server.url + "/v1",
            api_key="unused",  # type: ignore[arg-type]
            timeout=TIMEOUT,
            max_retries=0,
        ).bind_tools([ADD_TOOL])
        message = llm.invoke("2+2?")
        assert message.tool_calls == [
            {"name": "add", "args": {"a": 2, "b": 2}, "id": "call_9", "type": "tool_call"}
        ]
        streamed = None
        for chunk in llm.stream("2+2?"):
            streamed = chunk if streamed is None else streamed + chunk
        assert streamed is not None and streamed.tool_calls[0]["args"] == {"a": 2, "b": 2}
