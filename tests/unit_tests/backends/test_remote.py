"""The remote backend against a scripted in-process OpenAI-compatible server on loopback.

The fake server speaks the completions streaming protocol (SSE over chunked HTTP/1.1) and can be
told to stream given text, answer 500, hang, cut the connection mid-stream or send garbage. The
local tokenizer is the tiny offline one (``tiny_tokenizer``: byte-level BPE, ChatML).

Wall time: requests that are not about timeouts use a 30 s read timeout (the fake server answers
at once); timeouts are checked against a server that hangs for 60 s, with bounds far above the
configured timeout (a CPU loaded 10x adds seconds, not tens of seconds) and far below the hang.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from langchain_spthink import (
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    LargeModelError,
    Request,
    SamplingParams,
    SpeculativeEngine,
    SpeculativeThinkingConfig,
    TextEvent,
)
from langchain_spthink.backends.loading import load_backend
from langchain_spthink.backends.remote import RemoteBackend
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.errors import BackendError, ModelLoadError

GREEDY = SamplingParams(temperature=0.0)

# What the fake server does for one request: ("stream", chunks, finish_reason, usage or None),
# ("status", code), ("hang",), ("cut", chunks), ("raw", content_type, body), ("slow", chunks).
Action = tuple[Any, ...]
HANG_SECONDS = 60.0
# Read timeout of requests whose test is not about timeouts: never reached (the server answers at
# once), so a loaded machine cannot turn it into a failure.
NO_TIMEOUT = 30.0


class FakeServer:
    """A ThreadingHTTPServer answering ``POST /v1/completions`` from a script of actions."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.actions: list[Action] = []
        self.default: Action = ("stream", ["Hello"], "length", None)
        self.release = threading.Event()
        self.disconnected = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                action = server.actions.pop(0) if server.actions else server.default
                if callable(action):
                    action = action(body)
                try:
                    self.act(action, body)
                except (BrokenPipeError, ConnectionResetError):
                    server.disconnected.set()

            def act(self, action: Action, body: dict[str, Any]) -> None:
                kind = action[0]
                if kind == "status":
                    payload = json.dumps({"error": {"message": "boom", "code": action[1]}})
                    self.send_response(action[1])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                if kind == "hang":  # until the server closes; at most HANG_SECONDS
                    server.release.wait(HANG_SECONDS)
                    return
                if kind == "raw":
                    self.send_response(200)
                    self.send_header("Content-Type", action[1])
                    self.send_header("Content-Length", str(len(action[2])))
                    self.end_headers()
                    self.wfile.write(action[2].encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if kind == "cut":
                    for text in action[1]:
                        self.event(chunk(text, None))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if kind == "slow":
                    for text in action[1]:
                        self.event(chunk(text, None))
                        time.sleep(0.02)
                    self.event(chunk("", "length"))
                    self.done()
                    return
                _, chunks, finish, usage = action
                for text in chunks:
                    self.event(chunk(text, None))
                self.event(chunk("", finish))
                if usage is not None:
                    self.event(
                        {"id": "c", "object": "text_completion", "choices": [], "usage": usage}
                    )
                self.done()

            def event(self, payload: dict[str, Any] | str) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                self.write_chunk(f"data: {data}\n\n".encode())

            def write_chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def done(self) -> None:
                self.event("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def chunk(text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


@pytest.fixture
def make(server: FakeServer, tiny_tokenizer: Any) -> Callable[..., RemoteBackend]:
    def factory(**kw: Any) -> RemoteBackend:
        opts: dict[str, Any] = {
            "timeout": NO_TIMEOUT,
            "max_retries": 0,
            "tokenizer": tiny_tokenizer,
        }
        opts.update(kw)
        return RemoteBackend(server.url, "fake", **opts)

    return factory


def prompt(backend: RemoteBackend) -> list[int]:
    return backend.chat_prompt_ids([{"role": "user", "content": "What is 12 times 7?"}])


# ---------------------------------------------------------------- protocol and accounting
def test_streams_text_as_local_ids(server: FakeServer, make: Callable[..., RemoteBackend]) -> None:
    text = "Hello world! 12 × 7 = 84.\n\nYes 日本 🙂 done"
    pieces = ["Hel", "lo wo", "rld! 12", " × 7", " = 84", ".\n", "\n", "Yes 日", "本 🙂", " done"]
    server.actions = [("stream", pieces, "length", None)]
    backend = make()
    ids = prompt(backend)
    session = backend.new_session(ids, SamplingParams(temperature=0.7, top_p=0.9, top_k=20, seed=5))
    out = list(session.stream(100))
    assert backend.decode(out) == text
    assert out == backend.encode(text)
    assert list(session.ids) == ids + out
    body = server.requests[0]
    assert body["prompt"] == backend.prompt_text(ids)
    assert body["prompt"].startswith("<|im_start|>system")  # special tokens kept in the text
    assert body["model"] == "fake" and body["stream"] is True and body["max_tokens"] == 100
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["top_k"] == 20 and body["seed"] == 5
    assert session.forwarded == len(ids) + len(out)  # no usage reported: local counts


def test_greedy_request_and_whole_sequence_as_prompt(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [("stream", [" A"], "length", None), ("stream", [" B"], "length", None)]
    backend = make()
    ids = prompt(backend)
    session = backend.new_session(ids, GREEDY)
    list(session.stream(4))
    session.extend(backend.encode(" and"))
    list(session.stream(4))
    assert server.requests[0]["temperature"] == 0.0
    assert "top_k" not in server.requests[0] and "seed" not in server.requests[0]
    assert server.requests[1]["prompt"] == backend.prompt_text(ids) + " A and"
    session.truncate(len(ids))
    assert list(session.ids) == ids


def test_stop_yields_eos_and_length_does_not(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [
        ("stream", [" The answer", " is 84."], "stop", None),
        ("stream", [" The answer", " is 84."], "length", None),
        ("stream", [" one two three four five six"], "stop", None),
    ]
    backend = make()
    session = backend.new_session(prompt(backend), GREEDY)
    out = list(session.stream(50))
    assert out[-1] == backend.eos_id and out[-1] in backend.eos_ids
    assert backend.decode(out[:-1]) == " The answer is 84."
    out = list(session.stream(50))
    assert backend.decode(out) == " The answer is 84." and backend.eos_id not in out
    out = list(session.stream(3))  # more text than max_new: capped, and no EOS past the cap
    assert len(out) == 3 and backend.eos_id not in out


def test_usage_counts_server_prompt_tokens(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 2,
        "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 20},
    }
    server.actions = [("stream", [" ok", " fine"], "length", usage)]
    backend = make()
    session = backend.new_session(prompt(backend), GREEDY)
    out = list(session.stream(10))
    assert server.requests[0]["stream_options"] == {"include_usage": True}
    assert session.server_prompt_tokens == 30 and session.server_cached_tokens == 20
    assert session.forwarded == 10 + len(out)


def test_early_close_closes_the_http_stream(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [("slow", [f" w{i}" for i in range(200)])]
    backend = make()
    session = backend.new_session(prompt(backend), GREEDY)
    gen = session.stream(500)
    first = [next(gen) for _ in range(3)]
    gen.close()
    assert len(session.ids) == len(prompt(backend)) + 3 and session.ids[-3:] == first
    # The server notices at its first or second write after the close (it writes every 20 ms, for
    # 4 s at least): milliseconds; 30 s is room for a CPU loaded 10x. If the client kept the
    # connection open, the server would write all 200 chunks and never set the event.
    assert server.disconnected.wait(30), "the server kept streaming to a closed consumer"


# ---------------------------------------------------------------- faults -> BackendError
def test_http_500_is_backend_error(server: FakeServer, make: Callable[..., RemoteBackend]) -> None:
    server.default = ("status", 500)
    backend = make()
    with pytest.raises(BackendError, match="HTTP 500"):
        list(backend.new_session(prompt(backend), GREEDY).stream(5))


def test_retries_with_backoff_then_succeeds(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [("status", 503), ("stream", [" ok"], "length", None)]
    backend = make(max_retries=1)
    out = list(backend.new_session(prompt(backend), GREEDY).stream(5))
    assert backend.decode(out) == " ok" and len(server.requests) == 2


def test_hang_times_out(server: FakeServer, make: Callable[..., RemoteBackend]) -> None:
    server.default = ("hang",)
    backend = make(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackendError, match="timed out"):
        list(backend.new_session(prompt(backend), GREEDY).stream(5))
    # The 0.5 s read timeout ended the wait, not the server (it hangs for 60 s): the request
    # takes ~0.5 s; a CPU loaded 10x adds a few seconds at most, far below 30 s.
    assert time.monotonic() - started < 30


def test_cut_mid_stream(server: FakeServer, make: Callable[..., RemoteBackend]) -> None:
    server.default = ("cut", [" partial", " text"])
    backend = make()
    session = backend.new_session(prompt(backend), GREEDY)
    got: list[int] = []
    with pytest.raises(BackendError):
        for token in session.stream(50):
            got.append(token)
    assert backend.decode(got) in ("", " partial")  # the held-back id is never yielded


@pytest.mark.parametrize(
    "action",
    [
        ("raw", "text/event-stream", "data: {not json\n\n"),
        ("raw", "text/event-stream", 'data: {"choices": [{"text": 5}]}\n\n'),
        ("raw", "text/event-stream", 'data: {"foo": 1}\n\n'),
        ("raw", "application/json", "<html>garbage</html>"),
        ("raw", "text/event-stream", "data: [DONE]\n\n"),
    ],
    ids=["bad-json", "bad-text-type", "no-choices", "not-sse", "empty-stream"],
)
def test_garbage_is_backend_error(
    server: FakeServer, make: Callable[..., RemoteBackend], action: Action
) -> None:
    server.default = action
    backend = make()
    with pytest.raises(BackendError):
        list(backend.new_session(prompt(backend), GREEDY).stream(5))


def test_connection_refused(tiny_tokenizer: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RemoteBackend(
        f"http://127.0.0.1:{port}/v1",
        "fake",
        tokenizer=tiny_tokenizer,
        timeout=NO_TIMEOUT,
        max_retries=0,
    )
    with pytest.raises(BackendError, match="cannot connect"):
        list(backend.new_session(prompt(backend), GREEDY).stream(5))


# ---------------------------------------------------------------- backend surface
def test_fingerprint_matches_transformers_definition(
    tiny_tokenizer: Any, server: FakeServer
) -> None:
    from langchain_spthink.backends.transformers import TransformersBackend

    class _Cfg:
        max_position_embeddings = 2048

        def get_text_config(self, decoder: bool = True) -> _Cfg:
            return self

    class _Model:
        config = _Cfg()

    local = TransformersBackend(_Model(), tiny_tokenizer, name="local", eos_ids=frozenset({2}))  # type: ignore[arg-type]
    remote = RemoteBackend(server.url, "m", tokenizer=local, max_retries=0)
    assert remote.tokenizer_fingerprint == local.tokenizer_fingerprint
    assert remote.eos_ids == frozenset({2}) and remote.context_length == 2048
    assert remote.chat_prompt_ids([{"role": "user", "content": "x"}]) == local.chat_prompt_ids(
        [{"role": "user", "content": "x"}]
    )


def test_url_spec(server: FakeServer, tiny_tokenizer: Any, tiny_tokenizer_dir: Path) -> None:
    spec = (
        f"openai+http://127.0.0.1:{server.port}/v1?model=served"
        f"&tokenizer={quote(str(tiny_tokenizer_dir))}"
        "&timeout=3&max_retries=0&context_length=1024&name=big"
    )
    backend = load_backend(spec)
    assert isinstance(backend, RemoteBackend)
    assert backend.encode("Hello 日本") == tiny_tokenizer.encode(
        "Hello 日本", add_special_tokens=False
    )
    assert backend.base_url == server.url and backend.model == "served" and backend.name == "big"
    assert backend.timeout == 3.0 and backend.max_retries == 0 and backend.context_length == 1024
    with pytest.raises(ModelLoadError, match="unknown option"):
        load_backend(f"openai+http://127.0.0.1:{server.port}/v1?model=m&api_key=secret")
    with pytest.raises(ModelLoadError, match="model=NAME"):
        load_backend(f"openai+http://127.0.0.1:{server.port}/v1?tokenizer=x")


# ---------------------------------------------------------------- engine with a remote large model
SCRIPT = ["First step.\n\n", "Final answer 4."]


def run_engine(large: RemoteBackend, **cfg: Any) -> tuple[list[Any], FinishEvent, ScriptedBackend]:
    small = ScriptedBackend(SCRIPT, name="small")
    config = SpeculativeThinkingConfig(
        **{"begin": True, "not_reasoning": True, "begin_tokens": 4, "draft_tokens": 4, **cfg}
    )
    engine = SpeculativeEngine(small, large, config)
    request = Request(small.encode("Q: go"), large.encode("Q: go"), 100, GREEDY)
    events = list(engine.generate(request))
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == finish.text
    return events, finish, small


def test_engine_falls_back_when_the_server_fails(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.default = ("status", 500)
    events, finish, _ = run_engine(make())
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    assert len(fallbacks) == 1 and fallbacks[0].position == 0
    assert finish.text == "".join(SCRIPT) and finish.stop_reason == "eos"
    assert finish.mode == "small"


def test_engine_falls_back_mid_request(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [("stream", [" Indeed"], "length", None)]
    server.default = ("cut", [" half"])
    events, finish, _ = run_engine(make())
    fallbacks = [e for e in events if isinstance(e, FallbackEvent)]
    delegations = [e for e in events if isinstance(e, DelegationEvent)]
    assert len(fallbacks) == 1 and [d.kind for d in delegations] == ["begin"]
    assert finish.text == " Indeed step.\n\nFinal answer 4." and finish.stop_reason == "eos"
    assert server.requests[1]["prompt"].endswith("Q: go Indeed step.\n\n")


def test_engine_delegates_to_the_remote_model(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [
        ("stream", [" Sure"], "length", None),
        ("stream", ["Fin", "al answer 4."], "stop", None),
    ]
    events, finish, _ = run_engine(make(), draft_tokens=8)
    assert not [e for e in events if isinstance(e, FallbackEvent)]
    kinds = [e.kind for e in events if isinstance(e, DelegationEvent)]
    assert kinds == ["begin", "reflection"]
    assert finish.text == " Sure step.\n\nFinal answer 4." and finish.stop_reason == "eos"
    assert finish.large.kept_tokens > 0 and finish.mode == "speculative"


def test_engine_large_mode_raises_typed_error(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.default = ("status", 502)
    large = make()
    engine = SpeculativeEngine(None, large)
    ids = large.encode("Q: go")
    with pytest.raises(LargeModelError, match="HTTP 502"):
        list(engine.generate(Request(ids, ids, 10, GREEDY, mode="large")))


def test_concurrent_drafts_same_output_and_time_saved(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.default = ("slow", [" Let", " me", " see", ".\n\n"])
    script = [
        "Step one is fine.\n\n",
        "Wait, maybe not.\n\n",
        "Then the sum.\n\n",
        "We add two and two.\n\n",
        "Yes the answer is 4.",
    ]
    config = SpeculativeThinkingConfig(draft_tokens=6, verify_tokens=0)
    large = make()
    results = []
    with ThreadPoolExecutor(2) as pool:
        for executor in (None, pool):
            small = ScriptedBackend(script, name="small", on_token=lambda: time.sleep(0.03))
            engine = SpeculativeEngine(small, large, config, executor=executor)
            request = Request(small.encode("Q: go"), large.encode("Q: go"), 200, GREEDY)
            events = list(engine.generate(request))
            fin = events[-1]
            assert isinstance(fin, FinishEvent)
            kinds = [(e.kind, e.kept) for e in events if isinstance(e, DelegationEvent)]
            results.append((fin, kinds))
    (seq, seq_kinds), (conc, conc_kinds) = results
    assert conc.text == seq.text and conc_kinds == seq_kinds and seq_kinds
    assert conc.extra["concurrent_steps"] >= len(conc_kinds)
    assert conc.extra["concurrent_steps_discarded"] >= 1  # neutral drafts discard their step
    # A step saves draft + large - elapsed, i.e. the draft's time minus the delay before the worker
    # thread starts the large step (both sleep, so overlap): a draft sleeps >= 6 x 0.03 s, and a
    # thread starts within milliseconds even on a CPU loaded 10x, so some time is saved.
    assert conc.extra["concurrent_seconds_saved"] > 0


def test_reseed_sends_the_new_seed_with_the_next_request(
    server: FakeServer, make: Callable[..., RemoteBackend]
) -> None:
    server.actions = [("stream", ["a"], "length", None), ("stream", ["b"], "length", None)]
    backend = make()
    session = backend.new_session(prompt(backend), SamplingParams(temperature=0.7, seed=5))
    list(session.stream(1))
    session.reseed(77)
    list(session.stream(1))
    assert [r["seed"] for r in server.requests] == [5, 77]
    assert server.requests[1]["temperature"] == 0.7  # only the seed changes
