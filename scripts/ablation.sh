#!/usr/bin/env bash
# The scoring ablation (issue 16): one change at a time from the pflash preset, on the same
# cases, then one table. Each variant is one Hydra multirun over the tasks and lengths.
#   ABLATION_LENS=4096 ABLATION_CASES=10 bash scripts/ablation.sh OUT_DIR
#   python experiments/report.py OUT_DIR --out results/NAME --compact
# Env: ABLATION_TASKS (default niah_single,niah_multikey), ABLATION_LENS (4096),
# ABLATION_CASES (10), ABLATION_KEEP (0.05), PYTHON (.venv/bin/python).
set -euo pipefail
out=${1:?usage: ablation.sh OUT_DIR}
py=${PYTHON:-.venv/bin/python}
tasks=${ABLATION_TASKS:-niah_single,niah_multikey}
lens=${ABLATION_LENS:-4096}
cases=${ABLATION_CASES:-10}
keep=${ABLATION_KEEP:-0.05}
variants=(
  "base:"
  "tail32:selection.n_tail=32"
  "tail96:selection.n_tail=96"
  "anchors:selection.anchors=ngram"
  "maxpool:selection.pooling=max_after_mean"
  "rowpool:selection.pooling=per_row"
  "linear_tail:selection.tail_weights=linear"
  "skip1:selection.skip_layers=1"
  "early1:selection.score_layers=1"
  "on_top:selection.forced_spans=on_top"
  "post_rope:selection.rope=post"
  "specprefill:selection=specprefill"
)
for v in "${variants[@]}"; do
  name=${v%%:*}; args=${v#*:}
  echo "== $name ($args)"
  # shellcheck disable=SC2086
  "$py" experiments/run.py -m task="$tasks" task.seq_len="$lens" task.n_cases="$cases" \
    selection.keep_ratio="$keep" selection.span_size=32 repeats=0 quiet=true \
    max_new_tokens=24 $args hydra.sweep.dir="$out/$name" > "$out.$name.log" 2>&1 \
    || { echo "variant $name failed: see $out.$name.log" >&2; exit 1; }
done
