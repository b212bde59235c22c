"""The package's layers (docs/DESIGN.md, "Layers"): import contracts, no cycles, light packages.

* ``lint-imports`` checks the contracts of ``[tool.importlinter]`` in ``pyproject.toml``: the
  engine imports no LangChain and none of the chat, cli or eval layers; the backends do not
  import the engine's control loop nor the chat or cli layers; the chat layer imports neither the
  cli nor the eval layer, the tools layer none of chat, cli and eval; nothing in the package
  imports ``langchain_spthink_integrations`` (no exception: ``spthink serve`` comes in through
  the ``spthink.commands`` entry point that distribution registers);
* no module of the package imports another in a cycle, counting every import (also those under
  ``if TYPE_CHECKING:`` and inside functions), except the lazy root package's static-names block;
* every layer's ``__init__`` says what the layer is and what it may import.

That importing the packages loads no torch, transformers or LangChain is checked in
``test_first_impression.py``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import langchain_spthink

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(langchain_spthink.__file__).resolve().parent
LAYERS = ("engine", "backends", "chat", "tools", "eval", "cli")


def test_the_package_under_test_is_this_checkout() -> None:
    assert PACKAGE == ROOT / "langchain_spthink", PACKAGE


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    command = (
        [str(lint_imports)] if lint_imports.exists() else [sys.executable, "-m", "importlinter"]
    )
    # lint-imports puts its working directory first on sys.path: it analyses this checkout
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [*command, "--no-cache", "--no-logo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 5 kept, 0 broken." in done.stdout, done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c", "d"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph) == [["a", "b", "c"]]
    graph.remove_import(importer="c", imported="a")
    assert _cycles(graph) == []


def test_no_import_cycles_between_modules() -> None:
    root = "langchain_spthink"
    # The root package imports its public names lazily (PEP 562): at run time it imports nothing
    # of the package; its `if TYPE_CHECKING:` block of static names is for type checkers only.
    runtime = grimp.build_graph(root, exclude_type_checking_imports=True, cache_dir=None)
    assert runtime.find_modules_directly_imported_by(root) == set()
    graph = grimp.build_graph(root, include_external_packages=False, cache_dir=None)
    for imported in graph.find_modules_directly_imported_by(root):
        graph.remove_import(importer=root, imported=imported)
    assert _cycles(graph) == []


@pytest.mark.parametrize("layer", LAYERS)
def test_every_layer_says_what_it_may_import(layer: str) -> None:
    init = PACKAGE / layer / "__init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    assert docstring.startswith(f"The {layer} layer: "), docstring.splitlines()[:1]
    assert "May import:" in docstring, docstring


def test_the_layers_are_the_packages() -> None:
    found = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert found == set(LAYERS), sorted(found)
