"""The chat layer: the LangChain surface, ``ChatSpeculativeThinking`` (:mod:`.model`).

Modules: :mod:`.model` (the ``BaseChatModel``), :mod:`.streaming` (the one streaming path behind
every entry point), :mod:`.settings` (per-call settings), :mod:`.runs` (LangChain runs and custom
events), :mod:`.async_bridge` (the async path's worker thread), :mod:`.callbacks` (typed callback
handlers), :mod:`.messages` (messages to prompts) and :mod:`.reasoning` (the reasoning split).

May import: ``langchain_core``, pydantic, the engine, the backends, :mod:`langchain_spthink.tools`,
:mod:`langchain_spthink.errors` and :mod:`langchain_spthink.models`. Must not import:
:mod:`langchain_spthink.cli`, :mod:`langchain_spthink.eval`, ``langchain_spthink_integrations``
(contracts in ``pyproject.toml``, checked by ``lint-imports``). This file imports nothing.
"""
