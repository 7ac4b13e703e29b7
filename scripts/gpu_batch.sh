#!/usr/bin/env bash
# GPU work in named, time-boxed stages on any CUDA machine; everything lands under $OUT (default
# ./gpu_out), packed into one archive at the end. Run from the repo root with the package
# importable (pip install ., or PYTHONPATH=$PWD with its dependencies installed), e.g.:
#   OUT=gpu_out bash scripts/gpu_batch.sh tests prefill speedup
# Stages:
#   tests     every `gpu`-marked test                                   (~2 min)
#   prefill   full-prefill baselines, Qwen3-0.6B and -8B at 131072      (~2 min)
#   kernel    kernel bench at 32K/128K x density 1.0/0.1 (triton)       (~1 min)
#   kb:IMPL:H the same grid for impl IMPL (triton|mosaic|mosaic3|mosaic_smem|mosaic_heads|mosaic_kvgroup|
#             mosaic_persistent[3]), H query heads
#             (16 = Qwen3-0.6B, 32 = Qwen3-8B; 8 kv heads), 3 repeats      (~1 min)
#   kbd:L     the Mosaic kernel at 128K / density 0.1 on the q, k, v of layer L of a random-init
#             Qwen3-0.6B (the drafter's own inputs; kb's are random normal)  (~1 min)
#   mtests    the `gpu`-marked tests of the Mosaic kernel only             (~1 min)
#   stests    the `gpu`-marked tests of block selection only               (~1 min)
#   prefillm  the prefill baselines with the Mosaic kernel as dense attention (~2 min)
#   probe     experiments/probe_selection.py at 128K, 16/8 heads           (~30 s)
#   speedup   experiment=speedup (0.6B -> 8B and 14B, 16K-128K)          (~7 min)
#   speedup14 the 14B target at 128K alone, sequence-chunked (chunk=16384): unchunked it does
#             not fit 80 GB                                               (~2 min)
#   qbench    quantized target prefill (int8 / int4 / fp8 vs bf16), Qwen3-8B, 8K tokens, one
#             process (experiments/bench_quant.py)                          (~2 min)
#   rtx:T:Q:KV:S1,S2  the RTX 3090 setting: device_profile=rtx3090 under a ~23.4 GiB cap
#             (XLA_PYTHON_CLIENT_MEM_FRACTION=0.167), target preset file T (e.g. qwen3_8b),
#             weights Q (int8|int4|fp8|none), KV cache KV, one process per length, chunk
#             RTX_CHUNK (default 16384); a full prefill planned not to fit at that chunk is
#             re-run at chunk 4096 (a 6th field `noretry`: not, e.g. where no chunk can fit
#             it)                                                          (~1-2 min per S)
#   speedup1  experiment=speedup, Qwen3-8B at 131072 only, no cap          (~1.5 min)
#   quality   experiment=quality (tiny pair: 8 tasks x 3 S x 2 presets, span x keep grid)
#   profile   experiments/profile_drafter.py: Qwen3-0.6B drafter at 131072, density 0.1, the
#             per-op breakdown of one warm pass (the raw trace is dropped)     (~1.5 min)
#   trainv2   scripts/train_v2.sh: the v2 organism, S1_MINUTES + S2_MINUTES of training
#             (default 2.5 + 6) plus compiles; its bf16 export comes back in the archive
#   evalv2    experiments/eval_tiny.py on V2_DIR (default: trainv2's export), EVAL_CASES cases
#             per task and length (50), EVAL_LENGTHS ([4096,16384,32768]), EVAL_TASKS (all),
#             EVAL_OVERRIDES (PFlashConfig options, e.g. "{trail_width: 16}"), EVAL_FULL
#             (false: PFlash only)
#   ee:K1,K2  early-exit scoring on V2_DIR: eval_tiny with score_layers=K (recall and PFlash
#             accuracy, EVAL_CASES cases, EVAL_LENGTHS, EE_TASKS), one run per K
#   speedupee experiment=speedup at 131072, selection.score_layers=EE_LAYERS (null,14) in one
#             process, full prefill beside each row
#   speedupx:TAG  experiment=speedup at 131072 with the overrides in $SPEEDUPX_TAG (a multirun,
#             e.g. SPEEDUPX_q="drafter.quantize=fp8 selection.score_layers=null,14")
#   quality@S1,S2  the same for these lengths only (e.g. quality@4096,8192 then quality@16384
#             separately: ~8-10 min each on an H100, first job compiling ~1.5-2.5 min);
#             QUALITY_TASKS=a,b,c limits the tasks (default: the experiment file's eight)
# Each stage writes a log and its metrics; all of it comes back as $OUT/gpu_batch.tgz, and a
# short table of what ran is printed last.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
summary=()
stage() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-10s rc=%-3s %4ss' "$name" "$rc" $((SECONDS - t0)))")
}
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/device.txt"
# A job killed at a wall-clock limit never reaches the final archive: keep a snapshot of
# everything so far in $OUT/gpu_batch_partial.tgz (removed once the final archive is written).
( while sleep 45; do
    tar czf /tmp/gpu_batch_partial.tgz --exclude=./gpu_batch_partial.tgz -C "$OUT" . 2>/dev/null \
      && mv /tmp/gpu_batch_partial.tgz "$OUT/gpu_batch_partial.tgz"
  done ) &
