"""The tools layer: tool calling, structured output and constrained decoding.

Modules: :mod:`.schema` (tools rendered into the prompt, ``tool_choice``), :mod:`.parsing` (tool
calls parsed from the answer, whole and streaming), :mod:`.structured` (``bind_tools`` and
``with_structured_output``) and :mod:`.constraints` (llguidance grammars for constrained decoding).

May import: ``langchain_core``, llguidance, torch, numpy, the engine's leaf modules,
:mod:`langchain_spthink.backends.base` and :mod:`langchain_spthink.errors`. Must not import:
:mod:`langchain_spthink.chat`, :mod:`langchain_spthink.cli`, :mod:`langchain_spthink.eval`,
``langchain_spthink_integrations`` (contracts in ``pyproject.toml``, checked by
``lint-imports``). This file imports nothing.
"""
