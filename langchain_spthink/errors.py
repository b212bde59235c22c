"""Typed exceptions raised by langchain-spthink.

Every error the library raises on purpose derives from :class:`SpThinkError`, so callers can
catch one type. Each message names what was wrong.
"""

from __future__ import annotations

__all__ = [
    "SpThinkError",
    "ConfigError",
    "ModelLoadError",
    "InvalidRequestError",
    "BackendError",
    "LargeModelError",
    "HandoffError",
]


class SpThinkError(Exception):
    """Base class of every error raised by langchain-spthink."""


class ConfigError(SpThinkError, ValueError):
    """A configuration value is invalid; the message names the field."""


class ModelLoadError(SpThinkError):
    """A model could not be resolved or loaded (unknown alias, missing file, corrupt weights)."""


class InvalidRequestError(SpThinkError, ValueError):
    """A request is malformed (empty messages, bad max_tokens, prompt too long, ...)."""


class BackendError(SpThinkError):
    """A backend failed while forwarding or sampling."""


class LargeModelError(BackendError):
    """The large model failed or exceeded its time budget and the fallback policy is ``raise``."""


class HandoffError(SpThinkError):
    """The token hand-off between the two models cannot be done as requested."""
