"""llama.cpp backend vs transformers backend, measured in one run on the embedded models.

Prints two ratios (both measured in this run, so machine noise hits both sides alike):

* speculative wall time on llama.cpp / on transformers, on the default pair (SmolLM2 small,
  gemma large: text hand-off) and on a same-tokenizer pair (SmolLM2 as both: id hand-off);
  greedy, instruct preset, same prompt and budget. Target <= 0.25.
* small-only throughput of the engine on llama.cpp / llama-cpp-python's own ``Llama.generate``
  on the same model, prompt and number of tokens (greedy). Target >= 0.9.

Usage: python benchmarks/bench_llamacpp.py [--max-tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from langchain_spthink import Request, SamplingParams, SpeculativeEngine, paper_instruct
from langchain_spthink.backends.llamacpp import LlamaCppBackend
from langchain_spthink.backends.transformers import TransformersBackend

GREEDY = SamplingParams(temperature=0.0)
QUESTION = [
    {
        "role": "user",
        "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?",
    }
]


def timed_run(small: Any, large: Any, max_tokens: int) -> tuple[float, Any]:
    engine = SpeculativeEngine(small, large, paper_instruct(begin_tokens=16))
    request = Request(
        small.chat_prompt_ids(QUESTION), large.chat_prompt_ids(QUESTION), max_tokens, GREEDY
    )
    started = time.perf_counter()
    events = list(engine.generate(request))
    return time.perf_counter() - started, events[-1]


def speculative_ratio(pairs: dict[str, tuple[Any, Any]], max_tokens: int, reps: int) -> None:
    for label, ((ls, ll), (ts, tl)) in pairs.items():
        timed_run(ls, ll, 8), timed_run(ts, tl, 8)  # warm-up
        llama_s, hf_s = [], []
        for _ in range(reps):
            seconds, fin_l = timed_run(ls, ll, max_tokens)
            llama_s.append(seconds)
            seconds, fin_t = timed_run(ts, tl, max_tokens)
            hf_s.append(seconds)
        lm, tm = statistics.median(llama_s), statistics.median(hf_s)
        print(
            f"speculative {label:<28} llama.cpp {lm:6.2f} s  transformers {tm:6.2f} s  "
            f"ratio {lm / tm:.3f} (target <= 0.25)  "
            f"delegations {fin_l.delegations}/{fin_t.delegations}"
        )


def throughput_ratio(backend: LlamaCppBackend, max_tokens: int, reps: int) -> None:
    prompt = backend.chat_prompt_ids(QUESTION)
    engine = SpeculativeEngine(backend, None)
    # llama-cpp-python's own loop on a separate context of the same file.
    own = backend._new_context()

    def ours() -> float:
        started = time.perf_counter()
        events = list(engine.generate(Request(prompt, prompt, max_tokens, GREEDY, mode="small")))
        assert events[-1].small.kept_tokens == max_tokens, events[-1]
        return time.perf_counter() - started

    def theirs() -> float:
        own.reset()
        started = time.perf_counter()
        for n, _ in enumerate(own.generate(prompt, top_k=1, temp=0.0, reset=True), 1):
            if n == max_tokens:
                break
        return time.perf_counter() - started

    ours(), theirs()  # warm-up
    ours_s, theirs_s = [], []
    for _ in range(reps):
        ours_s.append(ours())
        theirs_s.append(theirs())
    o, t = statistics.median(ours_s), statistics.median(theirs_s)
    print(
        f"small-only {backend.name:<29} engine {max_tokens / o:6.1f} tok/s  Llama.generate "
        f"{max_tokens / t:6.1f} tok/s  ratio {t / o:.3f} (target >= 0.9)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    l_small = LlamaCppBackend.load("smollm2-135m-instruct", n_ctx=2048)
    l_large = LlamaCppBackend.load("gemma3-270m", n_ctx=2048)
    t_small = TransformersBackend.load("smollm2-135m-instruct")
    t_large = TransformersBackend.load("gemma3-270m")
    speculative_ratio(
        {
            "default pair (text hand-off)": ((l_small, l_large), (t_small, t_large)),
            "SmolLM2 x2 (id hand-off)": ((l_small, l_small), (t_small, t_small)),
        },
        args.max_tokens,
        args.reps,
    )
    throughput_ratio(l_small, args.max_tokens, args.reps)
    throughput_ratio(l_large, args.max_tokens, args.reps)


if __name__ == "__main__":
    main()
