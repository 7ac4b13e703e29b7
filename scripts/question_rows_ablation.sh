#!/usr/bin/env bash
# Question-aware tail rows and token-rarity row weights against the preset and against as many
# plain tail rows (issue 16), on the embedded pair, 4K, 10 cases, then one comparison table:
#   bash scripts/question_rows_ablation.sh [NAME ...]   (CPU: ~3 min a variant; default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/question_rows_tiny_cpu}
declare -A V=(
  [base]="{n_tail: 8}"
  [last64]="{n_tail: 64}"
  [q64]="{tail_rows: question, n_tail: 64}"
  [rarity8]="{tail_weights: rarity}"
  [rarity64]="{tail_weights: rarity, n_tail: 64}"
  [q64rarity]="{tail_rows: question, n_tail: 64, tail_weights: rarity}"
)
ORDER=(base last64 q64 rarity8 rarity64 q64rarity)
for name in "${@:-${ORDER[@]}}"; do
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} "${PYTHON:-.venv/bin/python}" experiments/eval_tiny.py \
    n_cases=10 'lengths=[4096]' 'tasks=[niah_single,niah_multikey,niah_multiquery]' \
    with_full=false batch=4 "overrides=${V[$name]}" out_dir="$OUT/$name" \
    hydra.run.dir="/tmp/qabl_$name/h"
done
dirs=(); for name in "${ORDER[@]}"; do [ -f "$OUT/$name/metrics.json" ] && dirs+=("$OUT/$name"); done
"${PYTHON:-.venv/bin/python}" experiments/compare_evals.py "${dirs[@]}" --out "$OUT/compare.md"
