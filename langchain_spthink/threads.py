"""CPU threads of the local runtimes (torch, llama.cpp), chosen to hold up on a busy machine.

torch's intra-op pool spins while it waits for its workers; when another process holds a core,
a pool as wide as the machine stalls on every matrix product (measured: 0.8 vs 8.7 tokens/s on a
loaded 2-core machine, ``benchmarks/bench_threads.py``). The count is therefore resolved once per
backend (:func:`resolve_threads`) and applied in whichever thread runs a forward
(:func:`use_torch_threads`): the main thread, LangChain's batch pool, an async worker or the
server. OpenMP keeps the count per calling thread, so it is set where the work happens.

Imports no torch until :func:`use_torch_threads` is called.
"""

from __future__ import annotations

import os

__all__ = [
    "THREADS_ENV",
    "available_cores",
    "default_threads",
    "resolve_threads",
    "use_torch_threads",
]

THREADS_ENV = "SPTHINK_THREADS"
"""Environment variable that sets the default thread count (an integer >= 1)."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """The thread count used when none is given: ``$SPTHINK_THREADS``, else the policy below.

    Policy (measured in ``benchmarks/bench_threads.py``, see the docs): half the cores, at
    least 1 and at most 4. On 2 cores that is 1 thread, which loses little when the machine
    is idle and avoids the collapse when another process competes for a core.

    Raises:
        ValueError: ``$SPTHINK_THREADS`` is set but is not an integer >= 1.
    """
    raw = os.environ.get(THREADS_ENV, "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"${THREADS_ENV} must be an integer >= 1, got {raw!r}")
        return value
    return max(1, min(4, available_cores() // 2))


def resolve_threads(threads: int | None) -> int:
    """``threads`` when given (validated), else :func:`default_threads`.

    Raises:
        ValueError: ``threads`` is not an integer >= 1.
    """
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    return threads


def use_torch_threads(threads: int) -> None:
    """Make torch's intra-op pool ``threads`` wide for the calling thread (no-op if it is)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