snapshots=$!
trap 'kill "$snapshots" 2>/dev/null' EXIT
for s in "$@"; do
  case $s in
    tests) stage tests "${TESTS_LIMIT:-300}" env PFLASH_TEST_GPU=1 python3 -m pytest -m gpu -q tests ;;
    mtests) stage mtests 200 env PFLASH_TEST_GPU=1 python3 -m pytest -m gpu -q -x \
        tests/attention/test_block_sparse_mosaic.py ;;
    stests) stage stests 200 env PFLASH_TEST_GPU=1 python3 -m pytest -m gpu -q -x \
        tests/attention/test_selection.py ;;
    kb:*:*)
      IFS=: read -r _ impl heads <<< "$s"
      stage "kb_${impl}_$heads" 90 python3 experiments/kernel_bench.py impl="$impl" \
        num_heads="$heads" 'seq_lens=[32768,131072]' 'densities=[1.0,0.1]' repeats=3 \
        tune.enabled=false gqa_share.enabled=false selection_breakdown=false \
        out_dir="$OUT/kb_${impl}_$heads" ;;
    kbd:*)  # kbd:L: the Mosaic kernel on the q, k, v of layer L of a random-init Qwen3-0.6B
      L=${s#kbd:}
      stage "kbd_$L" 150 python3 experiments/kernel_bench.py impl=mosaic inputs=drafter \
        inputs_layer="$L" 'seq_lens=[131072]' 'densities=[0.1]' repeats=3 tune.enabled=false \
        gqa_share.enabled=false selection_breakdown=false mask_probe=true out_dir="$OUT/kbd_$L" ;;
    prefill)
      mkdir -p "$OUT/prefill"
      stage prefill06 100 python3 experiments/bench_prefill.py --model qwen3-0.6b --out "$OUT/prefill"
      stage prefill8 160 python3 experiments/bench_prefill.py --model qwen3-8b --out "$OUT/prefill"
      python3 experiments/bench_prefill.py --report --out "$OUT/prefill" > /dev/null 2>&1 ;;
    prefillm)
      mkdir -p "$OUT/prefill"
      stage prefillm06 100 python3 experiments/bench_prefill.py --model qwen3-0.6b --attn mosaic \
        --out "$OUT/prefill"
      stage prefillm8 160 python3 experiments/bench_prefill.py --model qwen3-8b --attn mosaic \
        --out "$OUT/prefill"
      python3 experiments/bench_prefill.py --report --out "$OUT/prefill" > /dev/null 2>&1 ;;
    probe) stage probe 90 python3 experiments/probe_selection.py --out "$OUT/probe" ;;
    kernel) stage kernel 150 python3 experiments/kernel_bench.py 'seq_lens=[32768,131072]' \
        'densities=[1.0,0.1]' tune.enabled=false gqa_share.enabled=false out_dir="$OUT/kernel" ;;
    speedup) stage speedup "${SPEEDUP_LIMIT:-480}" python3 experiments/run.py -m \
        experiment=speedup hydra.sweep.dir="$OUT/speedup" ;;
    speedup14) stage speedup14 "${SPEEDUP14_LIMIT:-200}" python3 experiments/run.py \
        experiment=speedup model@target=qwen3_14b task.seq_len=131072 chunk=16384 \
        repeats="${SPEEDUP14_REPEATS:-3}" metrics_dir="$OUT/speedup14" \
        hydra.run.dir="$OUT/speedup14/hydra" ;;
    qbench) stage qbench "${QBENCH_LIMIT:-200}" python3 experiments/bench_quant.py \
        --model qwen3-8b --seq 8192 --out "$OUT/qbench" ;;
    rtx:*)
      IFS=: read -r _ tgt q kv lens retry <<< "$s"
      chunks=("${RTX_CHUNK:-16384}")
      [ "${retry:-}" = noretry ] || chunks+=(4096)
      for S in ${lens//,/ }; do
        for ch in "${chunks[@]}"; do
          d="$OUT/rtx3090/${tgt}_${q}_kv${kv}_${S}_chunk$ch"
          stage "rtx_${tgt}_${q}_${S}_$ch" "${RTX_LIMIT:-240}" \
            env XLA_PYTHON_CLIENT_MEM_FRACTION=0.167 python3 experiments/run.py \
            experiment=speedup device_profile=rtx3090 model@target="$tgt" \
            target.quantize="$([ "$q" = none ] && echo null || echo "$q")" \
            target.kv_cache="$kv" task.seq_len="$S" chunk="$ch" \
            repeats="${RTX_REPEATS:-2}" metrics_dir="$d" hydra.run.dir="$d/hydra"
          # planned not to fit at this chunk: once more with smaller chunks
          grep -q '"full_skipped"' "$d/metrics.json" 2>/dev/null || break
        done
      done ;;
    speedup1) stage speedup1 "${SPEEDUP1_LIMIT:-200}" python3 experiments/run.py \
        experiment=speedup task.seq_len=131072 metrics_dir="$OUT/speedup1" \
        hydra.run.dir="$OUT/speedup1/hydra" ;;
    quality) stage quality "${QUALITY_LIMIT:-400}" python3 experiments/run.py -m \
        experiment=quality hydra.sweep.dir="$OUT/quality" ;;
    quality@*)
      lens=${s#quality@}
      tasks=()
      [ -n "${QUALITY_TASKS:-}" ] && tasks=("task=$QUALITY_TASKS")
      # QUALITY_EXTRA: more overrides, space-separated (e.g. a target.quantize sweep)
      # shellcheck disable=SC2086
      stage "quality_${lens//,/_}" "${QUALITY_LIMIT:-400}" python3 experiments/run.py -m \
        experiment=quality task.seq_len="$lens" "${tasks[@]}" ${QUALITY_EXTRA:-} \
        hydra.sweep.dir="$OUT/quality_${lens//,/_}" ;;
    profile)
      stage profile "${PROFILE_LIMIT:-240}" python3 experiments/profile_drafter.py --seq 131072 \
        --density 0.1 --out "$OUT/profile"
      rm -rf "$OUT"/profile/trace-* ;;
    evalv2) stage evalv2 "${EVAL_LIMIT:-300}" python3 experiments/eval_tiny.py \
        models_dir="${V2_DIR:-$OUT/trainv2/s3/export}" n_cases="${EVAL_CASES:-50}" \
        "lengths=${EVAL_LENGTHS:-[4096,16384,32768]}" ${EVAL_TASKS:+"tasks=$EVAL_TASKS"} \
        ${EVAL_OVERRIDES:+"overrides=$EVAL_OVERRIDES"} ${EVAL_FULL:+with_full=$EVAL_FULL} \
        out_dir="$OUT/evalv2" \
        hydra.run.dir=/tmp/evalv2_hydra ;;
    ee:*)  # early-exit recall and accuracy on V2_DIR: one eval_tiny run per score_layers value
      IFS=, read -ra ks <<< "${s#ee:}"
      for k in "${ks[@]}"; do
        stage "ee_k$k" "${EE_LIMIT:-120}" python3 experiments/eval_tiny.py \
          models_dir="${V2_DIR:-$OUT/trainv2/s3/export}" n_cases="${EVAL_CASES:-100}" \
          "lengths=${EVAL_LENGTHS:-[16384,32768]}" "tasks=${EE_TASKS:-[niah_single,niah_multikey]}" \
          with_full=false "overrides={score_layers: $k}" out_dir="$OUT/ee_k$k" \
          hydra.run.dir="/tmp/ee_k${k}_hydra"
      done ;;
    speedupee) stage speedupee "${SPEEDUP_LIMIT:-240}" python3 experiments/run.py -m \
        experiment=speedup task.seq_len=131072 "selection.score_layers=${EE_LAYERS:-null,14}" \
        hydra.sweep.dir="$OUT/speedupee" ;;
    speedupx:*)  # speedupx:TAG: experiment=speedup at 131072 with the overrides in $SPEEDUPX_TAG
      tag=${s#speedupx:}
      var="SPEEDUPX_$tag"
      # shellcheck disable=SC2086
      stage "speedupx_$tag" "${SPEEDUP_LIMIT:-240}" python3 experiments/run.py -m \
        experiment=speedup task.seq_len=131072 ${!var:-} hydra.sweep.dir="$OUT/speedupx_$tag" ;;
    trainv2) stage trainv2 "${TRAIN_LIMIT:-560}" env OUT="$OUT/trainv2" bash scripts/train_v2.sh ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
# One archive is easier to copy back than a tree of logs and metrics.
kill "$snapshots" 2>/dev/null; wait "$snapshots" 2>/dev/null
rm -f "$OUT/gpu_batch_partial.tgz"
tar czf /tmp/gpu_batch.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/gpu_batch.tgz "$OUT/"
# At most 16 MiB a file comes back from the device tool: a larger archive (an exported model)
# is split into 15 MiB parts; `cat gpu_batch.tgz.part-* > gpu_batch.tgz` joins them.
if [ "$(stat -c %s "$OUT/gpu_batch.tgz")" -gt $((15 * 1024 * 1024)) ]; then
  split -b 15M "$OUT/gpu_batch.tgz" "$OUT/gpu_batch.tgz.part-" && rm "$OUT/gpu_batch.tgz"
fi
printf '%s\n' "${summary[@]}"
