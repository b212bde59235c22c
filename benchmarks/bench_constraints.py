"""Cost of constrained decoding per token: llguidance mask vs the model's own forward.

For each embedded model (SmolLM2-135M: 49152 ids; gemma-3-270m: 262144 ids) this decodes
structured answers under a JSON-schema grammar (greedy, the chat model's path) and times, per
generated token, (a) the llguidance mask computation (``fill_next_token_bitmask``), (b) applying it
to the logits row (unpack + ``masked_fill``) and (c) the model forward. Also reported: building
the llguidance tokenizer (once per backend, cached) and compiling a grammar (once per request).

Usage: python benchmarks/bench_constraints.py [--models smollm2-135m-instruct gemma3-270m]
       [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import llguidance.numpy
import torch

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.sampling import SamplingParams, sample_token
from langchain_spthink.tools.constraints import GrammarConstraint, json_grammar, llg_tokenizer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": 200},
        "value": {"type": "integer"},
        "unit": {"enum": ["apples", "dollars", "km"]},
        "steps": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
    },
    "required": ["reasoning", "value", "unit", "steps"],
}
PROMPT = [
    {
        "role": "user",
        "content": "Tom has 3 bags with 4 apples each. How many apples? Answer in JSON with "
        "reasoning, value, unit and steps.",
    }
]


class Timed(GrammarConstraint):
    """The constraint with its two mask parts timed."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.fill: list[float] = []
        self.apply: list[float] = []

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bits)
        t1 = time.perf_counter()
        out = super().mask(logits)  # fills again (cheap) + unpack + masked_fill
        t2 = time.perf_counter()
        self.fill.append(t1 - t0)
        self.apply.append((t2 - t1) - (t1 - t0))
        return out


def run(name: str, tokens: int, repeats: int) -> None:
    backend = TransformersBackend.load(name)
    t0 = time.perf_counter()
    tokenizer = llg_tokenizer(backend)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = json_grammar(SCHEMA)
    constraint = Timed(tokenizer, grammar)
    compile_s = time.perf_counter() - t0
    prompt = backend.chat_prompt_ids(PROMPT)
    fill: list[float] = []
    apply: list[float] = []
    forward: list[float] = []
    for _ in range(repeats):
        constraint = Timed(tokenizer, grammar)
        session = backend.new_session(prompt, SamplingParams(temperature=0))
        session.next_logits()  # prefill outside the timing
        session.truncate(len(prompt))
        for _ in range(tokens):
            t0 = time.perf_counter()
            logits = session.next_logits()
            forward.append(time.perf_counter() - t0)
            token = sample_token(constraint.mask(logits), session.sampling)
            constraint.accept(token)
            session.extend([token])
            if token in backend.eos_ids or constraint.done:
                break
        session.close()
        fill += constraint.fill
        apply += constraint.apply

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1e3:.3f} ms, max {max(values) * 1e3:.3f} ms"

    print(f"{name}: vocab {tokenizer.vocab_size}, {len(fill)} constrained tokens")
    print(f"  llguidance tokenizer build (once per backend): {build:.2f} s")
    print(f"  grammar compile + matcher (once per request):  {compile_s * 1e3:.1f} ms")
    print(f"  mask computation (llguidance):                 {ms(fill)}")
    print(f"  mask application (unpack + masked_fill):       {ms(apply)}")
    print(f"  model forward, one token:                      {ms(forward)}")
    masks = [f + a for f, a in zip(fill, apply, strict=True)]
    share = statistics.median(masks) / statistics.median(forward)
    print(f"  mask / forward (medians):                      {share:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for name in args.models:
        run(name, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
