"""What a newcomer meets first: lazy imports, a strict CLI, notes on their own lines, threads."""

from __future__ import annotations

import argparse
import ast
import io
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import langchain_spthink
from langchain_spthink import threads as threads_mod
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.cli.main import build_parser, run_cli
from langchain_spthink.engine.sampling import SamplingParams

HEAVY = ("torch", "transformers", "langchain_core", "llama_cpp", "numpy")


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by ``code`` in a fresh interpreter."""
    report = "import sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = f"{code}\n{report}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import langchain_spthink",
        "from langchain_spthink.engine import config, cues, events, sampling",
        "import langchain_spthink.engine, langchain_spthink.backends, langchain_spthink.chat, "
        "langchain_spthink.tools, langchain_spthink.cli, langchain_spthink.eval",
        "import contextlib\nfrom langchain_spthink.cli import main\n"
        "with contextlib.suppress(SystemExit):\n    main(['--help'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['--help'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['run', '--help'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['eval', '--help'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['serve', '--help'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['run', 'q', '--max-token', '3'])",
        "from langchain_spthink.cli.main import run_cli; run_cli(['config'])",
    ],
)
def test_import_and_help_load_no_heavy_runtime(code: str) -> None:
    loaded = _modules_after(code)
    assert "langchain_spthink" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_lazy_exports_resolve_to_their_modules() -> None:
    from langchain_spthink.chat.model import ChatSpeculativeThinking
    from langchain_spthink.engine.api import SpeculativeEngine

    assert langchain_spthink.ChatSpeculativeThinking is ChatSpeculativeThinking
    assert langchain_spthink.SpeculativeEngine is SpeculativeEngine
    for name in langchain_spthink.__all__:
        assert getattr(langchain_spthink, name) is not None
    assert set(langchain_spthink.__all__) <= set(dir(langchain_spthink))
    assert sorted(langchain_spthink.__all__) == sorted([*langchain_spthink._EXPORTS, "__version__"])
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = langchain_spthink.Nope  # type: ignore[attr-defined]


def test_static_names_match_the_lazy_table() -> None:
    """The ``if TYPE_CHECKING:`` block (type checkers, the API reference) mirrors ``_EXPORTS``."""
    tree = ast.parse(Path(langchain_spthink.__file__).read_text(encoding="utf-8"))
    static: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom), ast.unparse(statement)
                static.update({alias.name: statement.module for alias in statement.names})
    assert static == langchain_spthink._EXPORTS


# ------------------------------------------------------------------------------ strict CLI
def _run(*argv: str, table: Any = None, same_stream: bool = False) -> tuple[int, str, str]:
    out = io.StringIO()
    err = out if same_stream else io.StringIO()
    code = run_cli(list(argv), backends=table or {}, stdout=out, stderr=err)
    return code, out.getvalue(), "" if same_stream else err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "q", "--max-token", "20"],
        ["run", "q", "--temp", "0"],
        ["eval", "--dataset", "gsm8k", "--max-tok", "20"],
        ["serve", "--max-conc", "2"],
    ],
)
def test_abbreviated_options_are_errors(argv: list[str]) -> None:
    code, _, err = _run(*argv)
    assert code == 2
    assert "unrecognized arguments" in err and argv[-2] in err


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def test_every_option_has_help_that_shows_its_default() -> None:
    commands = _subparsers(build_parser())
    assert {"run", "eval", "report", "serve", "config", "models prepare"} <= set(commands)
    missing = []
    for name, parser in commands.items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            if not action.help:
                missing.append(f"{name} {flag}: no help")
                continue
            shown = parser._get_formatter()._expand_help(action).lower()
            # An option that takes a value says its default (or that it is required); a
            # concrete default must appear as the value it is.
            if action.nargs != 0 and not action.required and "default" not in shown:
                missing.append(f"{name} {flag}: default not shown")
            if action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
                if str(action.default).lower() not in shown.replace("_", ""):
                    missing.append(f"{name} {flag}: default {action.default!r} not shown")
    assert not missing, missing


def test_unknown_set_key_lists_the_valid_keys() -> None:
    code, _, err = _run("run", "q", "--set", "foo=1", "--small", "s", "--large", "L")
    assert code == 1
    assert "foo" in err and "spthink config" in err
    for key in ("draft_tokens", "verify_tokens", "recap_prompt", "choose_large"):
        assert key in err


# The small model's second step is a backtracking step: one reflection delegation.
SMALL = ["Two plus two.\n\n", "Wait, recount it.\n\n", "So 4.\n\n"]
LARGE = ["Let us add.\n\n", "Hmm: 2+2 is 4.\n\n", "Done: 4.\n\n"]


def test_verbose_notes_sit_on_their_own_lines() -> None:
    table = {"s": ScriptedBackend(SMALL, name="s"), "L": ScriptedBackend(LARGE, name="L")}
    args = ["run", "q", "--small", "s", "--large", "L", "--preset", "reasoning", "--color", "never"]
    code, shared, _ = _run(*args, "-v", table=table, same_stream=True)
    assert code == 0
    notes = [line for line in shared.splitlines() if "[delegation " in line]
    assert notes, shared
    assert all(line.startswith("[delegation ") for line in notes), notes
    # Without -v the same run writes the same answer (notes only add lines, never text).
    table = {"s": ScriptedBackend(SMALL, name="s"), "L": ScriptedBackend(LARGE, name="L")}
    code, plain, _ = _run(*args, table=table)
    body = [ln for ln in shared.splitlines() if not ln.startswith(("[delegation ", "-- "))]
    assert "".join(body) == "".join(ln for ln in plain.splitlines() if not ln.startswith("-- "))


# ------------------------------------------------------------------------------ threads
def test_thread_count_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads_mod.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads_mod, "available_cores", lambda: 2)
    assert threads_mod.resolve_threads(None) == 1
    monkeypatch.setattr(threads_mod, "available_cores", lambda: 16)
    assert threads_mod.resolve_threads(None) == 4
    monkeypatch.setattr(threads_mod, "available_cores", lambda: 1)
    assert threads_mod.resolve_threads(None) == 1
    assert threads_mod.resolve_threads(3) == 3
    monkeypatch.setenv(threads_mod.THREADS_ENV, "2")
    assert threads_mod.resolve_threads(None) == 2
    assert threads_mod.resolve_threads(5) == 5  # an explicit value wins over the environment
    for bad in ("0", "x", "-1"):
        monkeypatch.setenv(threads_mod.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=threads_mod.THREADS_ENV):
            threads_mod.resolve_threads(None)
    for value in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="threads must be"):
            threads_mod.resolve_threads(value)  # type: ignore[arg-type]


def test_forwards_run_with_the_backends_threads_in_any_thread(tiny_pair: Any) -> None:
    from langchain_spthink.backends.transformers import TransformersBackend
    from langchain_spthink.engine.sampling import SamplingParams

    small = tiny_pair[0]
    backend = TransformersBackend(small.model, small.tokenizer, name="t", threads=1)
    seen: dict[str, int] = {}

    def work() -> None:
        torch.set_num_threads(2)  # whatever the thread had before
        session = backend.new_session([1, 2, 3], SamplingParams(temperature=0.0))
        session.next_logits()
        seen["after"] = torch.get_num_threads()

    before = torch.get_num_threads()
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(before)
    assert seen == {"after": 1}


def test_threads_reach_the_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_spthink.backends import loading
    from langchain_spthink.chat.model import ChatSpeculativeThinking

    calls: list[tuple[str, Any]] = []

    def fake(spec: str, device: Any, trust: bool, threads: Any) -> ScriptedBackend:
        calls.append((spec, threads))
        return ScriptedBackend(["ok"], name=spec)

    monkeypatch.setattr(loading, "_load_backend_uncached", fake)
    ChatSpeculativeThinking(small_model="th-a", mode="small", threads=1).invoke("hi")
    ChatSpeculativeThinking(small_model="th-a", mode="small", threads=2).invoke("hi")
    ChatSpeculativeThinking(small_model="th-a", mode="small", threads=1).invoke("hi")
    assert calls == [("th-a", 1), ("th-a", 2)]  # one load per (spec, threads)
    loading.clear_backend_cache()
    with pytest.raises(Exception, match="threads"):
        ChatSpeculativeThinking(small_model="x", threads=0)
    assert build_parser().parse_args(["run", "q", "--threads", "2"]).threads == 2
    assert build_parser().parse_args(["serve", "--threads", "1"]).threads == 1


# ------------------------------------------------------------------------------ server log
def test_the_server_logs_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from langchain_spthink.chat.model import ChatSpeculativeThinking
    from langchain_spthink_integrations.openai_server import create_app

    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(SMALL, name="s"),
        large_model=ScriptedBackend(LARGE, name="L"),
        preset="reasoning",
        temperature=0,
        max_tokens=64,
    )
    body = {"model": "spthink", "messages": [{"role": "user", "content": "2+2?"}]}
    with caplog.at_level("INFO", logger="spthink.server"), TestClient(create_app(model)) as http:
        plain = http.post("/v1/chat/completions", json=body).json()
        streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
        assert streamed.status_code == 200
        assert http.get("/health").status_code == 200
        assert http.post("/v1/chat/completions", json={"model": "spthink"}).status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "spthink.server"]
    assert len(lines) == 4, lines
    tokens = plain["usage"]["completion_tokens"]
    delegations = len(plain["spthink"]["delegations"])
    assert delegations == 1  # the backtracking step ("Wait, ...") only
    for line in lines[:2]:
        assert line.startswith("POST /v1/chat/completions 200 ")
        assert f"tokens={tokens} delegations={delegations} seconds=" in line
    assert lines[2].startswith("GET /health 200 tokens=- delegations=-")
    assert lines[3].startswith("POST /v1/chat/completions 400 tokens=-")
    assert not any("Authorization" in line or "2+2" in line for line in lines)


# ------------------------------------------------------------------------------ begin cap
@pytest.mark.parametrize(("max_tokens", "opening"), [(20, 10), (9, 4), (1, 0), (400, 100)])
def test_the_opening_never_takes_the_whole_budget(max_tokens: int, opening: int) -> None:
    from langchain_spthink import Request, SpeculativeEngine, paper_instruct
    from langchain_spthink.engine.events import DelegationEvent, FinishEvent

    words = " ".join(f"w{i}" for i in range(500))
    small = ScriptedBackend([words], name="s")
    large = ScriptedBackend([words.upper()], name="L")
    prompt = small.encode("Q?")
    events = list(
        SpeculativeEngine(small, large, paper_instruct()).generate(
            Request(prompt, prompt, max_tokens, SamplingParams(temperature=0.0))
        )
    )
    begins = [e for e in events if isinstance(e, DelegationEvent) and e.kind == "begin"]
    finish = events[-1]
    assert isinstance(finish, FinishEvent)
    # paper_instruct: begin_tokens = 100, capped at max_tokens // 2 (hand-computed opening)
    assert [e.large_tokens for e in begins] == ([opening] if opening else [])
    assert finish.large.kept_tokens == opening
    assert finish.small.kept_tokens == max_tokens - opening


def test_help_goes_to_the_given_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run("run", "--help")
    assert code == 0 and out.startswith("usage: spthink run") and "--threads" in out
    assert capsys.readouterr().out == ""
