"""OpenAPI schema check of the server with schemathesis (bounded examples and time)."""

from __future__ import annotations

from datetime import timedelta

import schemathesis
from hypothesis import HealthCheck, settings

from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink.chat.model import ChatSpeculativeThinking
from langchain_spthink_integrations.openai_server import create_app

SCRIPT = ["Hello there, friend.\n\n", "Wait, the sum is 4.\n\n", "Done."]


def _app() -> object:
    model = ChatSpeculativeThinking(
        small_model=ScriptedBackend(SCRIPT, name="small-fake"),
        large_model=ScriptedBackend(SCRIPT, name="large-fake"),
        temperature=0,
        max_tokens=16,
    )
    return create_app(model, max_tokens_limit=64, max_queue=64)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(
    max_examples=30,
    # A scripted call takes milliseconds; 60 s per example only flags a pathological slowdown
    # (e.g. a request waiting out some timeout), never a CPU loaded 10x.
    deadline=timedelta(seconds=60),
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_openapi_conformance(case: object) -> None:
    case.call_and_validate()  # type: ignore[attr-defined]
