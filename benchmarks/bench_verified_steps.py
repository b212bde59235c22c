r"""Draft-verified large steps: the large model's writing with verification vs without, one run.

What runs: the engine (:class:`~langchain_spthink.engine.api.SpeculativeEngine`) on the first
``--problems`` GSM8K test problems (``langchain_spthink/data/gsm8k.jsonl``, chat-templated),
greedy, ``--max-tokens`` per answer, with the ``instruct`` preset (``begin`` + ``not_reasoning``:
the large model writes the opening and a step at every boundary, so it writes a lot), once with
``verified_large=True`` and once with ``verified_large=False`` (plain: one large forward per
token). The two sides alternate (per prompt, and the order flips each repeat); each prompt's
numbers come from its fastest run of ``--repeats`` (the run least disturbed by other processes).

Pairs (``--pairs``):

* ``a``: SmolLM2-135M-Instruct (``smollm2-135m-instruct``, transformers) as both models. The
  proposals are the large model's own greedy tokens, so acceptance is ~100%: the upper bound of
  what verification saves on this CPU. Target: large-model time ratio <= 0.25.
* ``b``: self-speculative: SmolLM2-135M as the large model, ``large.first_layers(n)`` (its first
  ``n`` of 30 decoder layers, weights shared) as the small model, for each ``n`` of
  ``--cut-layers`` (default 20, about 2/3; try ``20,24,27``). Target at 20 layers: <= 0.8.
* ``c``: the default pair (SmolLM2-135M small, gemma-3-270m large): different tokenizers, so
  nothing can be verified; one short request prints ``FinishEvent.large_decoding`` and
  ``large_decoding_reason``.

Columns (sums over the prompts, each prompt's fastest run):

* ``large s``: the large model's own time, ``FinishEvent.large.seconds`` minus
  ``extra["proposal_seconds"]`` (a verified step's time includes the small model proposing);
* ``prop s``: ``extra["proposal_seconds"]``, the small model proposing;
* ``wall s``: ``FinishEvent.seconds``, the whole request (the small model's own steps too);
* ``L tok``: tokens the large model wrote (``large.generated_tokens``); ``passes``: its decode
  forwards (``large.decode_passes``); ``pass/tok``: passes per large token (1 in plain decoding);
* ``accept``: ``large.acceptance_rate`` (accepted / proposed); ``mean k``: proposed tokens per
  verification (``large.proposed_tokens / large.decode_passes``; adaptive, see
  ``engine.decisions.next_proposal_length``); ``prop passes``: the small model's forwards spent
  proposing (``small.decode_passes - small.generated_tokens``: the proposer counts passes, not
  generated tokens);
* ``same``: whether the output text equals plain decoding's. Greedy verification writes the
  same ids up to the numerics of a k-token forward; where the text differs the script prints the
  first differing token (texts re-tokenized with the shared tokenizer), who wrote it in each run,
  and the large model's top-2 logit margin there (one full forward of prompt + common prefix): a
  flip at a margin near 0 is a near-tie, not a bug.

Ratios printed per pair: verified / plain for the large-model time (1) and the wall time (3).

GPU model. On a GPU a forward of k tokens costs about what one token's does (decoding is
memory-bound), which a CPU does not give (its k-token forward costs more: compare the ``large s
per pass`` lines). With ``r = t_small / t_large`` (``--gpu-ratio``, default 0.05: the paper's
1.5B / 32B pair) and every forward counted as one unit of its model's time::

    large writing:  T_verified / T_plain = (P_v + r * Q_v) / P_p
    whole request:  T_verified / T_plain = (P_v + r * (Q_v + S_v)) / (P_p + r * S_p)

where ``P_v`` = the large model's passes in the verified run, ``Q_v`` = the small model's
proposing passes, ``P_p`` = the large model's passes (= its tokens) in the plain run, ``S_v`` /
``S_p`` = the small model's passes for its own steps. Prompt prefill and the engine's own time are
left out. The ratios are printed with ``r = --gpu-ratio`` (a small model as cheap as the paper's
with this pair's measured acceptance) and with the pair's own ``r`` (weights a forward reads:
decoder layers + output head; 1 for pair ``a``, about ``(n + head) / (30 + head)`` for a cut).
The measured acceptance of pair ``a`` is the ceiling (a perfect proposer); pair ``b``'s is what a
cut model gives; a real small model (e.g. 1.5B for 32B) lands in between. Acceptance counts
every proposed token, so it is below the per-token agreement of the two models: after the first
rejected token the rest of a proposal is lost (measured on the 20-layer cut: teacher-forced
agreement 0.20 on the full model's greedy 64-token answers to two GSM8K problems, simulated
acceptance with the adaptive length 0.12; the engine measured 0.10).

Run: ``python benchmarks/bench_verified_steps.py`` (``--help`` for the knobs). The first lines
print the machine (CPU model, cores, load average, threads) and the command; quote them with the
numbers, and rerun on a quiet machine before trusting a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from langchain_spthink.backends.transformers import TransformersBackend
from langchain_spthink.engine.api import SpeculativeEngine
from langchain_spthink.engine.config import paper_instruct
from langchain_spthink.engine.events import FinishEvent, TextEvent
from langchain_spthink.engine.sampling import SamplingParams
from langchain_spthink.engine.steps import Request
from langchain_spthink.threads import available_cores, default_threads, use_torch_threads

DATA = Path(__file__).resolve().parents[1] / "langchain_spthink" / "data" / "gsm8k.jsonl"
SIDES = ("verified", "plain")


@dataclass
class Result:
    """One request's numbers."""

    finish: FinishEvent
    spans: list[tuple[int, int, str]]  # (start, end, author) of the output text

    @property
    def proposal_seconds(self) -> float:
        return self.finish.extra.get("proposal_seconds", 0.0)

    @property
    def large_seconds(self) -> float:
        return self.finish.large.seconds - self.proposal_seconds

    @property
    def proposal_passes(self) -> int:
        small = self.finish.small
        return small.decode_passes - small.generated_tokens

    def author(self, char: int) -> str:
        for start, end, who in self.spans:
            if start <= char < end:
                return who
        return "end of output"


