"""``spthink`` as a user runs it: a real subprocess on the embedded model pair, offline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.embedded

QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day?"
)
SUMMARY = re.compile(
    r"^-- small smollm2-135m-instruct: (?P<small>\d+) tok \| "
    r"large gemma3-270m: (?P<large>\d+) tok \([\d.]+% of output\) \| "
    r"delegations: (?P<d>\d+) \((?P<kinds>[^)]*)\) \| (?P<out>\d+) tok in [\d.]+ s, [\d.]+ tok/s"
    r" \| stop: (?P<stop>\w+)$",
    re.MULTILINE,
)


def spthink(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("spthink")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "langchain_spthink.cli"]
    env = {**os.environ, "NO_COLOR": "1", **extra_env}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=600, env=env, stdin=None
    )


def test_run_on_the_embedded_pair() -> None:
    proc = spthink(
        "run",
        QUESTION,
        "--temperature",
        "0",
        "--max-tokens",
        "40",
        "--preset",
        "instruct",
        "--set",
        "begin_tokens=8",
        "--draft-tokens",
        "8",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    match = SUMMARY.search(proc.stdout)
    assert match, proc.stdout
    assert match["stop"] in {"length", "eos"}
    assert int(match["out"]) == int(match["small"]) + int(match["large"]) <= 40
    assert int(match["d"]) >= 1 and "begin 1" in match["kinds"]
    # The large model's opening is marked on a non-terminal stdout.
    assert proc.stdout.startswith("[[large: ")
    answer = proc.stdout[: match.start()]
    assert answer.count("[[large: ") == answer.count("]]") >= 1


def test_json_small_only_offline_and_models_list() -> None:
    # Any attempt to reach a model hub would go to a dead local proxy and fail.
    dead = "http://127.0.0.1:9"
    proxies = {"HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    proc = spthink(
        "run", "What is 2+3?", "--mode", "small", "--json", "--max-tokens", "12", **proxies
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    finish = lines[-1]
    assert finish["type"] == "finish" and finish["mode"] == "small"
    assert 0 < finish["usage"]["output_tokens"] <= 12
    assert finish["text"] == "".join(x["text"] for x in lines if x["type"] == "text")
    listing = spthink("models", "list")
    assert listing.returncode == 0
    assert "smollm2-135m-instruct (default small)" in listing.stdout
    assert "gemma3-270m (default large)" in listing.stdout


def test_unknown_model_fails_cleanly() -> None:
    proc = spthink("run", "hi", "--small", "no-such-model-alias", "--mode", "small")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("spthink: error: ")
    assert "Traceback" not in proc.stderr
