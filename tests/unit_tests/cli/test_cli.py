"""The ``spthink`` CLI on scripted backends: parsing, rendering, JSON events, errors."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.cli.main import build_parser, run_cli

SUMMARY = re.compile(
    r"^-- small (?P<small>\S+): (?P<st>\d+) tok \| large (?P<large>\S+): (?P<lt>\d+) tok "
    r"\((?P<share>[\d.]+)% of output\) "
    r"(?:\| verified: (?P<passes>\d+) large passes for (?P<gen>\d+) tok"
    r"(?:, (?P<accepted>\d+)% of proposals accepted)? )?"
    r"\| delegations: (?P<d>\d+)(?: \((?P<kinds>[^)]*)\))? \| "
    r"(?P<out>\d+) tok in [\d.]+ s, [\d.]+ tok/s \| stop: (?P<stop>\w+)$"
)

# The small model's second paragraph is a backtracking step (negative cue); the large model
# writes its own versions of every step.
SMALL_SCRIPT = ["Two plus two.\n\n", "Wait, recount it.\n\n", "So 4.\n\n"]
LARGE_SCRIPT = ["Let us add.\n\n", "Hmm: 2+2 is 4.\n\n", "Done: 4.\n\n"]


def backends(**kw: Any) -> dict[str, ScriptedBackend]:
    return {
        "s": ScriptedBackend(SMALL_SCRIPT, name="s", **kw),
        "L": ScriptedBackend(LARGE_SCRIPT, name="L", **kw),
    }


def cli(*argv: str, table: Any = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    base = ["--small", "s", "--large", "L"] if argv and argv[0] == "run" else []
    code = run_cli(
        [*argv, *base],
        backends=backends() if table is None else table,
        stdout=out,
        stderr=err,
    )
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ parsing
def test_parser_defaults() -> None:
    args = build_parser().parse_args(["run", "hi"])
    assert args.command == "run"
    assert args.question == "hi"
    assert args.small == "smollm2-135m-instruct"
    assert args.large == "gemma3-270m"
    assert args.mode == "speculative"
    assert args.preset == "reasoning"  # one default everywhere: ChatSpeculativeThinking()'s
    assert args.max_tokens == 512
    assert args.temperature is None and args.seed is None and args.draft_tokens is None
    assert not args.json


def test_parser_all_run_flags() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "q",
            "--small",
            "a",
            "--large",
            "b",
            "--mode",
            "small",
            "--preset",
            "reasoning",
            "--temperature",
            "0",
            "--top-p",
            "0.9",
            "--top-k",
            "7",
            "--seed",
            "3",
            "--max-tokens",
            "40",
            "--draft-tokens",
            "5",
            "--system",
            "be brief",
            "--set",
            "begin=true",
            "--set",
            'triggers=["\\n"]',
            "--json",
        ]
    )
    assert (args.small, args.large, args.mode, args.preset) == ("a", "b", "small", "reasoning")
    assert (args.temperature, args.top_p, args.top_k, args.seed) == (0.0, 0.9, 7, 3)
    assert (args.max_tokens, args.draft_tokens, args.system) == (40, 5, "be brief")
    assert args.overrides == [("begin", True), ("triggers", ("\n",))]
    assert args.json


def test_models_subcommands_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["models", "list"]).models_command == "list"
    args = parser.parse_args(["models", "prepare", "gemma3-270m"])
    assert args.models_command == "prepare" and args.aliases == ["gemma3-270m"]


# ------------------------------------------------------------------------------ rendering
def test_run_marks_large_segments_and_prints_summary() -> None:
    code, out, err = cli("run", "what is 2+2?", "--preset", "reasoning", "--draft-tokens", "6")
    assert code == 0, err
    # The small draft "Wait, recount it." is negative: the large step replaces it, bracketed.
    assert out.startswith("Two plus two.\n\n[[large: Hmm: 2+2 is 4.\n\n]]So 4.\n\n-- small")
    assert "Wait" not in out
    *_, last = out.rstrip("\n").split("\n")
    match = SUMMARY.match(last)
    assert match, last
    assert match["small"] == "s" and match["large"] == "L"
    assert int(match["d"]) == 1 and match["kinds"] == "reflection 1"
    assert int(match["lt"]) == 6
    assert int(match["out"]) == int(match["st"]) + int(match["lt"])
    assert match["stop"] == "eos"
    # The large step (6 tokens, same tokenizer) verified the small model's proposals: the draft
    # (cut to 5, room for one more) is rejected at "Hmm:", the next proposal (1 token: one more
    # than accepted) at " 2+2"; then the proposals stop (length 0) and the large model writes
    # the other 4 tokens one pass each: 6 passes, 0 of 5+1 proposed tokens accepted.
    assert (match["passes"], match["gen"], match["accepted"]) == ("6", "6", "0")


def test_run_instruct_preset_begins_with_large_and_delegates() -> None:
    code, out, _ = cli(
        "run", "q", "--preset", "instruct", "--draft-tokens", "2", "--set", "begin_tokens=3"
    )
    assert code == 0
    assert out.startswith("[[large: Let us add.]]")
    match = SUMMARY.match(out.rstrip("\n").split("\n")[-1])
    assert match
    kinds = dict(k.split(" ") for k in (match["kinds"] or "").split(", "))
    assert kinds["begin"] == "1" and int(kinds["reflection"]) >= 1


def test_inserted_text_is_marked() -> None:
    # choose_large off and both drafts negative: the small step is kept and counts as negative;
    # at the next boundary a recap is due: the recap prompt is inserted, then the large writes.
    large = ["A.\n\n", "Hold on, 2+2 is 4.\n\n", "B.\n\n", "Recap: all good.\n\n"]
    table = {"s": ScriptedBackend(SMALL_SCRIPT, name="s"), "L": ScriptedBackend(large, name="L")}
    code, out, _ = cli(
        "run",
        "q",
        "--preset",
        "reasoning",
        "--draft-tokens",
        "4",
        "--set",
        "recap_after_negatives=1",
        "--set",
        "choose_large=false",
        "--set",
        "recap_prompt=RECAP:",
        "--max-tokens",
        "30",
        table=table,
    )
    assert code == 0
    # The kept small draft ends in "\n"; the small model's next "\n" completes the boundary,
    # where the recap is due (1 negative step).
    assert "recount it.\n\n[[inserted: RECAP:]][[large: \n\nRecap: all good.\n\n]]" in out
    assert "(recap 1, reflection 1)" in out


def test_color_on_a_terminal() -> None:
    code, out, _ = cli(
        "run", "q", "--preset", "reasoning", "--draft-tokens", "6", "--color", "always"
    )
    assert code == 0
    assert "\x1b[1;36mHmm: 2+2 is 4.\n\n\x1b[0mSo 4." in out
    assert "[[large:" not in out


def test_color_auto_follows_isatty_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    argv = ["run", "q", "--small", "s", "--large", "L", "--preset", "reasoning"]
    assert run_cli(argv, backends=backends(), stdout=out, stderr=io.StringIO()) == 0
    assert "\x1b[1;36m" in out.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    out = Tty()
    assert run_cli(argv, backends=backends(), stdout=out, stderr=io.StringIO()) == 0
    assert "\x1b[" not in out.getvalue() and "[[large: " in out.getvalue()


def test_modes_small_and_large() -> None:
    code, out, _ = cli("run", "q", "--mode", "small")
    assert code == 0
    assert out.startswith("Two plus two.\n\nWait, recount it.")
    assert "large L" not in out and "mode: small" in out
    code, out, _ = cli("run", "q", "--mode", "large")
    assert code == 0
    assert out.startswith("[[large: Let us add.")
    assert "mode: large" in out


def test_mode_small_loads_only_the_small_model() -> None:
    asked: list[str] = []

    def load(spec: str) -> ScriptedBackend:
        asked.append(spec)
        return ScriptedBackend(SMALL_SCRIPT, name=spec)

    assert cli("run", "q", "--mode", "small", table=load)[0] == 0
    assert asked == ["s"]


def test_system_message_and_max_tokens_reach_the_models() -> None:
    table = backends()
    code, out, _ = cli("run", "the question", "--system", "SYS", "--max-tokens", "3", table=table)
    assert code == 0
    assert table["s"].last_prompt == "system: SYS\nuser: the question\nassistant:"
    assert table["L"].last_prompt == table["s"].last_prompt
    match = SUMMARY.match(out.rstrip("\n").split("\n")[-1])
    assert match and match["stop"] == "length" and int(match["out"]) == 3


def test_question_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    table = backends()
    assert cli("run", "-", "--mode", "small", table=table)[0] == 0
    assert "user: from stdin" in table["s"].last_prompt


def test_verbose_describes_delegations_on_stderr() -> None:
    code, _, err = cli("run", "q", "--preset", "reasoning", "--draft-tokens", "6", "-v")
    assert code == 0
    assert "[delegation reflection at 15" in err and "small draft: 'Wait, recount it." in err


# ------------------------------------------------------------------------------ JSON
def test_json_one_object_per_event() -> None:
    code, out, _ = cli("run", "q", "--preset", "reasoning", "--draft-tokens", "6", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    types = {line["type"] for line in lines}
    assert types == {"text", "delegation", "finish"}
    text = "".join(x["text"] for x in lines if x["type"] == "text")
    finish = lines[-1]
    assert finish["type"] == "finish" and finish["text"] == text
    assert {x["author"] for x in lines if x["type"] == "text"} == {"small", "large"}
    (delegation,) = [x for x in lines if x["type"] == "delegation"]
    assert delegation["kind"] == "reflection" and delegation["small_draft"].startswith(
        "Wait, recount it."
    )
    assert delegation["kept"] == "large" and delegation["small_label"] == -1
    usage = finish["usage"]
    assert usage["output_tokens"] == finish["small"]["kept_tokens"] + finish["large"]["kept_tokens"]
    assert usage["input_tokens"] == finish["small"]["prompt_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert finish["delegations_by_kind"] == {"reflection": 1}
    assert finish["stop_reason"] == "eos" and finish["delegations"] == 1
    assert 0 < finish["large_share"] < 1
    assert "[[" not in out and "\x1b" not in out


def test_json_fallback_event() -> None:
    table = {
        "s": ScriptedBackend(SMALL_SCRIPT, name="s"),
        "L": ScriptedBackend(LARGE_SCRIPT, name="L", fail_after=2),
    }
    code, out, err = cli("run", "q", "--json", table=table)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    (fallback,) = [x for x in lines if x["type"] == "fallback"]
    assert fallback["new_mode"] == "small" and "injected" in fallback["reason"]
    assert lines[-1]["mode"] == "small"
    assert "continuing with small" in err


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run", "q", "--small", "nope"], 1, "unknown model 'nope'"),
        (["run", "q", "--temperature", "-1"], 1, "temperature"),
        (["run", "q", "--set", "bogus=1"], 1, "bogus"),
        (["run", "q", "--set", "draft_tokens=0"], 1, "draft_tokens"),
        (["run", "q", "--preset", "other"], 2, "invalid choice"),
        (["run", "q", "--max-tokens", "0"], 2, "positive integer"),
        (["run", "q", "--max-tokens", "x"], 2, "positive integer"),
        (["run", "q", "--set", "novalue"], 2, "KEY=VALUE"),
        (["run", "q", "--mode", "tiny"], 2, "invalid choice"),
        (["run"], 2, "question"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "usage"),
        (["run", "   "], 1, "empty"),
    ],
)
def test_errors_exit_nonzero_without_traceback(argv: list[str], code: int, message: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(argv, backends=backends(), stdout=out, stderr=err) == code
    assert message in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_model_failure_is_one_error_line() -> None:
    def load(spec: str) -> ScriptedBackend:
        raise OSError(f"cannot open {spec}")

    code, _, err = cli("run", "q", table=load)
    assert code == 1
    assert err.strip() == "spthink: error: OSError: cannot open s"


def test_small_model_failure_mid_run_exits_1() -> None:
    table = {
        "s": ScriptedBackend(SMALL_SCRIPT, name="s", fail_after=2),
        "L": ScriptedBackend(LARGE_SCRIPT, name="L"),
    }
    code, _, err = cli("run", "q", "--mode", "small", table=table)
    assert code == 1 and "injected" in err and "Traceback" not in err


def test_help_and_version() -> None:
    out = io.StringIO()
    assert run_cli(["--help"], stdout=out, stderr=io.StringIO()) == 0
    assert run_cli(["--version"], stdout=out, stderr=io.StringIO()) == 0
    assert "spthink 0.1.0" in out.getvalue()


def test_console_script_entry_point_reports_bad_usage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "langchain_spthink.cli", "run", "q", "--mode", "tiny"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------ config
def test_config_shows_defaults_presets_and_overrides() -> None:
    code, out, _ = cli("config")
    assert code == 0
    assert re.search(r"^draft_tokens\s+20$", out, re.MULTILINE)
    assert re.search(r"^begin\s+false$", out, re.MULTILINE)
    code, out, _ = cli("config", "--preset", "instruct", "--set", "draft_tokens=7", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["begin"] is True and data["not_reasoning"] is True and data["draft_tokens"] == 7
    assert cli("config", "--set", "draft_tokens=-1")[0] == 1


def test_docs_config_table_is_generated_from_the_config() -> None:
    from pathlib import Path

    page = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
    code, table, _ = cli("config", "--markdown")
    assert code == 0
    assert table.strip() in page.read_text(encoding="utf-8"), (
        "docs/configuration.md's config table is stale: paste the output of "
        "`spthink config --markdown`"
    )


def test_budget_flags_reach_the_engine_and_the_output() -> None:
    # instruct preset: the large model opens (begin) and writes every step; 3 tokens allowed.
    code, out, err = cli("run", "q", "--preset", "instruct", "--max-large-tokens", "3", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    (budget,) = [x for x in lines if x["type"] == "budget"]
    assert (budget["budget"], budget["limit"], budget["spent"]) == ("max_large_tokens", 3, 3)
    finish = lines[-1]
    assert finish["large"]["generated_tokens"] == 3 and finish["mode"] == "small"
    assert finish["budgets"]["large_exhausted"] is True
    code, out, err = cli("run", "q", "--preset", "instruct", "--max-large-tokens", "3")
    assert "budget spent: max_large_tokens" in out and "max_large_tokens=3 spent" in err


def test_policy_flags_are_validated_and_applied() -> None:
    code, out, _ = cli(
        "run", "q", "--policy", "judge", "--judge-threshold", "0", "--json", "--preset", "reasoning"
    )
    assert code == 0
    # Threshold 0: the judge never delegates (scores are >= 0), so only small text.
    lines = [json.loads(line) for line in out.splitlines()]
    assert not [x for x in lines if x["type"] == "delegation"]
    code, _, err = cli("run", "q", "--judge-threshold", "12")
    assert code != 0 and "judge_threshold" in err