@dataclass
class Totals:
    """Sums over prompts of one side's fastest runs."""

    wall: float = 0.0
    large: float = 0.0
    proposal: float = 0.0
    large_tokens: int = 0
    passes: int = 0
    proposed: int = 0
    accepted: int = 0
    proposal_passes: int = 0
    small_passes: int = 0  # the small model's own steps (not proposing)
    output_tokens: int = 0
    decoding: set[str] = field(default_factory=set)

    def add(self, r: Result) -> None:
        f = r.finish
        self.wall += f.seconds
        self.large += r.large_seconds
        self.proposal += r.proposal_seconds
        self.large_tokens += f.large.generated_tokens
        self.passes += f.large.decode_passes
        self.proposed += f.large.proposed_tokens
        self.accepted += f.large.accepted_tokens
        self.proposal_passes += r.proposal_passes
        self.small_passes += f.small.generated_tokens
        self.output_tokens += f.output_tokens
        self.decoding.add(f.large_decoding)


def _prompts(n: int) -> list[str]:
    lines = DATA.read_text().splitlines()[:n]
    return [json.loads(line)["problem"] for line in lines]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(when: str, threads: int) -> str:
    one, five, fifteen = os.getloadavg()
    return (
        f"{when}: {_cpu_model()}, {available_cores()} cores, torch {torch.__version__} "
        f"({threads} threads per model), load average {one:.2f} {five:.2f} {fifteen:.2f} "
        "(1/5/15 min)"
    )


def _run(engine: SpeculativeEngine, ids: list[int], max_tokens: int) -> Result:
    request = Request(
        small_prompt=ids,
        large_prompt=ids,
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=0.0),
    )
    spans: list[tuple[int, int, str]] = []
    finish: FinishEvent | None = None
    at = 0
    for event in engine.generate(request):
        if isinstance(event, TextEvent) and event.text:
            spans.append((at, at + len(event.text), event.author))
            at += len(event.text)
        elif isinstance(event, FinishEvent):
            finish = event
    assert finish is not None
    return Result(finish, spans)


def _engines(
    small: TransformersBackend, large: TransformersBackend
) -> dict[str, SpeculativeEngine]:
    return {
        side: SpeculativeEngine(small, large, paper_instruct(verified_large=side == "verified"))
        for side in SIDES
    }


def _measure(
    engines: dict[str, SpeculativeEngine],
    prompt_ids: list[list[int]],
    max_tokens: int,
    repeats: int,
) -> dict[str, list[Result]]:
    best: dict[str, list[Result | None]] = {side: [None] * len(prompt_ids) for side in SIDES}
    for rep in range(repeats):
        for i, ids in enumerate(prompt_ids):
            order = SIDES if (rep + i) % 2 == 0 else SIDES[::-1]
            now: dict[str, float] = {}
            for side in order:
                r = _run(engines[side], ids, max_tokens)
                now[side] = r.finish.seconds
                old = best[side][i]
                if old is None or r.finish.seconds < old.finish.seconds:
                    best[side][i] = r
            print(
                f"  repeat {rep + 1} prompt {i}: "
                + ", ".join(f"{side} {now[side]:.2f} s" for side in order),
                flush=True,
            )
    return {side: [r for r in rs if r is not None] for side, rs in best.items()}


