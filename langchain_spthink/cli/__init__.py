"""The cli layer: the ``spthink`` command line (``run``, ``config``, ``models``, ``eval``, ...).

Modules: :mod:`.main` (the parser and the subcommands, :func:`~langchain_spthink.cli.main.run_cli`),
:mod:`.argtypes` (argument types shared with ``spthink eval``) and :mod:`.output` (what a run
prints). :func:`main` is the console-script entry point.

May import: every layer of the package (the engine, the backends, the chat layer, the eval
layer), but not ``langchain_spthink_integrations`` (``spthink serve`` comes in through the
``spthink.commands`` entry point that distribution registers); torch, transformers and LangChain
only inside the commands that need them, so ``spthink --help`` imports none of them. This file
imports only :mod:`.main`, which is light.
"""

from langchain_spthink.cli.main import main

__all__ = ["main"]
