"""LangGraph helpers for ``ChatSpeculativeThinking``.

* :func:`create_spthink_agent` — a ReAct agent (model, tools, model, ...) with an enforced step
  limit, a forced first tool call and a final answer without tools (robust with small models);
* :func:`stream_with_delegations` / :func:`astream_with_delegations` — stream a graph together
  with the large model's steps, as typed events (LangGraph's ``stream_mode="custom"``).
"""

from __future__ import annotations

from langchain_spthink_integrations.langgraph.agent import (
    DEFAULT_MAX_STEPS,
    create_spthink_agent,
    model_calls_this_turn,
)
from langchain_spthink_integrations.langgraph.streaming import (
    GraphStreamItem,
    astream_with_delegations,
    stream_with_delegations,
)

__all__ = [
    "DEFAULT_MAX_STEPS",
    "GraphStreamItem",
    "astream_with_delegations",
    "create_spthink_agent",
    "model_calls_this_turn",
    "stream_with_delegations",
]
