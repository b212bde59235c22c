"""A request (:class:`Request`), and what one step of the control loop is and how it ends.

A step (:class:`_Step`) is what one model wrote in one call of
:meth:`~langchain_spthink.engine.state.RunBase._write`, with why it stopped (:data:`Stop`) and,
when that ends the current phase, its :data:`Halt`. Ordinary outcomes (EOS, a stop string, a
budget, the deadline) are such values; :class:`_LargeFault` is the one exception, for failures.
:class:`_Track` is one model's session and usage within a request, :class:`_PendingStep` a large
step running concurrently.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeGuard

from langchain_spthink.backends.base import Backend, Session
from langchain_spthink.engine.events import ModelUsage, StopReason
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.errors import InvalidRequestError

if TYPE_CHECKING:
    from langchain_spthink.backends.base import ConstraintFactory
    from langchain_spthink.engine.policies import DelegationPolicy

__all__ = [
    "REQUEST_ENDS",
    "Halt",
    "Mode",
    "Request",
    "Role",
    "Stop",
    "check_request",
    "ends_request",
]

Role = Literal["small", "large"]
Mode = Literal["speculative", "small", "large"]


@dataclass(frozen=True)
class Request:
    """One generation request, in token ids.

    Attributes:
        small_prompt: The prompt in the small model's tokenizer and chat template.
        large_prompt: The prompt in the large model's tokenizer and chat template.
        max_tokens: Budget of generated output tokens (the prompt does not count).
        sampling: Sampling of both models; ``None``: the config's
            (:meth:`~langchain_spthink.engine.config.SpeculativeThinkingConfig.sampling`,
            unseeded). Each sampled step gets its own seed derived from ``sampling.seed``
            (:func:`~langchain_spthink.engine.decisions.step_seed`: the first step of the small
            model samples with ``seed``, of the large model with ``seed + 1``).
        stop: Stop strings; the output ends before the first one.
        mode: ``speculative``, or one model alone (``small`` / ``large``).
        constraint: Builds the constraint the answer is decoded under (for the model that
            writes it); ``None``: unconstrained.
        answer_marker: Text after which the answer starts (e.g. ``"</think>"``); ``None``: the
            whole output is the answer. The reasoning before it runs speculatively; with a
            constraint, one model (small, or large in large mode) writes the answer under it.
        policy: The delegation policy of this request (``None``: the engine's).
    """

    small_prompt: Sequence[int]
    large_prompt: Sequence[int]
    max_tokens: int = 512
    sampling: SamplingParams | None = None
    stop: tuple[str, ...] = ()
    mode: Mode = "speculative"
    constraint: ConstraintFactory | None = None
    answer_marker: str | None = None
    policy: DelegationPolicy | None = None


def check_request(request: Request, small: Backend | None, large: Backend | None) -> None:
    """Refuse a request the engine cannot run (before any session opens).

    Raises:
        InvalidRequestError: A non-positive budget, an empty stop string or answer marker, a
            mode without its model, or a budget over a model's context window.
    """
    if request.max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be positive, got {request.max_tokens}")
    if any(not s for s in request.stop):
        raise InvalidRequestError("stop strings must not be empty")
    if request.answer_marker == "":
        raise InvalidRequestError("answer_marker must not be empty (use None)")
    if request.mode != "small" and large is None:
        raise InvalidRequestError(f"mode {request.mode!r} needs a large model")
    if request.mode != "large" and small is None:
        raise InvalidRequestError(f"mode {request.mode!r} needs a small model")
    roles = {"speculative": (small, large), "small": (small,)}
    for model in roles.get(request.mode, (large,)):
        if model is not None and request.max_tokens > model.context_length:
            raise InvalidRequestError(
                f"max_tokens={request.max_tokens} exceeds the context window of "
                f"{model.name} ({model.context_length} tokens)"
            )


Halt = Literal["eos", "stop", "length", "context", "timeout", "reasoning_budget", "large_budget"]
"""What ends the current phase: the request's end (a :data:`StopReason`), or a spent budget:
``reasoning_budget`` (the reasoning is closed, the answer follows) or ``large_budget`` (the request
goes on in small mode)."""

Stop = Literal[
    "max_new",  # wrote as many tokens as it was asked (or the stream ended)
    "trigger",  # a trigger in the round's text: a boundary
    "marker",  # the answer marker asks for the answer writer
    "done",  # the constraint is complete
    "eos",  # the model wrote EOS
    "stop",
    "length",
    "context",
    "timeout",
    "reasoning_budget",
    "large_budget",
]
"""Why one step stopped writing."""

REQUEST_ENDS: frozenset[StopReason] = frozenset({"eos", "stop", "length", "context", "timeout"})


def ends_request(halt: Halt | None) -> TypeGuard[StopReason]:
    """Whether ``halt`` ends the request (rather than a budget ending a phase)."""
    return halt in REQUEST_ENDS


class _LargeFault(Exception):
    """The large model failed (raised, or ran over ``large_step_timeout``): a fault."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause


@dataclass
class _Track:
    role: Role
    backend: Backend
    session: Session
    prompt_len: int
    usage: ModelUsage
    sampling: SamplingParams
    synced: int = 0  # version of the shared output the session's ids reflect
    steps: int = 0  # sampled steps started (each takes the seed step_seed(seed, role, steps))
    forked_forwarded: int = 0  # positions forwarded by throw-away sessions (concurrent steps)


@dataclass
class _PendingStep:
    """A large-model step running in the executor on a throw-away session."""

    future: Future[tuple[list[int], int, float]]
    stop: threading.Event
    started: float

    def discard(self) -> None:
        self.stop.set()  # the worker closes its stream at the next token


@dataclass
class _Step:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)  # len(text) after each id
    start: int = 0  # session length before the step
    eos: bool = False  # the model wrote EOS (a draft's EOS ends nothing until it is committed)
    stop: Stop = "max_new"
    halt: Halt | None = None  # set iff the step ends the current phase
    seconds: float = 0.0

    def cut(self, n: int) -> _Step:
        """The first ``n`` ids of this step (n >= 1)."""
        return _Step(self.ids[:n], self.text[: self.ends[n - 1]], self.ends[:n], self.start)
