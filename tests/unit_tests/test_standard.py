"""langchain-tests' standard unit suite on ChatSpeculativeThinking with scripted backends."""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking


class TestChatSpeculativeThinkingUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSpeculativeThinking]:
        return ChatSpeculativeThinking

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "small_model": ScriptedBackend(["Hello there.\n\n", "Wait, let me check."]),
            "large_model": ScriptedBackend(["Hello there.\n\n", "Yes, that is right."]),
        }

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


class TestChatSpeculativeThinkingScriptedIntegration(ChatModelIntegrationTests):
    """The standard integration suite end to end on scripted models (fast, known outputs).

    The same suite runs on the embedded real models in
    ``tests/integration_tests/test_chat_embedded.py``. Tool calling and structured output are
    off here: these tests ask questions (``magic_function(3)``, a joke about cats) whose right
    answer a fixed script cannot contain, whatever the prompt says; they run on the embedded
    models, and scripted tool calling is tested in ``test_tools_chat.py``.
    """

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def chat_model_class(self) -> type[ChatSpeculativeThinking]:
        return ChatSpeculativeThinking

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "small_model": ScriptedBackend(["Hello there.\n\n", "Wait, let me check.\n\n", "Ok."]),
            "large_model": ScriptedBackend(["Hello there.\n\n", "Yes, that is right.\n\n", "Ok."]),
            "temperature": 0,
        }

    @property
    def supports_model_override(self) -> bool:
        return False
