"""``spthink serve``: run the OpenAI-compatible server from the command line.

:func:`add_serve_parser` adds the ``serve`` subcommand to an argparse subparsers object (the
``spthink`` CLI registers it); :func:`cmd_serve` is its handler; :func:`main` runs it standalone
(``python -m langchain_spthink_integrations.openai_server``). :func:`serve` runs an app with
uvicorn.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from langchain_spthink.cli.argtypes import add_model_arguments
from langchain_spthink.errors import ConfigError

if TYPE_CHECKING:
    from langchain_spthink_integrations.openai_server.app import ModelSource

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "REMOTE_MAX_CONCURRENCY",
    "add_serve_parser",
    "build_model",
    "cmd_serve",
    "default_max_concurrency",
    "main",
    "serve",
]

DEFAULT_API_KEY_ENV = "SPTHINK_API_KEY"
"""Environment variable read for the API key unless ``--api-key-env`` names another."""


REMOTE_MAX_CONCURRENCY = 16
"""``--max-concurrency`` default when every model the server runs is remote."""


def _is_remote(model: Any) -> bool:
    if isinstance(model, str):
        from langchain_spthink.backends.loading import REMOTE_PREFIXES

        return model.startswith(REMOTE_PREFIXES)
    return bool(getattr(model, "is_remote", False))


def default_max_concurrency(models: Sequence[Any], threads: int | None = None) -> int:
    """The ``--max-concurrency`` default for the models a server runs.

    Every model remote (a ``RemoteBackend``, or an ``openai+http(s)://`` spec): their steps are
    network-bound, so :data:`REMOTE_MAX_CONCURRENCY`. With a local model: as many requests as
    the cores hold at ``threads`` CPU threads each (``cores // threads``, at least 1), and no more
    than a llama.cpp model's ``max_contexts`` (further sessions would wait for a context).

    Args:
        models: The backends, or model specs, the server's mode uses.
        threads: CPU threads of each local model (``None``: the default policy).
    """
    from langchain_spthink.threads import available_cores, resolve_threads

    if all(_is_remote(m) for m in models):
        return REMOTE_MAX_CONCURRENCY
    limit = max(1, available_cores() // resolve_threads(threads))
    for model in models:
        contexts = getattr(model, "max_contexts", None)
        if isinstance(contexts, int) and not _is_remote(model):
            limit = min(limit, max(1, contexts))
    return limit


class _BackendContext(Protocol):
    """What :func:`cmd_serve` uses of the ``spthink`` CLI's context (optional)."""

    threads: int | None

    def backend(self, spec: str) -> Any: ...


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log_requests(level: str) -> None:
    """Send the server's request lines (logger ``spthink.server``) to stderr, as uvicorn does."""
    logger = logging.getLogger("spthink.server")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel("DEBUG" if level == "trace" else level.upper())


def serve(
    model: ModelSource,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serve ``model`` over the OpenAI API with uvicorn until interrupted.

    Args:
        model: The chat model, or a function building it (see :func:`create_app`).
        host: Interface to bind; loopback by default. Another interface without an API key
            prints a warning.
        port: TCP port.
        log_level: uvicorn's log level (the API key is never logged).
        **app_kwargs: Passed to
            :func:`~langchain_spthink_integrations.openai_server.create_app` (``api_key``,
            ``max_body_bytes``, ``max_tokens_limit``, ``max_queue``, ``max_concurrency``,
            ``model_id``).
    """
    import uvicorn

    from langchain_spthink_integrations.openai_server.app import create_app

    if not _is_loopback(host) and not app_kwargs.get("api_key"):
        print(
            f"spthink serve: warning: listening on {host} without an API key; anyone who can "
            "reach this port can use the models",
            file=sys.stderr,
        )
    app = create_app(model, **app_kwargs)
    _log_requests(log_level)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand (handler: :func:`cmd_serve`) to ``subparsers``.

    Args:
        subparsers: The object ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``serve`` parser.
    """
    try:
        from langchain_spthink.models import DEFAULT_LARGE_MODEL, DEFAULT_SMALL_MODEL

        small_default, large_default = str(DEFAULT_SMALL_MODEL), str(DEFAULT_LARGE_MODEL)
    except ImportError:  # pragma: no cover - broken install
        small_default, large_default = "smollm2-135m-instruct", "gemma3-270m"
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve the models over the OpenAI API (/v1/chat/completions)",
        description="Serve speculative thinking over an OpenAI-compatible HTTP API. Binds "
        "127.0.0.1 unless --host says otherwise; set an API key (env SPTHINK_API_KEY) before "
        "binding another interface.",
    )
    add_model_arguments(parser, small_default, large_default, ["instruct", "reasoning"])
    parser.add_argument(
        "--temperature",
        type=float,
        help="sampling temperature of a request that sets none (default: the preset's, 0.6)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        help="output budget of a request that sets none (default 512)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--model-id", default="spthink", help="model id clients send (default spthink)"
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="NAME",
        help=f"environment variable holding the API key (default {DEFAULT_API_KEY_ENV}; "
        "unset or empty: no key required)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="the API key itself (visible in the process list: prefer --api-key-env; "
        "default: none)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=1_000_000,
        help="largest request body accepted; larger gets 413 (default 1000000)",
    )
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=4096,
        help="largest max_tokens a request may ask for; more gets 400 (default 4096)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="requests generating at once; the others wait in the queue (default: "
        f"{REMOTE_MAX_CONCURRENCY} when every model is remote, else cores // --threads, at "
        "least 1 and at most a llama.cpp model's max_contexts)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="requests waiting for a slot; more get 503 (default 8)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        help="server log level; info logs one line per request (default info)",
    )
    parser.set_defaults(handler=cmd_serve)
    return parser


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key:
        return str(args.api_key)
    name = args.api_key_env or DEFAULT_API_KEY_ENV
    value = os.environ.get(name, "")
    if args.api_key_env and not value:
        raise ConfigError(f"--api-key-env {name}: the environment variable is unset or empty")
    return value or None


def build_model(args: argparse.Namespace, ctx: _BackendContext | None = None) -> Any:
    """The chat model ``serve`` runs, from the parsed arguments.

    Args:
        args: Parsed ``serve`` arguments.
        ctx: The ``spthink`` CLI context; when given, the models it provides (loaded now) are
            used, else model specs load lazily on the first request.

    Returns:
        A ``ChatSpeculativeThinking``.
    """
    from langchain_spthink.chat.model import ChatSpeculativeThinking

    small: Any = args.small
    large: Any = args.large
    if ctx is not None:
        ctx.threads = args.threads
        if args.mode != "large":
            small = ctx.backend(args.small)
        if args.mode != "small":
            large = ctx.backend(args.large)
    kwargs: dict[str, Any] = {}
    if args.temperature is not None:
        kwargs["temperature"] = args.temperature
    return ChatSpeculativeThinking(
        small_model=small,
        large_model=large,
        threads=args.threads,
        mode=args.mode,
        preset=args.preset,
        max_tokens=args.max_tokens,
        **kwargs,
    )


def cmd_serve(args: argparse.Namespace, ctx: _BackendContext | None = None) -> int:
    """Handler of ``spthink serve``: build the model, then serve until interrupted.

    Args:
        args: Parsed ``serve`` arguments.
        ctx: The ``spthink`` CLI context (optional).

    Returns:
        0 after a clean shutdown.
    """
    api_key = _api_key(args)
    model = build_model(args, ctx)
    max_concurrency = args.max_concurrency
    if max_concurrency is None:
        used = [model.small_model] if args.mode != "large" else []
        used += [model.large_model] if args.mode != "small" else []
        max_concurrency = default_max_concurrency(used, args.threads)
    serve(
        model,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        api_key=api_key,
        model_id=args.model_id,
        max_body_bytes=args.max_body_bytes,
        max_tokens_limit=args.max_tokens_limit,
        max_concurrency=max_concurrency,
        max_queue=args.max_queue,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``serve`` alone: ``python -m langchain_spthink_integrations.openai_server [options]``.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(prog="spthink")
    commands = parser.add_subparsers(dest="command")
    add_serve_parser(commands)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return cmd_serve(args)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"spthink serve: error: {exc}", file=sys.stderr)
        return 2
