"""The ``spthink`` command line: ``spthink run "question"`` and ``spthink models list|prepare``.

Every subcommand is a function ``(args, ctx) -> exit code`` registered in :data:`_COMMANDS`, so
later ones (``eval``, ``bench``) plug in the same way; other distributions add theirs (``serve``,
from ``langchain-spthink-integrations``) through the ``spthink.commands`` entry-point group.
:func:`run_cli` is the testable entry point: it takes the argument list, the output streams and,
optionally, a way to obtain backends without loading weights (e.g.
:class:`~langchain_spthink.backends.scripted.ScriptedBackend`).
Errors are reported as one ``spthink: error: ...`` line on stderr with a nonzero exit code, never
as a traceback (set ``SPTHINK_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from langchain_spthink.backends.base import Backend
from langchain_spthink.cli.argtypes import (
    add_knob_arguments,
    add_model_arguments,
    add_set_argument,
    policy_overrides,
    positive_int,
)
from langchain_spthink.cli.output import (
    TextRenderer,
    delegation_kinds,
    describe,
    event_json,
    summary_line,
    use_color,
)
from langchain_spthink.engine.config import PRESETS, SpeculativeThinkingConfig, preset
from langchain_spthink.engine.events import (
    BudgetEvent,
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    TextEvent,
)
from langchain_spthink.errors import ConfigError, ModelLoadError, SpThinkError

__all__ = ["BackendSource", "build_parser", "config_table", "main", "run_cli", "summary_line"]

BackendSource = Mapping[str, Backend] | Callable[[str], Backend]
"""Where the CLI gets a backend for a model spec: a table ``spec -> backend`` or a loader."""

# Used when models.py cannot be imported (it only fails in a broken install).
_FALLBACK_SMALL = "smollm2-135m-instruct"
_FALLBACK_LARGE = "gemma3-270m"
_COLORS = ("auto", "always", "never")


def _default_models() -> tuple[str, str]:
    try:
        from langchain_spthink.models import DEFAULT_LARGE_MODEL, DEFAULT_SMALL_MODEL
    except ImportError:  # pragma: no cover - only in a broken install
        return _FALLBACK_SMALL, _FALLBACK_LARGE
    return str(DEFAULT_SMALL_MODEL), str(DEFAULT_LARGE_MODEL)


@dataclass
class _Context:
    """What a subcommand runs with: streams and the source of backends."""

    stdout: IO[str]
    stderr: IO[str]
    backends: BackendSource | None = None
    loaded: dict[str, Backend] = field(default_factory=dict)
    threads: int | None = None

    def backend(self, spec: str) -> Backend:
        """The backend of a model spec, loaded once per invocation."""
        if spec in self.loaded:
            return self.loaded[spec]
        source = self.backends
        if source is None:
            from langchain_spthink.backends.loading import load_backend

            backend: Backend = load_backend(spec, threads=self.threads)
        elif isinstance(source, Mapping):
            if spec not in source:
                raise ModelLoadError(f"unknown model {spec!r}; available: {sorted(source)}")
            backend = source[spec]
        else:
            backend = source(spec)
        self.loaded[spec] = backend
        return backend

    def note(self, message: str) -> None:
        """A progress line on stderr."""
        print(message, file=self.stderr, flush=True)


# ---------------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if shown and "default" not in text and (action.option_strings or action.nargs == "?"):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises instead of exiting, so :func:`run_cli` returns codes.

    Options must be spelled in full (no abbreviations: ``--max-token`` is an error, not
    ``--max-tokens``), and each option's help shows its default.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``spthink``: run, config, models, eval, report, serve."""
    small_default, large_default = _default_models()
    parser = _Parser(
        prog="spthink",
        description="Speculative Thinking: a small model writes, a large model writes the "
        "reflective steps.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="answer one question, streaming the text with the large model's steps marked",
        description="Answer one question with speculative thinking. The large model's steps are "
        "coloured on a terminal and written as [[large: ...]] otherwise; a one-line summary "
        "follows.",
    )
    run.add_argument("question", help="the user message ('-' reads it from stdin)")
    add_model_arguments(run, small_default, large_default, sorted(PRESETS))
    run.add_argument("--system", help="system message (default: none)")
    run.add_argument("--seed", type=int, help="random seed of the request (default: a fresh one)")
    run.add_argument(
        "--max-tokens", type=positive_int, default=512, help="output token budget (default 512)"
    )
    run.add_argument(
        "--draft-tokens",
        type=positive_int,
        help="look-ahead / step length in tokens (default: the preset's, 20)",
    )
    add_knob_arguments(
        run,
        "any config field (VALUE parsed as JSON when it is JSON), e.g. --set begin=false; "
        "repeatable; `spthink config` lists the fields (default: none)",
    )
    run.add_argument("--json", action="store_true", help="one JSON object per event per line")
    color_help = "colour the large model's steps (auto: on a terminal with NO_COLOR unset)"
    run.add_argument("--color", choices=_COLORS, default="auto", help=color_help)
    run.add_argument(
        "-v", "--verbose", action="store_true", help="describe each delegation on stderr"
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    run.set_defaults(handler=_cmd_run)

    config = commands.add_parser(
        "config",
        help="show the configuration knobs with their values (defaults, or a preset's)",
    )
    config.add_argument(
        "--preset", choices=sorted(PRESETS), help="show a preset's values (default: the defaults)"
    )
    add_set_argument(config, "override a field, as for run (default: none)")
    shape = config.add_mutually_exclusive_group()
    shape.add_argument(
        "--markdown", action="store_true", help="a Markdown table (as in docs/configuration.md)"
    )
    shape.add_argument("--json", action="store_true", help="a JSON object")
    config.set_defaults(handler=_cmd_config)

    models = commands.add_parser("models", help="list or prepare the embedded models")
    models_commands = models.add_subparsers(
        dest="models_command", metavar="ACTION", parser_class=_Parser
    )
    listing = models_commands.add_parser("list", help="list the embedded model aliases")
    listing.set_defaults(handler=_cmd_models_list)
    prepare = models_commands.add_parser(
        "prepare",
        help="assemble and convert the embedded models into the local cache (idempotent)",
    )
    prepare.add_argument("aliases", nargs="*", help="aliases to prepare (default: all)")
    prepare.add_argument(
        "-v", "--verbose", action="store_true", help="show transformers' loading progress bars"
    )
    prepare.set_defaults(handler=_cmd_models_prepare)
    models.set_defaults(handler=_cmd_models_list)

    from langchain_spthink.eval.cli import add_eval_parsers

    add_eval_parsers(commands)
    _add_plugin_parsers(commands)
    return parser


# ---------------------------------------------------------------------------------- plugins
COMMANDS_GROUP = "spthink.commands"
"""Entry-point group of the subcommands other distributions add: each entry point is a function
``(subparsers) -> parser`` that adds its subparser (and sets its ``handler``)."""

# Subcommands another distribution provides, and how to install it: listed by `--help` even when
# it is not installed, and then answered with this hint.
_PLUGIN_HINTS = {
    "serve": (
        "langchain-spthink-integrations",
        "from a checkout of the repository, pip install './integrations[server]'",
    ),
}


def _add_plugin_parsers(commands: Any) -> None:
    """Add the subcommands registered in the :data:`COMMANDS_GROUP` entry-point group.

    Only the entry points' modules are imported (they must be light: no torch, FastAPI, ...).
    A known subcommand that is not installed, or whose entry point fails to load, still gets a
    parser, whose handler says what is wrong: it never breaks ``spthink --help``.
    """
    from importlib.metadata import entry_points

    missing = {
        name: (f"(not installed: {how})", f"spthink {name} needs {dist}: {how}")
        for name, (dist, how) in _PLUGIN_HINTS.items()
    }
    for point in entry_points(group=COMMANDS_GROUP):
        if point.name in commands.choices:  # a built-in, or a second install of the same one
            continue
        try:
            point.load()(commands)
        except Exception as exc:  # a broken plugin must not break the CLI
            commands.choices.pop(point.name, None)  # if it got that far
            commands._choices_actions[:] = [
                action for action in commands._choices_actions if action.dest != point.name
            ]
            missing[point.name] = (
                "(failed to load)",
                f"spthink {point.name}: its entry point {point.value} failed to load: "
                f"{type(exc).__name__}: {exc}",
            )
    for name, (help_text, message) in missing.items():
        if name not in commands.choices:
            _add_unavailable(commands, name, help_text, message)


def _add_unavailable(commands: Any, name: str, help_text: str, message: str) -> None:
    """A ``name`` subcommand that takes any arguments and only prints ``message`` (exit 2)."""

    def handler(args: argparse.Namespace, ctx: _Context) -> int:
        print(f"spthink: error: {message}", file=ctx.stderr)
        return 2

    def parse_known_args(
        args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        return argparse.Namespace(handler=handler), []  # even --help: say what is missing

    stub = commands.add_parser(name, help=help_text, add_help=False)
    stub.parse_known_args = parse_known_args


# ---------------------------------------------------------------------------------- run
def _quiet_transformers() -> None:
    """No progress bars or warnings from transformers while loading (they'd clutter stderr)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


def _loading_output(verbose: bool) -> None:
    """`-v`: loading progress bars (via `$SPTHINK_PROGRESS`); else no bars and no warnings."""
    from langchain_spthink.models import PROGRESS_ENV

    if verbose:
        os.environ[PROGRESS_ENV] = "1"
    else:
        _quiet_transformers()


def _config(args: argparse.Namespace) -> SpeculativeThinkingConfig:
    overrides: dict[str, Any] = dict(args.overrides)
    for key in ("temperature", "top_p", "top_k", "draft_tokens"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    overrides.update(policy_overrides(args))
    return preset(args.preset, **overrides)


def _question(args: argparse.Namespace) -> str:
    text = str(args.question)
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise ConfigError("the question is empty")
    return text


def _cmd_run(args: argparse.Namespace, ctx: _Context) -> int:
    from langchain_spthink.chat.request import build_request, roles_of

    config = _config(args)
    question = _question(args)
    ctx.threads = args.threads
    quiet = args.quiet
    if args.verbose or ctx.backends is None:  # scripted backends load nothing
        _loading_output(args.verbose)
    started = time.monotonic()
    specs = {"small": args.small, "large": args.large}
    backends = {role: ctx.backend(specs[role]) for role in roles_of(args.mode)}
    if not quiet and ctx.backends is None:
        ctx.note(f"spthink: models ready in {time.monotonic() - started:.1f} s")
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": question})
    prepared = build_request(
        messages,
        backends,
        config,
        mode=args.mode,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    small, large = backends.get("small"), backends.get("large")
    renderer = (
        None if args.json else TextRenderer(ctx.stdout, color=use_color(args.color, ctx.stdout))
    )
    delegations: list[DelegationEvent] = []

    def note(message: str) -> None:
        # Own line on a shared terminal: stdout may be mid-line (text streams without newlines).
        mid_line = renderer is not None and not renderer.at_line_start
        ctx.note(("\n" if mid_line else "") + message)

    for event in prepared.engine.generate(prepared.request):
        if isinstance(event, DelegationEvent):
            delegations.append(event)
            if args.verbose:
                note(describe(event))
        elif isinstance(event, FallbackEvent):
            note(f"spthink: large model failed ({event.reason}); continuing with small")
        elif isinstance(event, BudgetEvent) and not quiet:
            then = "small mode" if event.budget == "max_large_tokens" else "answering now"
            note(f"spthink: {event.budget}={event.limit} spent; {then}")
        if args.json:
            kinds = delegation_kinds(delegations)
            print(event_json(event, kinds), file=ctx.stdout, flush=True)
            continue
        assert renderer is not None
        if isinstance(event, TextEvent):
            renderer.write(event)
        elif isinstance(event, FinishEvent):
            renderer.finish()
            line = summary_line(
                event,
                delegation_kinds(delegations),
                small_name=small.name if small is not None else None,
                large_name=large.name if large is not None else None,
            )
            print(line, file=ctx.stdout, flush=True)
    return 0


# ---------------------------------------------------------------------------------- config
def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(json.dumps(v, ensure_ascii=False) for v in value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return (
        "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def config_table(config: SpeculativeThinkingConfig | None = None) -> str:
    """A Markdown table of every config field: name, value (default: the defaults), meaning."""
    config = config or SpeculativeThinkingConfig()
    lines = ["| knob | default | meaning |", "| --- | --- | --- |"]
    for name, info in type(config).model_fields.items():
        value = _show(getattr(config, name)).replace("|", "\\|")
        lines.append(f"| `{name}` | `{value}` | {info.description or ''} |")
    return "\n".join(lines)


def _cmd_config(args: argparse.Namespace, ctx: _Context) -> int:
    overrides = dict(args.overrides)
    config = (
        preset(args.preset, **overrides) if args.preset else SpeculativeThinkingConfig(**overrides)
    )
    if args.json:
        print(json.dumps(config.model_dump(), ensure_ascii=False, indent=1), file=ctx.stdout)
    elif args.markdown:
        print(config_table(config), file=ctx.stdout)
    else:
        width = max(len(n) for n in type(config).model_fields)
        for name in type(config).model_fields:
            print(f"{name:<{width}}  {_show(getattr(config, name))}", file=ctx.stdout)
    return 0


# ---------------------------------------------------------------------------------- models
def _embedded() -> dict[str, Any]:
    from langchain_spthink.models import EMBEDDED_MODELS

    return dict(EMBEDDED_MODELS)


def _cmd_models_list(args: argparse.Namespace, ctx: _Context) -> int:
    small_default, large_default = _default_models()
    for alias, info in _embedded().items():
        role = (
            " (default small)"
            if alias == small_default
            else " (default large)"
            if alias == large_default
            else ""
        )
        about = getattr(info, "description", None) or getattr(info, "repo_id", None) or ""
        print(f"{alias}{role}" + (f"  {about}" if about else ""), file=ctx.stdout)
    return 0


def _cmd_models_prepare(args: argparse.Namespace, ctx: _Context) -> int:
    from langchain_spthink.models import load_model

    _loading_output(args.verbose)
    known = _embedded()
    aliases = list(args.aliases) or list(known)
    unknown = [a for a in aliases if a not in known]
    if unknown:
        raise ModelLoadError(f"unknown alias(es) {unknown}; embedded: {sorted(known)}")
    for alias in aliases:
        started = time.monotonic()
        ctx.note(f"spthink: preparing {alias} ...")
        loaded = load_model(alias)
        del loaded
        print(f"{alias}: ready ({time.monotonic() - started:.1f} s)", file=ctx.stdout, flush=True)
    return 0


# ---------------------------------------------------------------------------------- entry
def run_cli(
    argv: Sequence[str] | None = None,
    *,
    backends: BackendSource | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run ``spthink`` with ``argv`` and return its exit code (never raises, never exits).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
        backends: Backends to use instead of loading weights: a table from model spec (the
            ``--small`` / ``--large`` values) to backend, or a function of the spec.
        stdout: Where answers go (default ``sys.stdout``).
        stderr: Where progress and errors go (default ``sys.stderr``).

    Returns:
        0 on success, 1 on an error while running, 2 on bad usage, 130 on Ctrl-C.
    """
    ctx = _Context(stdout or sys.stdout, stderr or sys.stderr, backends)
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(ctx.stdout):  # --help prints to the given stdout
            args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except _UsageError as exc:
        exc.parser.print_usage(ctx.stderr)
        print(f"{exc.parser.prog}: error: {exc}", file=ctx.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.version:
        from langchain_spthink import __version__

        print(f"spthink {__version__}", file=ctx.stdout)
        return 0
    handler: Callable[[argparse.Namespace, _Context], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(ctx.stderr)
        return 2
    try:
        return handler(args, ctx)
    except KeyboardInterrupt:
        print("\nspthink: interrupted", file=ctx.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("SPTHINK_DEBUG"):
            raise
        kind = "" if isinstance(exc, SpThinkError) else f"{type(exc).__name__}: "
        print(f"spthink: error: {kind}{exc}", file=ctx.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point of ``spthink`` (``argv``: as :func:`run_cli`'s)."""
    code = run_cli(argv)
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # pragma: no cover - reader went away
        pass
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
