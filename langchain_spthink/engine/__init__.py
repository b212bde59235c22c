"""The engine layer: the speculative-thinking control loop, pure: token ids in, typed events out.

Modules: :mod:`.api` (:class:`~langchain_spthink.engine.api.SpeculativeEngine`), :mod:`.loop`
(the control loop), :mod:`.decisions` (its decisions, pure), :mod:`.steps`
(:class:`~.steps.Request`, a step's result), :mod:`.state` (one request's state and primitives),
:mod:`.answer` (the answer phase), :mod:`.concurrent` (concurrent drafts), :mod:`.judge`,
:mod:`.report` (the finish event), :mod:`.config`, :mod:`.cues`, :mod:`.policies`,
:mod:`.events`, :mod:`.sampling`, :mod:`.output`, :mod:`.handoff`, :mod:`.detok`.

May import: the standard library, pydantic, torch (inside sampling functions only),
:mod:`langchain_spthink.errors`, :mod:`langchain_spthink.threads` and
:mod:`langchain_spthink.backends.base` (the protocol the engine drives backends through). Must
not import: LangChain (``langchain_core``, ``langchain``, ``langgraph``),
:mod:`langchain_spthink.chat`, :mod:`langchain_spthink.cli`, :mod:`langchain_spthink.eval`,
``langchain_spthink_integrations`` (contracts in ``pyproject.toml``, checked by
``lint-imports``). This file imports nothing: ``import langchain_spthink.engine`` stays light.
"""
