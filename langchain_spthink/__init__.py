"""langchain-spthink: Speculative Thinking as a LangChain chat model.

Every public name is exported lazily (PEP 562 module ``__getattr__``): ``import
langchain_spthink`` loads no torch, transformers or LangChain; each name's module is imported
the first time the name is used. ``spthink --help`` relies on this to answer instantly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (one place per fact: the module, not this table, owns it)
_EXPORTS: dict[str, str] = {
    "AsyncSpeculativeThinkingCallbackHandler": "langchain_spthink.chat.callbacks",
    "SpeculativeThinkingCallbackHandler": "langchain_spthink.chat.callbacks",
    "ChatSpeculativeThinking": "langchain_spthink.chat.model",
    "PRESETS": "langchain_spthink.engine.config",
    "SpeculativeThinkingConfig": "langchain_spthink.engine.config",
    "paper_instruct": "langchain_spthink.engine.config",
    "paper_reasoning": "langchain_spthink.engine.config",
    "preset": "langchain_spthink.engine.config",
    "Request": "langchain_spthink.engine.state",
    "SpeculativeEngine": "langchain_spthink.engine.api",
    "BackendError": "langchain_spthink.errors",
    "ConfigError": "langchain_spthink.errors",
    "HandoffError": "langchain_spthink.errors",
    "InvalidRequestError": "langchain_spthink.errors",
    "LargeModelError": "langchain_spthink.errors",
    "ModelLoadError": "langchain_spthink.errors",
    "SpThinkError": "langchain_spthink.errors",
    "BudgetEvent": "langchain_spthink.engine.events",
    "DelegationEvent": "langchain_spthink.engine.events",
    "FallbackEvent": "langchain_spthink.engine.events",
    "FinishEvent": "langchain_spthink.engine.events",
    "ModelUsage": "langchain_spthink.engine.events",
    "TextEvent": "langchain_spthink.engine.events",
    "BoundaryState": "langchain_spthink.engine.policies",
    "Decision": "langchain_spthink.engine.policies",
    "DelegationPolicy": "langchain_spthink.engine.policies",
    "JudgePolicy": "langchain_spthink.engine.policies",
    "KeywordPolicy": "langchain_spthink.engine.policies",
    "SamplingParams": "langchain_spthink.engine.sampling",
}

__all__ = [
    "AsyncSpeculativeThinkingCallbackHandler",
    "BackendError",
    "BoundaryState",
    "BudgetEvent",
    "ChatSpeculativeThinking",
    "ConfigError",
    "Decision",
    "DelegationEvent",
    "DelegationPolicy",
    "FallbackEvent",
    "FinishEvent",
    "HandoffError",
    "InvalidRequestError",
    "JudgePolicy",
    "KeywordPolicy",
    "LargeModelError",
    "ModelLoadError",
    "ModelUsage",
    "PRESETS",
    "Request",
    "SamplingParams",
    "SpThinkError",
    "SpeculativeEngine",
    "SpeculativeThinkingCallbackHandler",
    "SpeculativeThinkingConfig",
    "TextEvent",
    "__version__",
    "paper_instruct",
    "paper_reasoning",
    "preset",
]

if TYPE_CHECKING:  # static names for type checkers and IDEs; never executed
    from langchain_spthink.chat.callbacks import (
        AsyncSpeculativeThinkingCallbackHandler,
        SpeculativeThinkingCallbackHandler,
    )
    from langchain_spthink.chat.model import ChatSpeculativeThinking
    from langchain_spthink.engine.api import SpeculativeEngine
    from langchain_spthink.engine.config import (
        PRESETS,
        SpeculativeThinkingConfig,
        paper_instruct,
        paper_reasoning,
        preset,
    )
    from langchain_spthink.engine.events import (
        BudgetEvent,
        DelegationEvent,
        FallbackEvent,
        FinishEvent,
        ModelUsage,
        TextEvent,
    )
    from langchain_spthink.engine.policies import (
        BoundaryState,
        Decision,
        DelegationPolicy,
        JudgePolicy,
        KeywordPolicy,
    )
    from langchain_spthink.engine.sampling import SamplingParams
    from langchain_spthink.engine.state import Request
    from langchain_spthink.errors import (
        BackendError,
        ConfigError,
        HandoffError,
        InvalidRequestError,
        LargeModelError,
        ModelLoadError,
        SpThinkError,
    )


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_spthink' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
