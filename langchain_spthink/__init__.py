"""langchain-spthink: Speculative Thinking as a LangChain chat model."""

from langchain_spthink.callbacks import (
    AsyncSpeculativeThinkingCallbackHandler,
    SpeculativeThinkingCallbackHandler,
)
from langchain_spthink.chat_models import ChatSpeculativeThinking
from langchain_spthink.config import (
    PRESETS,
    SpeculativeThinkingConfig,
    paper_instruct,
    paper_reasoning,
    preset,
)
from langchain_spthink.engine import Request, SpeculativeEngine
from langchain_spthink.errors import (
    BackendError,
    ConfigError,
    HandoffError,
    InvalidRequestError,
    LargeModelError,
    ModelLoadError,
    SpThinkError,
)
from langchain_spthink.events import (
    BudgetEvent,
    DelegationEvent,
    FallbackEvent,
    FinishEvent,
    ModelUsage,
    TextEvent,
)
from langchain_spthink.policies import (
    BoundaryState,
    Decision,
    DelegationPolicy,
    JudgePolicy,
    KeywordPolicy,
)
from langchain_spthink.sampling import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AsyncSpeculativeThinkingCallbackHandler",
    "ChatSpeculativeThinking",
    "SpeculativeThinkingCallbackHandler",
    "BackendError",
    "BoundaryState",
    "BudgetEvent",
    "Decision",
    "DelegationPolicy",
    "JudgePolicy",
    "KeywordPolicy",
    "ConfigError",
    "DelegationEvent",
    "FallbackEvent",
    "FinishEvent",
    "HandoffError",
    "InvalidRequestError",
    "LargeModelError",
    "ModelLoadError",
    "ModelUsage",
    "Request",
    "SamplingParams",
    "SpThinkError",
    "SpeculativeEngine",
    "SpeculativeThinkingConfig",
    "TextEvent",
    "__version__",
    "paper_instruct",
    "paper_reasoning",
    "preset",
]
