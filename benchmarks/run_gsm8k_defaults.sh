#!/usr/bin/env bash
# Choosing ONE default (preset, policy) for the chat model, the CLI, the server and the eval by
# measurement: the first LIMIT GSM8K test problems, greedy, the same token budget, on the embedded
# pair (both on the llama.cpp backend: same GGUF weights, ~4x faster than transformers on CPU).
# Runs small-only, large-only and speculative thinking for each candidate, then one report table.
# Resumable: run it again after an interruption; finished answers are skipped.
#
#   benchmarks/run_gsm8k_defaults.sh                      # 50 problems, 384 tokens per answer
#   LIMIT=3 OUT=/tmp/defaults benchmarks/run_gsm8k_defaults.sh   # cost probe
set -euo pipefail
cd "$(dirname "$0")/.."

SPTHINK=${SPTHINK:-.venv/bin/spthink}
LIMIT=${LIMIT:-50}
MAX_TOKENS=${MAX_TOKENS:-384}
OUT=${OUT:-benchmarks/runs/defaults}
mkdir -p "$OUT"
models=(--small llamacpp:smollm2-135m-instruct --large llamacpp:gemma3-270m)
common=(--dataset gsm8k --limit "$LIMIT" --max-tokens "$MAX_TOKENS" --greedy -q "${models[@]}")

run() {  # NAME ARGS...: one eval run, timed
  local name=$1
  shift
  local start
  start=$(date +%s)
  "$SPTHINK" eval "${common[@]}" "$@" --out "$OUT/$name.jsonl"
  echo "== $name: $(( $(date +%s) - start )) s (model loading included)" >&2
}

run small --mode small
run large --mode large
run instruct-keyword --mode speculative --preset instruct
run reasoning-keyword --mode speculative --preset reasoning
run reasoning-judge --mode speculative --preset reasoning --policy judge

"$SPTHINK" report "$OUT"/{small,large,instruct-keyword,reasoning-keyword,reasoning-judge}.jsonl \
  | tee "$OUT/comparison.md"