def _flip(large: TransformersBackend, prompt: list[int], verified: Result, plain: Result) -> str:
    """Where the verified text first differs from plain decoding, and the large model's margin."""
    tv, tp = verified.finish.text, plain.finish.text
    ids_v, ids_p = large.encode(tv), large.encode(tp)
    j = 0
    while j < min(len(ids_v), len(ids_p)) and ids_v[j] == ids_p[j]:
        j += 1
    char = len(large.decode(ids_p[:j]))
    who = f"written by {verified.author(char)} (verified run) / {plain.author(char)} (plain run)"
    if j >= min(len(ids_v), len(ids_p)):
        return f"token {j} (char {char}): one output is a prefix of the other, {who}"
    use_torch_threads(large.threads)
    with torch.inference_mode():
        out = large.model(input_ids=torch.tensor([prompt + ids_p[:j]], device=large.device))
    logits = out.logits[0, -1].float()
    top = torch.topk(logits, 2)
    (l1, l2), (t1, t2) = top.values.tolist(), top.indices.tolist()
    gap = float(logits[ids_p[j]] - logits[ids_v[j]])
    return (
        f"token {j} (char {char}), {who}: plain {large.decode([ids_p[j]])!r}, verified "
        f"{large.decode([ids_v[j]])!r}; large model's top-2 there {large.decode([t1])!r} / "
        f"{large.decode([t2])!r}, margin {l1 - l2:.4f} (plain's minus verified's logit "
        f"{gap:+.4f}; re-tokenized text, full forward)"
    )


def _gpu(v: Totals, p: Totals, r: float) -> tuple[float, float]:
    """The GPU model's ratios (large writing, whole request); see the module docstring."""
    writing = (v.passes + r * v.proposal_passes) / max(p.passes, 1)
    request = (v.passes + r * (v.proposal_passes + v.small_passes)) / max(
        p.passes + r * p.small_passes, 1e-9
    )
    return writing, request


def _weights_per_forward(backend: TransformersBackend) -> int:
    """Parameters a decode forward reads: the decoder layers and the output head.

    A memory-bound GPU forward costs about the bytes of weights it reads, so the ratio of two
    models' counts is their ``t_small / t_large`` (a cut model shares the head and the first
    layers, but reads them in its own forward).
    """
    model = backend.model
    layers = getattr(getattr(model, "model", None), "layers", None)
    head = getattr(model, "lm_head", None)
    if not isinstance(layers, torch.nn.ModuleList) or not isinstance(head, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in layers.parameters()) + sum(p.numel() for p in head.parameters())


