"""The engine's entry point, :class:`SpeculativeEngine`.

It holds the models and the config and runs each request through the control loop
(:mod:`langchain_spthink.engine.loop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Literal

from langchain_spthink.backends.base import Backend
from langchain_spthink.engine.config import SpeculativeThinkingConfig
from langchain_spthink.engine.events import Event
from langchain_spthink.engine.loop import _Run
from langchain_spthink.engine.policies import DelegationPolicy
from langchain_spthink.engine.state import Request
from langchain_spthink.engine.steps import check_request
from langchain_spthink.errors import HandoffError, InvalidRequestError

__all__ = ["SpeculativeEngine"]


class SpeculativeEngine:
    """Runs speculative thinking over two backends.

    Args:
        small: The small (speculative) model; may be ``None`` for large-only use.
        large: The large (target) model; may be ``None`` for small-only use.
        config: The algorithm's knobs.
        handoff: ``ids`` (same tokenizer), ``text`` (re-tokenize), or ``auto`` (ids iff the
            tokenizers are equal).
        clock: Monotonic clock (injectable for tests).
        executor: Runs the large model's step at a boundary while the small model drafts
            (concurrent drafts); ``None`` runs them one after the other.
        concurrent_drafts: Use ``executor`` for large steps; default: when the large backend
            is remote (``is_remote``), whose steps are network-bound and open cheap sessions.
        policy: The delegation policy (default: the one ``config.policy`` names).
    """

    def __init__(
        self,
        small: Backend | None,
        large: Backend | None,
        config: SpeculativeThinkingConfig | None = None,
        *,
        handoff: Literal["auto", "ids", "text"] = "auto",
        clock: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
        concurrent_drafts: bool | None = None,
        policy: DelegationPolicy | None = None,
    ) -> None:
        self.small = small
        self.large = large
        self.config = config or SpeculativeThinkingConfig()
        self.clock = clock
        self.executor = executor
        self.policy = policy
        if concurrent_drafts is None:
            concurrent_drafts = bool(getattr(large, "is_remote", False))
        self.concurrent_drafts = concurrent_drafts and executor is not None
        if small is None and large is None:
            raise InvalidRequestError("an engine needs at least one model")
        same = (
            small is not None
            and large is not None
            and small.tokenizer_fingerprint == large.tokenizer_fingerprint
        )
        if handoff == "ids" and small is not None and large is not None and not same:
            raise HandoffError(
                f"handoff='ids' needs one tokenizer, but {small.name} and {large.name} differ"
            )
        self.share_ids = same if handoff == "auto" else handoff == "ids"

    def generate(self, request: Request) -> Iterator[Event]:
        """Run one request, yielding text, delegation and fallback events, then a finish event."""
        check_request(request, self.small, self.large)
        run = _Run(self, request)
        try:
            yield from run.events()
        finally:
            run.close()
