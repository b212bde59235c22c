"""What the wheels install, and how ``spthink`` finds the subcommands of other distributions.

* The root wheel (``langchain-spthink``) installs one top-level package, ``langchain_spthink``,
  and the ``spthink`` console script; the glue in ``integrations/`` is a distribution of its own
  (``langchain-spthink-integrations``) whose wheel installs only ``langchain_spthink_integrations``
  and registers ``spthink serve`` in the ``spthink.commands`` entry-point group. No generic
  top-level name (``integrations``, ``tests``, ...) lands in site-packages.
* ``spthink`` adds the subcommands of that entry-point group; a known one that is not installed
  (or whose entry point fails to load) is still listed, and answers with how to install it.

The wheels are built offline with the build backend's own API (hatchling), in well under a second.
"""

from __future__ import annotations

import configparser
import io
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from hatchling.builders.wheel import WheelBuilder

from langchain_spthink.cli import main as cli_main
from langchain_spthink.cli.main import COMMANDS_GROUP, build_parser, run_cli

ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS = ROOT / "integrations"
SERVE = "langchain_spthink_integrations.openai_server.cli:add_serve_parser"


def _build_wheel(project: Path, directory: Path) -> Path:
    builder = WheelBuilder(str(project))
    (artifact,) = builder.build(directory=str(directory), versions=["standard"])
    return Path(artifact)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    return {"root": _build_wheel(ROOT, out), "integrations": _build_wheel(INTEGRATIONS, out)}


def _top_level(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.split("/")[0] for name in archive.namelist()}


def _entry_points(wheel: Path) -> dict[str, dict[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(name).decode()
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


def test_the_root_wheel_installs_only_langchain_spthink(wheels: dict[str, Path]) -> None:
    assert _top_level(wheels["root"]) == {
        "langchain_spthink",
        "langchain_spthink-0.1.0.dist-info",
    }


def test_the_integrations_wheel_installs_only_its_namespaced_package(
    wheels: dict[str, Path],
) -> None:
    assert _top_level(wheels["integrations"]) == {
        "langchain_spthink_integrations",
        "langchain_spthink_integrations-0.1.0.dist-info",
    }
    with zipfile.ZipFile(wheels["integrations"]) as archive:
        names = archive.namelist()
    for module in ("openai_server/cli.py", "langgraph/agent.py", "math_tools.py", "retrieval.py"):
        assert f"langchain_spthink_integrations/{module}" in names


def test_the_entry_points(wheels: dict[str, Path]) -> None:
    assert _entry_points(wheels["root"]) == {
        "console_scripts": {"spthink": "langchain_spthink.cli:main"}
    }
    assert _entry_points(wheels["integrations"]) == {
        COMMANDS_GROUP: {
            "serve": "langchain_spthink_integrations.openai_server.cli:add_serve_parser"
        }
    }


def test_the_integrations_distribution_depends_on_the_package(wheels: dict[str, Path]) -> None:
    with zipfile.ZipFile(wheels["integrations"]) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(name).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert "langchain-spthink>=0.1.0" in requires
    assert any(r.startswith("fastapi") and "extra == 'server'" in r for r in requires), requires


# ------------------------------------------------------------------ subcommands by entry point
def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, *points: metadata.EntryPoint) -> None:
    def entry_points(**params: Any) -> list[metadata.EntryPoint]:
        assert params == {"group": COMMANDS_GROUP}
        return list(points)

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def _help(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_serve_comes_from_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch, metadata.EntryPoint("serve", SERVE, COMMANDS_GROUP))
    args = build_parser().parse_args(["serve", "--port", "9001"])
    assert args.port == 9001
    assert args.handler.__module__ == "langchain_spthink_integrations.openai_server.cli"


def test_serve_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_points(monkeypatch)
    code, out, _ = _help(["--help"])
    assert code == 0
    assert "serve" in out and "not installed" in out and "./integrations" in out
    for argv in (["serve"], ["serve", "--port", "1", "extra"], ["serve", "--help"]):
        code, out, err = _help(argv)
        assert code == 2, argv
        assert err.strip() == (
            "spthink: error: spthink serve needs langchain-spthink-integrations: from a checkout "
            "of the repository, pip install './integrations[server]'"
        ), err
        assert "Traceback" not in err


def test_a_broken_entry_point_does_not_break_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    def half_added(subparsers: Any) -> None:
        subparsers.add_parser("serve", help="half added")
        raise RuntimeError("boom")

    monkeypatch.setattr(cli_main, "_half_added", half_added, raising=False)
    points = (
        metadata.EntryPoint("serve", "langchain_spthink.cli.main:_half_added", COMMANDS_GROUP),
        metadata.EntryPoint("extra", "no_such_module_here:add", COMMANDS_GROUP),
        metadata.EntryPoint("run", "no_such_module_here:add", COMMANDS_GROUP),  # built-in wins
    )
    _fake_entry_points(monkeypatch, *points)
    code, out, _ = _help(["--help"])
    assert code == 0
    assert out.count("serve") == 1 and "half added" not in out
    assert "extra" in out and "failed to load" in out
    code, _, err = _help(["extra"])
    assert code == 2
    assert "spthink extra: its entry point no_such_module_here:add failed to load" in err
    assert "ModuleNotFoundError" in err
    assert build_parser().parse_args(["run", "q"]).question == "q"


def test_the_real_entry_point_from_the_built_metadata(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    """``spthink serve --help`` through the integrations wheel's metadata (as if installed)."""
    with zipfile.ZipFile(wheels["integrations"]) as archive:
        for name in archive.namelist():
            if ".dist-info/" in name:
                archive.extract(name, tmp_path)
    path = [str(ROOT), str(INTEGRATIONS), str(tmp_path), os.environ.get("PYTHONPATH", "")]
    done = subprocess.run(
        [sys.executable, "-m", "langchain_spthink.cli", "serve", "--help"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--max-concurrency" in done.stdout
