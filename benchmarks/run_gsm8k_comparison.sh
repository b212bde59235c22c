#!/usr/bin/env bash
# Measured comparison on the embedded pair (docs/evaluation.md): SmolLM2-135M-Instruct alone,
# gemma-3-270m alone, and speculative thinking (small writes, large writes the reflective steps),
# on the first LIMIT GSM8K test problems with the paper's prompt, then the Table-2 summary and the
# plots in docs/eval/.
#
# Greedy decoding by default so that the three runs are reproducible; for the paper's sampling
# (temperature 0.6, top-p 0.95, top-k 50, seeded) averaged over 4 samples use
# SAMPLING="--samples 4". EXTRA passes more arguments to every `spthink eval`.
# Resumable: after an interruption, run it again; finished answers are skipped.
#
#   benchmarks/run_gsm8k_comparison.sh                 # 50 problems, 384 tokens per answer
#   LIMIT=3 OUT=/tmp/gsm8k-probe benchmarks/run_gsm8k_comparison.sh   # cost probe
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a SPTHINK <<< "${SPTHINK:-.venv/bin/spthink}"
read -r -a SAMPLING <<< "${SAMPLING---greedy}"
read -r -a EXTRA <<< "${EXTRA:-}"
LIMIT=${LIMIT:-50}
MAX_TOKENS=${MAX_TOKENS:-384}
PRESET=${PRESET:-instruct}
OUT=${OUT:-benchmarks/runs}
PLOTS=${PLOTS:-docs/eval}
mkdir -p "$OUT" "$PLOTS"

common=(--dataset gsm8k --limit "$LIMIT" --max-tokens "$MAX_TOKENS" --preset "$PRESET")
for mode in small large speculative; do
  start=$(date +%s)
  "${SPTHINK[@]}" eval "${common[@]}" "${SAMPLING[@]}" "${EXTRA[@]}" --mode "$mode" --out "$OUT/gsm8k-$mode.jsonl"
  echo "== $mode: $(( $(date +%s) - start )) s (model loading included)" >&2
done

"${SPTHINK[@]}" report "$OUT/gsm8k-small.jsonl" "$OUT/gsm8k-large.jsonl" \
  "$OUT/gsm8k-speculative.jsonl" --plots "$PLOTS" | tee "$PLOTS/gsm8k-comparison.md"
