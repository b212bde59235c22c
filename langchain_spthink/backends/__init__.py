"""Model runtimes behind the engine: each owns its tokenizer and per-request KV cache."""

from langchain_spthink.backends.base import Backend, Session

__all__ = ["Backend", "Session"]
