"""Smoke test of the OpenAI-compatible server on the embedded real models (loopback)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink_integrations.openai_server import create_app
from tests.unit_tests.test_server import serving

pytestmark = pytest.mark.embedded


def test_real_models_over_openai_api(small_backend: Any, large_backend: Any) -> None:
    model = ChatSpeculativeThinking(
        small_model=small_backend,
        large_model=large_backend,
        preset="instruct",
        temperature=0,
        max_tokens=16,
    )
    with serving(create_app(model)) as server:
        client = openai.OpenAI(
            base_url=server.url + "/v1", api_key="unused", timeout=300, max_retries=0
        )
        messages: Any = [{"role": "user", "content": "What is 2 + 3?"}]
        reply = client.chat.completions.create(model="spthink", messages=messages, max_tokens=16)
        text = reply.choices[0].message.content or ""
        assert text.strip()
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16
        summary = reply.model_extra["spthink"]  # type: ignore[index]
        assert summary["small_model"] and summary["large_model"]
        # greedy: the stream writes the same text; the instruct preset delegates (begin)
        chunks = list(
            client.chat.completions.create(
                model="spthink",
                messages=messages,
                max_tokens=16,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
        events = [(c.model_extra or {}).get("spthink") for c in chunks]
        delegations = [e["delegation"] for e in events if e and "delegation" in e]
        assert len(delegations) == len(summary["delegations"])
