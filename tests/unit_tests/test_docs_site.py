"""The documentation site builds cleanly, and the README stays a short front page that links to it.

``make docs`` runs ``mkdocs build --strict``: every warning (a broken link or anchor, a page left
out of the navigation, a name the API reference cannot resolve) fails it. The build must use
static analysis only (griffe): it never imports ``langchain_spthink``, torch or the embedded
models, which the probe below checks in the build's own interpreter.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_BYTES = 15_500

# Modules the docs build must not import (static analysis only).
NOT_IMPORTED = (
    "langchain_spthink",
    "langchain_spthink_integrations",
    "torch",
    "transformers",
    "llama_cpp",
)

# `python -m mkdocs ARGS` in a fresh interpreter that reports, on exit, which of NOT_IMPORTED it
# loaded (atexit also runs when mkdocs exits through sys.exit).
PROBE = """
import atexit, json, runpy, sys
names = {not_imported!r}
def report():
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(names))
    print("LOADED=" + json.dumps(loaded), flush=True)
atexit.register(report)
sys.argv = ["mkdocs", *{args!r}]
runpy.run_module("mkdocs", run_name="__main__", alter_sys=True)
"""

LINK = re.compile(r"\]\(([^)\s]+)\)")


def _nav_files(nav: Any) -> list[str]:
    """Every page file named in a mkdocs ``nav`` (nested sections included)."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    raise AssertionError(f"unexpected nav entry {nav!r}")


def _config() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _anchors(markdown: str) -> set[str]:
    """The heading anchors of a Markdown page, as python-markdown's toc (and GitHub) make them."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            anchors.add(slugify(m.group(1).replace("`", "").strip(), "-"))
    return anchors


def test_mkdocs_build_is_strict_clean_and_static(tmp_path: Path) -> None:
    args = ["build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    args += ["--site-dir", str(tmp_path / "site")]
    code = PROBE.format(not_imported=NOT_IMPORTED, args=args)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    # a missing mkdocs means the docs extra is not installed: `make setup` installs it
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = [line for line in done.stdout.splitlines() if line.startswith("LOADED=")]
    assert json.loads(report.removeprefix("LOADED=")) == [], "the docs build imported the package"
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ChatSpeculativeThinking", "SpeculativeEngine", "SpeculativeThinkingConfig"):
        assert f'id="langchain_spthink.{name}"' in api, name


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    nav = _nav_files(_config()["nav"])
    assert len(nav) == len(set(nav)), nav
    for page in nav:
        assert (DOCS / page).is_file(), page
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == set(nav), sorted(pages ^ set(nav))
    assert {"index.md", "ALGORITHM.md", "api.md"} <= set(nav)


def test_api_reference_names_only_public_top_level_names() -> None:
    import langchain_spthink

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    named = re.findall(r"^::: (\S+)$", text, re.MULTILINE)
    assert named, "api.md has no mkdocstrings directives"
    public = {n for n in langchain_spthink.__all__ if n != "__version__"}
    assert {n.removeprefix("langchain_spthink.") for n in named} == public
    assert all(n.count(".") == 1 for n in named), "API reference must not name submodule paths"


def test_readme_is_short_starts_with_setup_and_test_and_links_every_page() -> None:
    raw = README.read_bytes()
    assert len(raw) <= README_MAX_BYTES, f"README.md: {len(raw)} bytes, at most {README_MAX_BYTES}"
    text = raw.decode("utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# "), lines[0]
    # the first thing after the title is the code block with the two commands
    body = [line for line in lines[1:] if line.strip()]
    assert body[0] == "```bash", body[:3]
    assert body[1].startswith("make setup") and body[2].startswith("make test"), body[:3]
    top_pages = sorted(p for p in _nav_files(_config()["nav"]) if "/" not in p)
    links = LINK.findall(text)
    for page in top_pages:
        assert any(link.split("#")[0] == f"docs/{page}" for link in links), f"no link to {page}"


def test_readme_and_docs_links_resolve() -> None:
    """Relative links of the README (into docs/, anchors included) point at what exists."""
    text = README.read_text(encoding="utf-8")
    for link in LINK.findall(text):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), link
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text(encoding="utf-8")), link
