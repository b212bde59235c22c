"""``spthink serve`` wiring: argument parsing, model building, API key sources, serve()."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink_integrations.openai_server import cli


class FakeContext:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def backend(self, spec: str) -> ScriptedBackend:
        self.loaded.append(spec)
        return ScriptedBackend(["Hi."], name=spec)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spthink")
    add = parser.add_subparsers(dest="command")
    cli.add_serve_parser(add)
    return parser.parse_args(["serve", *argv])


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "serve", lambda model, **kw: calls.append((model, kw)))
    return calls


def test_defaults_bind_loopback(served: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPTHINK_API_KEY", raising=False)
    args = parse([])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.handler is cli.cmd_serve
    ctx = FakeContext()
    assert args.handler(args, ctx) == 0
    model, kw = served[0]
    assert isinstance(model, ChatSpeculativeThinking)
    assert ctx.loaded == [args.small, args.large]
    assert kw["host"] == "127.0.0.1" and kw["api_key"] is None and kw["model_id"] == "spthink"


def test_options_reach_model_and_app(served: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "k123")
    args = parse(
        [
            "--small", "s", "--large", "l", "--mode", "small", "--preset", "reasoning",
            "--temperature", "0", "--max-tokens", "32", "--port", "9001",
            "--api-key-env", "MY_KEY", "--max-tokens-limit", "100", "--max-queue", "2",
            "--max-concurrency", "3", "--max-body-bytes", "5000", "--model-id", "m",
        ]
    )  # fmt: skip
    ctx = FakeContext()
    cli.cmd_serve(args, ctx)
    model, kw = served[0]
    assert ctx.loaded == ["s"]  # mode small: the large model is not loaded
    assert model.mode == "small" and model.preset == "reasoning" and model.max_tokens == 32
    assert kw == {
        "host": "127.0.0.1",
        "port": 9001,
        "log_level": "info",
        "api_key": "k123",
        "model_id": "m",
        "max_body_bytes": 5000,
        "max_tokens_limit": 100,
        "max_concurrency": 3,
        "max_queue": 2,
    }


def test_api_key_sources(served: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPTHINK_API_KEY", "from-env")
    cli.cmd_serve(parse([]), FakeContext())
    assert served[-1][1]["api_key"] == "from-env"
    cli.cmd_serve(parse(["--api-key", "flag"]), FakeContext())
    assert served[-1][1]["api_key"] == "flag"
    monkeypatch.delenv("UNSET_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="UNSET_KEY_VAR"):
        cli.cmd_serve(parse(["--api-key-env", "UNSET_KEY_VAR"]), FakeContext())


def test_main_standalone(served: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--mode", "large", "--port", "8123"]) == 0
    model, kw = served[0]
    assert model.mode == "large" and kw["port"] == 8123
    assert isinstance(model.small_model, str)  # standalone: models load on the first request
    assert cli.main(["--api-key-env", "SURELY_UNSET_VAR_X"]) == 2
    assert "SURELY_UNSET_VAR_X" in capsys.readouterr().err


def test_serve_warns_without_key_off_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(["a"]), large_model=ScriptedBackend(["a"])
    )
    cli.serve(model)
    assert runs[-1]["host"] == "127.0.0.1" and capsys.readouterr().err == ""
    cli.serve(model, host="0.0.0.0", port=1)
    assert "without an API key" in capsys.readouterr().err
    cli.serve(model, host="0.0.0.0", port=1, api_key="secret")
    err = capsys.readouterr().err
    assert err == "" and "secret" not in str(runs[-1])


class RemoteScripted(ScriptedBackend):
    is_remote = True


class PoolScripted(ScriptedBackend):
    max_contexts = 2


class MixedContext(FakeContext):
    """Specs starting with ``remote`` give remote-style backends, ``pool`` llama.cpp-style."""

    def backend(self, spec: str) -> ScriptedBackend:
        self.loaded.append(spec)
        kind = RemoteScripted if spec.startswith("remote") else ScriptedBackend
        kind = PoolScripted if spec.startswith("pool") else kind
        return kind(["Hi."], name=spec)


@pytest.mark.parametrize(
    ("argv", "cores", "expected"),
    [
        (["--small", "remote-s", "--large", "remote-l"], 2, cli.REMOTE_MAX_CONCURRENCY),
        (["--small", "local-s", "--large", "remote-l"], 16, 4),  # 16 cores // 4 threads
        (["--small", "local-s", "--large", "remote-l", "--threads", "1"], 16, 16),
        (["--small", "local-s", "--large", "remote-l", "--threads", "8"], 4, 1),  # at least 1
        (["--small", "local-s", "--large", "pool-l", "--threads", "1"], 16, 2),  # max_contexts
        (["--small", "local-s", "--large", "remote-l", "--mode", "large"], 2, 16),  # only large
        (["--small", "remote-s", "--large", "local-l", "--mode", "small"], 2, 16),
        (["--small", "remote-s", "--large", "remote-l", "--max-concurrency", "3"], 2, 3),
        (["--small", "local-s", "--large", "local-l", "--max-concurrency", "5"], 2, 5),
    ],
)
def test_max_concurrency_default_fits_the_backends(
    served: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    cores: int,
    expected: int,
) -> None:
    from langchain_spthink import threads

    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.delenv("SPTHINK_THREADS", raising=False)
    cli.cmd_serve(parse(argv), MixedContext())
    assert served[-1][1]["max_concurrency"] == expected


def test_max_concurrency_default_from_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_spthink import threads

    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    remote = "openai+http://127.0.0.1:9/v1?model=m"
    assert cli.default_max_concurrency([remote, remote]) == cli.REMOTE_MAX_CONCURRENCY
    assert cli.default_max_concurrency([remote, "gemma3-270m"], threads=2) == 4
    assert cli.default_max_concurrency(["llamacpp:x.gguf"], threads=16) == 1