def _pair(
    label: str,
    small: TransformersBackend,
    large: TransformersBackend,
    prompt_ids: list[list[int]],
    args: argparse.Namespace,
    target: str,
    gpu_rows: list[str],
) -> None:
    print(f"\n## pair {label}: small {small.name}, large {large.name}", flush=True)
    engines = _engines(small, large)
    for side in SIDES:  # warm-up
        _run(engines[side], prompt_ids[0], 16)
    best = _measure(engines, prompt_ids, args.max_tokens, args.repeats)
    totals = {side: Totals() for side in SIDES}
    for side in SIDES:
        for r in best[side]:
            totals[side].add(r)
    same = [rv.finish.text == rp.finish.text for rv, rp in zip(*best.values(), strict=True)]
    print(
        "| side | decoding | wall s | large s | prop s | L tok | passes | pass/tok | accept "
        "| mean k | prop passes | out tok | same text |"
    )
    print(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    )
    for side in SIDES:
        t = totals[side]
        accept = f"{t.accepted / t.proposed:.1%}" if t.proposed else "-"
        mean_k = f"{t.proposed / t.passes:.2f}" if t.proposed and t.passes else "-"
        print(
            f"| {side} | {'/'.join(sorted(t.decoding))} | {t.wall:.2f} | {t.large:.2f} | "
            f"{t.proposal:.2f} | {t.large_tokens} | {t.passes} | "
            f"{t.passes / max(t.large_tokens, 1):.3f} | {accept} | {mean_k} | "
            f"{t.proposal_passes} | {t.output_tokens} | "
            f"{f'{sum(same)}/{len(same)}' if side == 'verified' else ''} |"
        )
    v, p = totals["verified"], totals["plain"]
    print(
        f"large s per pass: verified {v.large / max(v.passes, 1) * 1000:.1f} ms, "
        f"plain {p.large / max(p.passes, 1) * 1000:.1f} ms"
    )
    print(
        f"ratio verified/plain: large-model time (1) **{v.large / p.large:.3f}** ({target}), "
        f"wall time (3) {v.wall / p.wall:.3f}; proposal time {v.proposal:.2f} s "
        f"= {v.proposal / v.wall:.1%} of the verified wall time"
    )
    per_prompt = []
    for i, (rv, rp) in enumerate(zip(best["verified"], best["plain"], strict=True)):
        rate = rv.finish.large.acceptance_rate
        per_prompt.append(
            f"{i}: {rv.large_seconds / max(rp.large_seconds, 1e-9):.2f}"
            f" (accept {'-' if rate is None else f'{rate:.0%}'})"
        )
    print("per prompt, large-time ratio: " + ", ".join(per_prompt))
    for i, ok in enumerate(same):
        if not ok:
            print(
                f"text differs, prompt {i}: "
                + _flip(large, prompt_ids[i], best["verified"][i], best["plain"][i])
            )
    writing, request = _gpu(v, p, args.gpu_ratio)
    own_r = _weights_per_forward(small) / _weights_per_forward(large)
    own_writing, own_request = _gpu(v, p, own_r)
    gpu_rows.append(
        f"| {label} | {v.accepted / max(v.proposed, 1):.1%} | "
        f"{v.proposed / max(v.passes, 1):.2f} | {v.passes / max(v.large_tokens, 1):.3f} | "
        f"**{writing:.3f}** | {request:.3f} | {own_r:.2f} | {own_writing:.3f} | "
        f"{own_request:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=5, help="GSM8K problems (default 5)")
    parser.add_argument(
        "--max-tokens", type=int, default=160, help="tokens per answer (default 160)"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="repeats, sides alternated, best taken (default 2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per model (default: the package's default_threads())",
    )
    parser.add_argument("--pairs", default="a,b,c", help="pairs to run, of a,b,c (default a,b,c)")
    parser.add_argument(
        "--cut-layers",
        default="20",
        help="pair b: the small model's decoder layers, comma-separated (default 20; "
        "e.g. 20,24,27)",
    )
    parser.add_argument(
        "--gpu-ratio",
        type=float,
        default=0.05,
        help="GPU model: t_small / t_large per forward (default 0.05, the paper's 1.5B/32B)",
    )
    args = parser.parse_args()
    pairs = [x.strip() for x in args.pairs.split(",") if x.strip()]
    if unknown := set(pairs) - {"a", "b", "c"}:
        parser.error(f"unknown pairs {sorted(unknown)}; choose of a, b, c")
    cuts = [int(x) for x in args.cut_layers.split(",") if x.strip()]
    threads = args.threads or default_threads()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    print(_machine("start", threads))
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print(
        f"{args.problems} GSM8K problems, greedy, instruct preset, max_tokens={args.max_tokens}, "
        f"verified_large True vs False alternating, best of {args.repeats} per prompt",
        flush=True,
    )
    started = time.perf_counter()
    smol = TransformersBackend.load("smollm2-135m-instruct", threads=threads)
    prompts = _prompts(args.problems)
    prompt_ids = [smol.chat_prompt_ids([{"role": "user", "content": q}]) for q in prompts]
    gpu_rows: list[str] = []
    if "a" in pairs:
        _pair("a (same model)", smol, smol, prompt_ids, args, "target <= 0.25", gpu_rows)
    if "b" in pairs:
        for n in cuts:
            target = "target <= 0.8" if n == 20 else "no target"
            cut = smol.first_layers(n)
            _pair(f"b (first {n} layers)", cut, smol, prompt_ids, args, target, gpu_rows)
    if "c" in pairs:
        gemma = TransformersBackend.load("gemma3-270m", threads=threads)
        print(f"\n## pair c: small {smol.name}, large {gemma.name}")
        ids_large = gemma.chat_prompt_ids([{"role": "user", "content": prompts[0]}])
        engine = SpeculativeEngine(smol, gemma, paper_instruct(verified_large=True))
        request = Request(
            small_prompt=prompt_ids[0],
            large_prompt=ids_large,
            max_tokens=16,
            sampling=SamplingParams(temperature=0.0),
        )
        finish = [e for e in engine.generate(request) if isinstance(e, FinishEvent)][-1]
        print(
            f"not applicable: large_decoding={finish.large_decoding!r} "
            f"({finish.large_decoding_reason}); the large model decodes one token per pass"
        )
    if gpu_rows:
        print(
            f"\n## GPU model (a k-token forward costs one token's; t_small/t_large = "
            f"{args.gpu_ratio})"
        )
        print(
            f"| pair | acceptance | mean k | passes/large token | large writing, "
            f"r={args.gpu_ratio} | request, r={args.gpu_ratio} | own r | large writing, own r "
            "| request, own r |"
        )
        print("| --- |" + " ---: |" * 8)
        for row in gpu_rows:
            print(row)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    print(_machine("end", threads))


if __name__ == "__main__":
    main()
