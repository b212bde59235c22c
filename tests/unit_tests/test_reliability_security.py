"""Security defaults: no remote code, loopback servers, no secrets in logs or reprs, keys from the
environment, bounded requests.

Also checked elsewhere: ``test_server_cli.py`` (``spthink serve`` binds 127.0.0.1 by default,
warns when binding another interface without a key, key sources: ``SPTHINK_API_KEY`` /
``--api-key-env`` / ``--api-key``), ``test_server.py::test_api_key_required_when_set`` (401 bodies
and ``/health`` never show the key), ``test_server.py::test_oversize_body_413`` (a set limit,
declared and chunked bodies) and ``test_remote.py::test_url_spec`` (keys are refused in URLs).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from langchain_spthink import models
from langchain_spthink.backends import loading
from langchain_spthink.backends.remote import RemoteBackend, load_tokenizer
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.chat import model as chat_model
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink.cli.main import build_parser
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import ModelLoadError
from langchain_spthink_integrations.openai_server import cli as serve_cli
from langchain_spthink_integrations.openai_server import create_app

SECRET = "sk-test-5f1c0ffee-DO-NOT-LOG"
OTHER = "sk-wrong-9a8b7c6d-DO-NOT-LOG"


# ------------------------------------------------------------------------ trust_remote_code
def test_trust_remote_code_defaults_to_false_everywhere() -> None:
    assert ChatSpeculativeThinking.model_fields["trust_remote_code"].default is False
    for fn in (loading.load_backend, models.load_model, TransformersBackend.load):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False


@pytest.mark.parametrize("enabled", [False, True])
def test_trust_remote_code_reaches_transformers_only_when_enabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """A local model directory, loaded through the chat model: the flag transformers gets."""
    (tmp_path / "config.json").write_text("{}")
    seen: list[dict[str, Any]] = []

    def pretrained(source: Any, gguf_file: Any, dtype: Any, **kw: Any) -> Any:
        seen.append(kw)
        raise OSError("not a real model")

    monkeypatch.setattr(models, "_pretrained", pretrained)
    models.clear_model_cache()
    chat_model.clear_backend_cache()
    kwargs = {"trust_remote_code": True} if enabled else {}
    model = ChatSpeculativeThinking(small_model=str(tmp_path), mode="small", **kwargs)
    with pytest.raises(ModelLoadError):
        model.invoke("hi")
    assert seen and all(kw["trust_remote_code"] is enabled for kw in seen)
    assert all(kw["local_files_only"] is True for kw in seen)  # a local path never goes online
    chat_model.clear_backend_cache()


def test_remote_backend_tokenizer_never_trusts_remote_code(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    seen: list[dict[str, Any]] = []

    def from_pretrained(*args: Any, **kw: Any) -> Any:
        seen.append(kw)
        raise OSError("offline")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(ModelLoadError):
        load_tokenizer("some-org/some-model")
    assert seen and not any(kw.get("trust_remote_code") for kw in seen)


# -------------------------------------------------------------------------------- loopback
def test_servers_bind_loopback_unless_told() -> None:
    assert inspect.signature(serve_cli.serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve"])  # the `spthink serve` command
    assert args.host == "127.0.0.1"
    assert serve_cli._is_loopback("127.0.0.1") and serve_cli._is_loopback("::1")
    assert not serve_cli._is_loopback("0.0.0.0")


# ---------------------------------------------------------------- keys: env, logs, reprs
class HeaderServer:
    """A loopback ``/v1/completions`` server that records request headers.

    It streams ``text`` as one SSE chunk, or answers ``status`` with an error body.
    """

    def __init__(self, text: str = " four", status: int = 200) -> None:
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                if status != 200:
                    body = json.dumps({"error": {"message": "nope", "code": status}}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                chunk = {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
                data = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG (openai, httpx, httpcore, ours), captured."""
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "langchain_spthink", "spthink.server"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def ask(backend: RemoteBackend) -> str:
    ids = backend.encode("What is 2 + 2?")
    session = backend.new_session(ids, SamplingParams(temperature=0.0))
    return backend.decode(list(session.stream(8)))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SPTHINK_REMOTE_API_KEY": SECRET, "OPENAI_API_KEY": OTHER}, SECRET),
        ({"OPENAI_API_KEY": SECRET}, SECRET),
        ({}, "EMPTY"),
    ],
)
def test_remote_api_key_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tiny_tokenizer: Any, env: dict[str, str], expected: str
) -> None:
    for name in ("SPTHINK_REMOTE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    server = HeaderServer()
    try:
        backend = RemoteBackend(server.url, "m", tokenizer=tiny_tokenizer, timeout=5, max_retries=0)
        assert ask(backend).strip() == "four"
        assert server.headers[0]["authorization"] == f"Bearer {expected}"
    finally:
        server.close()


def test_url_spec_reads_the_key_from_the_named_variable(
    monkeypatch: pytest.MonkeyPatch, tiny_tokenizer_dir: Path
) -> None:
    monkeypatch.setenv("MY_GPU_BOX_KEY", SECRET)
    monkeypatch.setenv("SPTHINK_REMOTE_API_KEY", OTHER)
    server = HeaderServer()
    try:
        spec = (
            f"openai+{server.url}?model=m&tokenizer={quote(str(tiny_tokenizer_dir))}"
            "&api_key_env=MY_GPU_BOX_KEY&max_retries=0"
        )
        backend = loading.load_backend(spec)
        assert ask(backend).strip() == "four"  # type: ignore[arg-type]
        assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
    finally:
        server.close()
        chat_model.clear_backend_cache()


@pytest.mark.parametrize("status", [200, 401, 500])
def test_remote_key_never_in_logs_reprs_errors_or_metadata(
    monkeypatch: pytest.MonkeyPatch,
    tiny_tokenizer: Any,
    all_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    status: int,
) -> None:
    monkeypatch.setenv("SPTHINK_REMOTE_API_KEY", SECRET)
    server = HeaderServer(status=status)
    try:
        large = RemoteBackend(server.url, "m", tokenizer=tiny_tokenizer, timeout=5, max_retries=1)
        small = ScriptedBackend(["Two plus two.\n\n", "Wait, it is four."], name="s")
        model = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
        reply = model.invoke("What is 2 + 2?")
        assert server.headers and server.headers[0]["authorization"] == f"Bearer {SECRET}"
        if status != 200:  # the large model failed: one fallback, its reason has no key
            assert len(reply.response_metadata["spthink"]["fallbacks"]) == 1
        seen = [
            repr(large),
            str(large),
            repr(model),
            str(model),
            json.dumps(model._identifying_params, default=str),
            json.dumps(reply.response_metadata, default=str),
            repr(reply),
            all_logs.text,
            *capfd.readouterr(),
        ]
        assert all_logs.records  # the HTTP clients did log at DEBUG
        assert not [s for s in seen if SECRET in s]
    finally:
        server.close()


@contextmanager
def serving(app: FastAPI, log_level: str = "warning") -> Iterator[str]:
    """uvicorn on loopback; ``trace`` is its most verbose level (every ASGI message)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def test_server_key_never_logged_even_at_trace_level(
    all_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    script = ["Four.\n\n", "Done."]
    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(script, name="s"),
        large_model=ScriptedBackend(script, name="l"),
        temperature=0,
    )
    body = {"model": "spthink", "messages": [{"role": "user", "content": "2+2?"}]}
    with serving(create_app(model, api_key=SECRET), "trace") as url:
        chat = url + "/v1/chat/completions"
        good = {"Authorization": f"Bearer {SECRET}"}
        assert httpx.post(chat, json=body, headers=good, timeout=20).status_code == 200
        streamed = httpx.post(chat, json={**body, "stream": True}, headers=good, timeout=20)
        assert streamed.status_code == 200
        wrong = httpx.post(chat, json=body, headers={"Authorization": f"Bearer {OTHER}"})
        assert wrong.status_code == 401
        bad = httpx.post(chat, json={**body, "max_tokens": 0}, headers=good, timeout=20)
        assert bad.status_code == 400
        texts = [wrong.text, bad.text, httpx.get(url + "/openapi.json", timeout=20).text]
        texts.append(httpx.get(url + "/health", timeout=20).text)
    logged = all_logs.text + "".join(capfd.readouterr())
    assert "ASGI" in logged  # trace logging did run (every ASGI message)
    for secret in (SECRET, OTHER):
        assert secret not in logged
        assert not [t for t in texts if secret in t]


# ---------------------------------------------------------------------- bounded requests
def test_default_app_bounds_body_size_and_max_tokens() -> None:
    params = inspect.signature(create_app).parameters
    assert params["max_body_bytes"].default == 1_000_000
    assert params["max_tokens_limit"].default == 4096
    args = build_parser().parse_args(["serve"])
    assert args.max_body_bytes == 1_000_000 and args.max_tokens_limit == 4096
    script = ["Four."]
    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(script, name="s"),
        large_model=ScriptedBackend(script, name="l"),
        temperature=0,
    )
    messages = [{"role": "user", "content": "2+2?"}]
    with serving(create_app(model)) as url:
        chat = url + "/v1/chat/completions"
        huge = {"model": "spthink", "messages": [{"role": "user", "content": "x" * 1_000_001}]}
        assert httpx.post(chat, json=huge, timeout=20).status_code == 413
        over = {"model": "spthink", "messages": messages, "max_tokens": 4097}
        assert httpx.post(chat, json=over, timeout=20).status_code == 400
        ok = {"model": "spthink", "messages": messages, "max_tokens": 4096}
        reply = httpx.post(chat, json=ok, timeout=20)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == "Four."
