r"""Threads that hold up under load: small-mode tokens/s by torch thread setting, idle and busy.

One process, one model (SmolLM2-135M-Instruct, transformers), greedy, the same GSM8K prompts.
For each machine state (``idle``; ``busy`` = one extra process spinning on a core, like a
laptop running something else) it times small-only generation with the package's default
thread setting (:func:`langchain_spthink.threads.default_threads`), with 1 and with 2 threads,
and with torch's own default (as many threads as cores: what the package used before).
Settings alternate within each repetition and each setting's time is the best of its
repetitions (the run least disturbed by other processes). Each request runs both on the main
thread and on a worker thread (LangChain's ``batch`` pool and the async path run requests on
worker threads; OpenMP keeps a thread count per calling thread).

Printed: tokens/s per setting, and the default's ratio to the best of 1 and 2 threads.
Targets: busy >= 0.9, idle >= 0.95.

Run: ``python benchmarks/bench_threads.py`` (``--help`` for the knobs). Say the machine's state
when you quote the numbers (other jobs running or not: ``uptime`` before and after).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.events import FinishEvent
from langchain_spthink.engine.loop import Request
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.threads import available_cores, default_threads

DATA = Path(__file__).resolve().parents[1] / "langchain_spthink" / "data" / "gsm8k.jsonl"


def _spin(stop: Any) -> None:
    while not stop.is_set():
        pass


def _prompts(n: int) -> list[str]:
    lines = DATA.read_text().splitlines()[:n]
    return [json.loads(line)["problem"] for line in lines]


def _generate(backend: TransformersBackend, prompt: str, tokens: int) -> int:
    ids = backend.chat_prompt_ids([{"role": "user", "content": prompt}])
    engine = SpeculativeEngine(backend, None)
    request = Request(
        small_prompt=ids,
        large_prompt=ids,
        max_tokens=tokens,
        sampling=SamplingParams(temperature=0.0),
        mode="small",
    )
    finish = [e for e in engine.generate(request) if isinstance(e, FinishEvent)][-1]
    return finish.output_tokens


def _on_worker(fn: Callable[[], int]) -> int:
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


def _measure(
    backends: dict[str, TransformersBackend], prompts: list[str], tokens: int, reps: int
) -> dict[str, float]:
    best: dict[str, list[float]] = {name: [float("inf")] * len(prompts) for name in backends}
    made: dict[str, list[int]] = {name: [0] * len(prompts) for name in backends}
    order = list(backends)
    for rep in range(reps):
        names = order if rep % 2 == 0 else order[::-1]
        for i, prompt in enumerate(prompts):
            for name in names:
                backend = backends[name]
                started = time.perf_counter()
                if i % 2 == 0:
                    made[name][i] = _generate(backend, prompt, tokens)
                else:
                    made[name][i] = _on_worker(lambda b=backend, p=prompt: _generate(b, p, tokens))
                best[name][i] = min(best[name][i], time.perf_counter() - started)
    return {name: sum(made[name]) / sum(best[name]) for name in backends}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="GSM8K prompts (default 4)")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per request (default 48)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--busy", type=int, default=1, help="spinning processes in the busy state (default 1)"
    )
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    base = TransformersBackend.load("smollm2-135m-instruct")
    cores = available_cores()
    settings = {
        f"default ({default_threads()})": default_threads(),
        "1 thread": 1,
        "2 threads": 2,
        f"torch default ({cores})": cores,
    }
    backends = {
        name: TransformersBackend(base.model, base.tokenizer, name=name, threads=n)
        for name, n in settings.items()
    }
    prompts = _prompts(args.prompts)
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores, "
        f"torch {torch.__version__}, load average before {os.getloadavg()[0]:.2f}"
    )
    _generate(base, prompts[0], 8)  # warm-up
    for state in ("idle", "busy"):
        stop = multiprocessing.Event()
        spinners = [
            multiprocessing.Process(target=_spin, args=(stop,), daemon=True)
            for _ in range(args.busy if state == "busy" else 0)
        ]
        for p in spinners:
            p.start()
        try:
            rates = _measure(backends, prompts, args.tokens, args.reps)
        finally:
            stop.set()
            for p in spinners:
                p.join(5)
        best = max(rates["1 thread"], rates["2 threads"])
        default = next(iter(rates))
        cells = ", ".join(f"{name}: {rate:.2f} tok/s" for name, rate in rates.items())
        print(f"{state} ({len(spinners)} spinning): {cells}")
        print(f"{state}: default / best of 1 and 2 threads = {rates[default] / best:.3f}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
