# Question-aware tail rows against the preset and against as many plain tail rows (issue 16), on
# the embedded pair, 4K, 10 cases:  bash scripts/question_rows_ablation.sh  (CPU: ~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."
for v in "q64:{tail_rows: question, n_tail: 64}" "last64:{n_tail: 64}" "base:{n_tail: 8}"; do
  name=${v%%:*}; ov=${v#*:}
  JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} "${PYTHON:-.venv/bin/python}" experiments/eval_tiny.py n_cases=10 'lengths=[4096]' \
    'tasks=[niah_single,niah_multikey,niah_multiquery]' with_full=false batch=4 \
    "overrides=$ov" out_dir="${OUT:-results/question_rows_tiny_cpu}/$name" hydra.run.dir=/tmp/qabl_$name/h
done
