r"""Engine efficiency on the embedded models, measured in one run on the same GSM8K prompts.

(a) **Decoding overhead.** Small-only mode of :class:`SpeculativeEngine` against
    ``model.generate()`` of transformers on the same model (SmolLM2-135M-Instruct), greedy, same
    chat-templated prompts, same number of new tokens (``max_tokens=N`` for the engine;
    ``min_new_tokens=max_new_tokens=N`` for ``generate()``). Both are warmed up first, the runs
    alternate (engine first on even repetitions, ``generate()`` first on odd ones), and each
    prompt's time is the best of its repetitions (as ``timeit`` does: the minimum is the run least
    disturbed by other processes on a shared machine). Throughput = new tokens / wall time,
    prefill included; the overall ratio is total tokens / total best times. Target: >= 0.95.

(b) **Forwarding overhead.** For speculative runs, the tokens actually pushed through both models
    (``FinishEvent.small.forwarded_tokens + FinishEvent.large.forwarded_tokens``) divided by the
    *ideal* count, per model ``m``::

        ideal_m = prompt_m + generated_m + catchup_m

    * ``prompt_m``: the prompt, forwarded once (``ModelUsage.prompt_tokens``), if ``m`` ran at
      all (a model that never wrote or drafted forwards nothing);
    * ``generated_m``: every token ``m`` sampled, kept or not (``ModelUsage.generated_tokens``:
      its own output, its rejected drafts, discarded draft tails, EOS), each counted as forwarded
      once by its writer;
    * ``catchup_m``: the seam catch-up. Every time ``m`` starts a step (writes or drafts) at
      output offset ``p`` while its cache is valid only up to offset ``q < p`` (the end of its
      own last kept text, or the start of its last rejected draft), it must forward the text
      others appended in between: ``len(enc_m(out[:p])) - len(enc_m(out[:q]))`` tokens,
      ``enc_m`` being ``m``'s tokenizer applied to the output text (:class:`SeamLedger`).

    The ideal is slightly generous to the engine: the last token of a step that is discarded
    (a rejected draft's last token, EOS, the final token) never needs a forward pass but is
    counted. Target: ratio <= 1.10.

Run: ``python benchmarks/bench_engine.py`` (``make bench``); ``--help`` for the knobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import torch

from langchain_spthink import (
    FinishEvent,
    Request,
    SamplingParams,
    SpeculativeEngine,
    TextEvent,
    preset,
)
from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.events import Event

DATA = Path(__file__).resolve().parents[1] / "langchain_spthink" / "data" / "gsm8k.jsonl"
GREEDY = SamplingParams(temperature=0.0)


def gsm8k_questions(n: int, offset: int = 0) -> list[str]:
    with DATA.open() as fh:
        rows = [json.loads(line) for line in fh]
    return [str(r["problem"]) for r in rows[offset : offset + n]]


def prompt_ids(backend: TransformersBackend, question: str) -> list[int]:
    return backend.chat_prompt_ids([{"role": "user", "content": question}])


# ---------------------------------------------------------------------------- (a)
@dataclass
class ThroughputRow:
    prompt: int
    prompt_tokens: int
    new_tokens: int
    engine_s: list[float] = field(default_factory=list)
    generate_s: list[float] = field(default_factory=list)
    same_tokens: bool = True


def engine_small_only(
    engine: SpeculativeEngine, ids: Sequence[int], n: int
) -> tuple[float, FinishEvent]:
    request = Request(ids, ids, max_tokens=n, sampling=GREEDY, mode="small")
    started = time.perf_counter()
    finish = None
    for event in engine.generate(request):
        if isinstance(event, FinishEvent):
            finish = event
    elapsed = time.perf_counter() - started
    assert finish is not None
    return elapsed, finish


def hf_generate(
    backend: TransformersBackend, ids: Sequence[int], n: int
) -> tuple[float, list[int]]:
    model = backend.model
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=backend.device)
    eos = sorted(backend.eos_ids)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    elapsed = time.perf_counter() - started
    return elapsed, [int(t) for t in out[0, input_ids.shape[1] :]]


def bench_throughput(
    small: TransformersBackend, questions: list[str], n: int, reps: int
) -> list[ThroughputRow]:
    engine = SpeculativeEngine(small, None, preset("reasoning", temperature=0.0))
    prompts = [prompt_ids(small, q) for q in questions]
    # Warm-up: both paths once on the first prompt.
    engine_small_only(engine, prompts[0], 8)
    hf_generate(small, prompts[0], 8)
    rows = []
    for i, ids in enumerate(prompts):
        _, finish = engine_small_only(engine, ids, n)
        k = finish.small.kept_tokens  # < n only if the model ended its answer early
        rows.append(ThroughputRow(i, len(ids), k))
    for rep in range(reps):
        for row, ids in zip(rows, prompts, strict=True):
            order: list[str] = ["engine", "generate"] if rep % 2 == 0 else ["generate", "engine"]
            for which in order:
                if which == "engine":
                    seconds, finish = engine_small_only(engine, ids, row.new_tokens)
                    engine_text = finish.text
                    row.engine_s.append(seconds)
                else:
                    seconds, hf_ids = hf_generate(small, ids, row.new_tokens)
                    row.generate_s.append(seconds)
            row.same_tokens &= small.decode(hf_ids) == engine_text
    return rows


# ---------------------------------------------------------------------------- (b)
@dataclass
class ForwardingRow:
    pair: str
    preset: str
    prompt: int
    output_tokens: int
    large_share: float
    delegations: int
    stop: str
    forwarded: dict[str, int]
    prompt_tokens: dict[str, int]
    generated: dict[str, int]
    catchup: dict[str, int]
    seconds: float

    @property
    def actual(self) -> int:
        return sum(self.forwarded.values())

    @property
    def ideal(self) -> int:
        return (
            sum(self.prompt_tokens.values())
            + sum(self.generated.values())
            + sum(self.catchup.values())
        )


class SeamLedger:
    """Ideal seam catch-up, from the output text at the moments each model starts a step.

    The engine's events give the output text and who wrote it; the moments a model starts a
    step (writing live or drafting) are observed by wrapping its session's ``stream()``: these are
    the algorithm's decisions (who writes when), the same in any implementation. What is
    *forwarded* is not observed here: it comes from ``FinishEvent``.
    """

    def __init__(self, encoders: dict[str, Callable[[str], list[int]]]) -> None:
        self.encoders = encoders
        self.text = ""
        self.seen = dict.fromkeys(encoders, 0)  # output offset each model's cache is valid to
        self.catchup = dict.fromkeys(encoders, 0)

    def step_starts(self, role: str) -> None:
        pos, seen = len(self.text), self.seen[role]
        if pos != seen:
            encode = self.encoders[role]
            before = len(encode(self.text[:seen])) if seen else 0
            self.catchup[role] += max(0, len(encode(self.text)) - before)
        self.seen[role] = pos

    def on_event(self, event: Event) -> None:
        if isinstance(event, TextEvent):
            self.text += event.text
            if event.author in self.seen:  # the writer's cache now covers its own text
                self.seen[event.author] = len(self.text)


class _SpySession:
    def __init__(self, session: Any, on_step: Callable[[], None]) -> None:
        self._session = session
        self._on_step = on_step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def stream(self, max_new: int) -> Iterator[int]:
        self._on_step()
        yield from self._session.stream(max_new)


class _SpyBackend:
    def __init__(self, backend: TransformersBackend, on_step: Callable[[], None]) -> None:
        self._backend = backend
        self._on_step = on_step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def new_session(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> _SpySession:
        return _SpySession(self._backend.new_session(prompt_ids, sampling), self._on_step)


def speculative_run(
    pair: str,
    preset_name: str,
    small: TransformersBackend,
    large: TransformersBackend,
    question: str,
    index: int,
    max_tokens: int,
) -> ForwardingRow:
    ledger = SeamLedger({"small": small.encode, "large": large.encode})
    engine = SpeculativeEngine(
        _SpyBackend(small, lambda: ledger.step_starts("small")),  # type: ignore[arg-type]
        _SpyBackend(large, lambda: ledger.step_starts("large")),  # type: ignore[arg-type]
        # The hand-off's forwarding, one pass per token (verified steps forward proposals too:
        # benchmarks/bench_verified_steps.py measures them).
        preset(preset_name, temperature=0.0, verified_large=False),
    )
    request = Request(
        prompt_ids(small, question),
        prompt_ids(large, question),
        max_tokens=max_tokens,
        sampling=GREEDY,
    )
    started = time.perf_counter()
    finish = None
    for event in engine.generate(request):
        ledger.on_event(event)
        if isinstance(event, FinishEvent):
            finish = event
    seconds = time.perf_counter() - started
    assert finish is not None
    usage = {"small": finish.small, "large": finish.large}
    return ForwardingRow(
        pair=pair,
        preset=preset_name,
        prompt=index,
        output_tokens=finish.output_tokens,
        large_share=finish.large_share,
        delegations=finish.delegations,
        stop=finish.stop_reason,
        forwarded={r: u.forwarded_tokens for r, u in usage.items()},
        prompt_tokens={r: u.prompt_tokens if u.generated_tokens else 0 for r, u in usage.items()},
        generated={r: u.generated_tokens for r, u in usage.items()},
        catchup=ledger.catchup,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="GSM8K questions (default 4)")
    parser.add_argument("--offset", type=int, default=0, help="first GSM8K row (default 0)")
    parser.add_argument("--new-tokens", type=int, default=48, help="(a) tokens per run")
    parser.add_argument("--reps", type=int, default=5, help="(a) repetitions per prompt")
    parser.add_argument("--max-tokens", type=int, default=200, help="(b) budget per run")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-forwarding", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw rows to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass

    print(
        f"# bench_engine  {date.today().isoformat()}  {platform.processor() or platform.machine()}"
        f"  cpus={os.cpu_count()} torch_threads={torch.get_num_threads()}"
        f"  torch {torch.__version__}",
        flush=True,
    )
    questions = gsm8k_questions(args.prompts, args.offset)
    t0 = time.perf_counter()
    small = TransformersBackend.load("smollm2-135m-instruct")
    large = TransformersBackend.load("gemma3-270m")
    print(f"models loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    raw: dict[str, Any] = {}

    if not args.skip_throughput:
        rows = bench_throughput(small, questions, args.new_tokens, args.reps)
        print("\n## (a) small-only engine vs model.generate(), greedy, SmolLM2-135M-Instruct")
        print("| prompt | prompt tok | new tok | engine tok/s | generate() tok/s | ratio | same |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            e = row.new_tokens / min(row.engine_s)
            g = row.new_tokens / min(row.generate_s)
            print(
                f"| {row.prompt} | {row.prompt_tokens} | {row.new_tokens} | {e:.2f} | {g:.2f} | "
                f"{e / g:.3f} | {'yes' if row.same_tokens else 'NO'} |"
            )
        tokens = sum(r.new_tokens for r in rows)
        engine_rate = tokens / sum(min(r.engine_s) for r in rows)
        hf_rate = tokens / sum(min(r.generate_s) for r in rows)
        median_ratio = sum(statistics.median(r.generate_s) for r in rows) / sum(
            statistics.median(r.engine_s) for r in rows
        )
        print(
            f"| **all** | | {tokens} | **{engine_rate:.2f}** | **{hf_rate:.2f}** | "
            f"**{engine_rate / hf_rate:.3f}** | |"
        )
        print(f"(best of {args.reps} runs each; ratio of median times: {median_ratio:.3f})")
        raw["throughput"] = [asdict(r) for r in rows]
        raw["throughput_ratio"] = engine_rate / hf_rate

    if not args.skip_forwarding:
        runs: list[ForwardingRow] = []
        pairs = [
            ("smollm2 -> gemma3 (text hand-off)", "instruct", small, large),
            ("smollm2 -> smollm2 (id hand-off)", "instruct", small, small),
        ]
        for name, preset_name, s, lg in pairs:
            for i, q in enumerate(questions):
                runs.append(speculative_run(name, preset_name, s, lg, q, i, args.max_tokens))
        print("\n## (b) tokens forwarded by both models / ideal, greedy speculative runs")
        print(
            "| pair | preset | prompt | out tok | large % | deleg. | forwarded (s+l) | "
            "ideal (s+l) | ratio |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in runs:
            print(
                f"| {r.pair} | {r.preset} | {r.prompt} | {r.output_tokens} | "
                f"{100 * r.large_share:.0f} | {r.delegations} | "
                f"{r.forwarded['small']}+{r.forwarded['large']} | "
                f"{r.prompt_tokens['small'] + r.generated['small'] + r.catchup['small']}+"
                f"{r.prompt_tokens['large'] + r.generated['large'] + r.catchup['large']} | "
                f"{r.actual / r.ideal:.3f} |"
            )
        for name, preset_name, _, _ in pairs:
            group = [r for r in runs if r.pair == name and r.preset == preset_name]
            actual, ideal = sum(r.actual for r in group), sum(r.ideal for r in group)
            print(
                f"| **{name}** | **{preset_name}** | all | "
                f"{sum(r.output_tokens for r in group)} | | "
                f"{sum(r.delegations for r in group)} | {actual} | {ideal} | "
                f"**{actual / ideal:.3f}** |"
            )
        raw["forwarding"] = [{**asdict(r), "actual": r.actual, "ideal": r.ideal} for r in runs]
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
