"""OpenAI-compatible HTTP server for ``ChatSpeculativeThinking`` (``spthink serve``).

* :func:`create_app` — the FastAPI app (``/v1/chat/completions``, ``/v1/models``, ``/health``);
* :func:`serve` — run it with uvicorn (127.0.0.1 by default);
* :func:`main` / :func:`add_serve_parser` / :func:`cmd_serve` — the ``spthink serve`` command.

Names are imported lazily, so registering the CLI subcommand does not import FastAPI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_spthink_integrations.openai_server.app import APIError, ModelSource, create_app
    from langchain_spthink_integrations.openai_server.cli import (
        add_serve_parser,
        cmd_serve,
        main,
        serve,
    )

__all__ = [
    "APIError",
    "ModelSource",
    "add_serve_parser",
    "cmd_serve",
    "create_app",
    "main",
    "serve",
]

_WHERE = {
    "APIError": "app",
    "ModelSource": "app",
    "create_app": "app",
    "add_serve_parser": "cli",
    "cmd_serve": "cli",
    "main": "cli",
    "serve": "cli",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(
            f"langchain_spthink_integrations.openai_server.{_WHERE[name]}"
        )
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
