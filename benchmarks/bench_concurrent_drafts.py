"""Concurrent drafts vs sequential boundaries, against a real llama.cpp server on loopback.

The large model (gemma-3-270m, the embedded GGUF) is served by ``python -m llama_cpp.server``
with one thread; the small model (SmolLM2-135M) runs locally through transformers with one
thread, so each side has a core of this 2-core machine, as it would have its own machine in a
real deployment. With ``not_reasoning`` every boundary is delegated; ``choose_large=False`` makes
the engine draft with the small model too (with ``choose_large`` it skips the draft, and then
there is nothing to overlap). Each prompt is run with concurrent drafts on and off, alternating,
greedy; the finish event's ``boundary_seconds / boundaries`` is the mean boundary latency.

Prints, measured in one run: the mean boundary latency concurrent / sequential (target <= 0.65),
and whether the outputs were identical.

Usage: python benchmarks/bench_concurrent_drafts.py [--prompts 3] [--max-tokens 192]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from langchain_spthink import (
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    paper_instruct,
)
from langchain_spthink.backends.base import Backend
from langchain_spthink.backends.loading import load_backend
from langchain_spthink.models import EMBEDDED_MODELS

GREEDY = SamplingParams(temperature=0.0)
DATA = Path(__file__).resolve().parents[1] / "langchain_spthink" / "data" / "gsm8k.jsonl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(alias: str, threads: int) -> tuple[subprocess.Popen[bytes], str, Any]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(EMBEDDED_MODELS[alias].gguf_path()), "--model_alias", "large",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--logits_all", "false", "--n_ctx", "4096",
    ]  # fmt: skip
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url, log
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start within 120 s")


def run_once(
    small: Any, large: Backend, prompt: list[dict[str, str]], max_tokens: int, on: bool
) -> FinishEvent:
    config = paper_instruct(begin=False, choose_large=False, draft_tokens=20)
    with ThreadPoolExecutor(max_workers=1) as pool:
        engine = SpeculativeEngine(small, large, config, executor=pool, concurrent_drafts=on)
        request = Request(
            small.chat_prompt_ids(prompt), large.chat_prompt_ids(prompt), max_tokens, GREEDY
        )
        *_, finish = engine.generate(request)
    assert isinstance(finish, FinishEvent)
    return finish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(1)
    proc, url, log = start_server("gemma3-270m", threads=1)
    try:
        small = load_backend("smollm2-135m-instruct")
        large = load_backend(f"openai+{url}?model=large&tokenizer=gemma3-270m")
        questions = [json.loads(line)["problem"] for line in DATA.read_text().splitlines()]
        prompts = [[{"role": "user", "content": q}] for q in questions[: args.prompts]]
        run_once(small, large, prompts[0], 24, on=False)  # warm-up: caches, server, threads
        totals = {True: [0.0, 0.0], False: [0.0, 0.0]}  # on -> [boundary seconds, boundaries]
        identical = 0
        for i, prompt in enumerate(prompts):
            texts = {}
            for on in (i % 2 == 0, i % 2 != 0):  # alternate which side goes first
                finish = run_once(small, large, prompt, args.max_tokens, on)
                totals[on][0] += finish.extra["boundary_seconds"]
                totals[on][1] += finish.extra["boundaries"]
                texts[on] = finish.text
                n, seconds = finish.extra["boundaries"], finish.extra["boundary_seconds"]
                print(
                    f"prompt {i} concurrent={on}: {n:.0f} boundaries, mean "
                    f"{seconds / max(1.0, n):.3f} s, {finish.output_tokens} tokens in "
                    f"{finish.seconds:.1f} s",
                    flush=True,
                )
            identical += texts[True] == texts[False]
        mean = {on: s / max(1.0, n) for on, (s, n) in totals.items()}
        print(f"mean boundary latency sequential: {mean[False]:.3f} s")
        print(f"mean boundary latency concurrent: {mean[True]:.3f} s")
        if not totals[False][1]:
            raise SystemExit("no boundary was reached: raise --max-tokens")
        print(f"ratio concurrent / sequential: {mean[True] / mean[False]:.3f} (target <= 0.65)")
        print(f"identical outputs: {identical}/{len(prompts)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
