#!/usr/bin/env bash
# The v2 model organism (issue 16): a 6-layer target (~11M parameters) and a 4-layer drafter
# (~1.2M) trained from random init, every stage time-boxed (curriculum_by=time):
#   stage 1 (S1_MINUTES): short contexts, the retrieval tasks only, 1-7 multikey distractors
#           (key matching is learned where the needles dominate the context: issue 5's finding);
#   stage 2 (S2_MINUTES): from stage 1, every task, 1K -> 16K tokens, a fifth of the rows
#           span-dropped views of 2x longer cases at their original positions (up to 32K), so
#           the target also learns to read what PFlash feeds it. Exported in bfloat16.
#   stage 3 (S3_MINUTES): a new drafter alone (below), beside stage 2's target: the pair.
#   OUT=dir bash scripts/train_v2.sh      # -> $OUT/s{1,2,3}.log, $OUT/s3/{export,metrics.json}
#   STAGES="3" TARGET_FROM=folder/target OUT=dir bash scripts/train_v2.sh   # stage 3 alone
#   STAGES="4" PAIR_FROM=folder OUT=dir bash scripts/train_v2.sh   # stage 4 on a pair folder
#   STAGES="5" PAIR_FROM=folder OUT=dir bash scripts/train_v2.sh   # stage 5 on stage 4's pair
#   STAGES="6" PAIR_FROM=folder OUT=dir bash scripts/train_v2.sh   # stage 6 on stage 5's pair
set -uo pipefail
: "${OUT:?OUT must be set (the device tool sets it)}"
WORK=${WORK:-/tmp/train_v2}
mkdir -p "$OUT/s1" "$OUT/s2" "$OUT/s3" "$WORK"
SHAPES=(target.hidden_size=384 target.intermediate_size=1152 target.num_hidden_layers=6
        target.num_attention_heads=6 target.num_key_value_heads=2 target.head_dim=64
        drafter.hidden_size=192 drafter.intermediate_size=576 drafter.num_hidden_layers=4
        drafter.num_attention_heads=4 drafter.num_key_value_heads=2 drafter.head_dim=64)
OPTS='task_opts={niah_multikey: {n_distractors: {one_of: [1, 3, 5, 7]}}}'
RETRIEVAL='tasks={niah_single: 1, niah_pflash: 1, niah_multikey: 3, niah_multivalue: 1, niah_multiquery: 1, variable_tracking: 1, common_words: 0, frequent_words: 0}'
MIX='tasks={niah_single: 2, niah_pflash: 2, niah_multikey: 4, niah_multivalue: 2, niah_multiquery: 2, variable_tracking: 2, common_words: 0.5, frequent_words: 0.5}'
run() { [[ " ${STAGES:-1 2 3 4} " == *" $1 "* ]]; }
run 1 && { python3 experiments/train_tiny.py "${SHAPES[@]}" "$OPTS" "$RETRIEVAL" curriculum_by=time \
  max_minutes="${S1_MINUTES:-2.5}" steps=1000000 warmup=200 lr=1.5e-3 lm_weight=0.1 \
  'curriculum=[[512,32],[768,24],[1024,16]]' workers="${WORKERS:-14}" log_every=500 \
  checkpoint_every=1000000 checkpoint_dir="$WORK/s1/ckpt" export_dir="$WORK/s1/export" \
  metrics_path="$OUT/s1/metrics.json" hydra.run.dir="$WORK/s1/hydra" ${S1_ARGS:-} \
  > "$OUT/s1.log" 2>&1 || { tail -30 "$OUT/s1.log"; exit 1; }; }
run 2 && { python3 experiments/train_tiny.py "${SHAPES[@]}" "$OPTS" "$MIX" curriculum_by=time \
  init_from="$WORK/s1/export" max_minutes="${S2_MINUTES:-6}" steps=1000000 warmup=100 \
  lr=1e-3 lm_weight=0.1 'curriculum=[[1024,32],[2048,16],[4096,8],[8192,4],[16384,2]]' \
  sparse.prob=0.2 sparse.stretch=2 workers="${WORKERS:-14}" log_every=500 \
  checkpoint_every=1000000 checkpoint_dir="$WORK/s2/ckpt" export_dir="$OUT/s2/export" \
  export_dtype=bfloat16 metrics_path="$OUT/s2/metrics.json" hydra.run.dir="$WORK/s2/hydra" \
  ${S2_ARGS:-} > "$OUT/s2.log" 2>&1 || { tail -30 "$OUT/s2.log"; exit 1; }; }
# Stage 3: the drafter again, from random init, on its own. Stages 1-2's 4-layer, 192-wide
# drafter never learned retrieval (answer accuracy stuck at ~0.32 for 4,300 steps, recall 0 on
# niah_single: docs/LOG.md, session 6), so the exported pair takes stage 2's target and this
# drafter: the recipe of the session-1 drafter that did learn (its task mix, curriculum and
# rate), 4 layers of width 128. The target is re-exported unchanged.
run 3 && {
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$OPTS" 'train=[drafter]' \
  "init_from={target: ${TARGET_FROM:-$OUT/s2/export/target}}" curriculum_by=time \
  max_minutes="${S3_MINUTES:-7}" steps=1000000 warmup=150 lr=1e-3 lm_weight=0.1 \
  'curriculum=[[512,32],[1024,32],[2048,16],[4096,8],[8192,4],[16384,2]]' \
  workers="${WORKERS:-14}" log_every=500 checkpoint_every=1000000 \
  checkpoint_dir="$WORK/s3/ckpt" export_dir="$OUT/s3/export" export_dtype=bfloat16 \
  metrics_path="$OUT/s3/metrics.json" hydra.run.dir="$WORK/s3/hydra" ${S3_ARGS:-} \
  > "$OUT/s3.log" 2>&1 || { tail -30 "$OUT/s3.log"; exit 1; }; }
# Stage 4 (not run yet; for the next GPU session): fine-tune stage 2's target, which failed
# multikey (0.16-0.24 at full prefill) and drifted at 4K after a 16K-only last stage, as the
# embedded target's multikey was fixed in session 3: 4a, multikey alone at 256-512 tokens
# (key matching where the needles dominate), then 4b, the multikey-heavy mix with every
# length drawn per step (curriculum_by=mixed: no length is trained last) and half the rows
# span-dropped (what PFlash feeds the target). Stage 3's drafter is carried over unchanged.
MK_ONLY='tasks={niah_single: 0, niah_pflash: 0, niah_multikey: 1, niah_multivalue: 0, niah_multiquery: 0, variable_tracking: 0, common_words: 0, frequent_words: 0}'
MK_MIX='tasks={niah_single: 2, niah_pflash: 2, niah_multikey: 6, niah_multivalue: 2, niah_multiquery: 2, variable_tracking: 2, common_words: 0.5, frequent_words: 0.5}'
PAIR_FROM=${PAIR_FROM:-$OUT/s3/export}
run 4 && { mkdir -p "$OUT/s4a" "$OUT/s4"
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$OPTS" "$MK_ONLY" 'train=[target]' \
  "init_from={target: $PAIR_FROM/target, drafter: $PAIR_FROM/drafter}" curriculum_by=mixed \
  max_minutes="${S4A_MINUTES:-2}" steps=1000000 warmup=100 lr=2e-3 lm_weight=0.0 \
  'curriculum=[[256,64],[512,32]]' workers="${WORKERS:-14}" log_every=500 \
  checkpoint_every=1000000 checkpoint_dir="$WORK/s4a/ckpt" export_dir="$WORK/s4a/export" \
  metrics_path="$OUT/s4a/metrics.json" hydra.run.dir="$WORK/s4a/hydra" ${S4A_ARGS:-} \
  > "$OUT/s4a.log" 2>&1 || { tail -30 "$OUT/s4a.log"; exit 1; }
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$OPTS" "$MK_MIX" 'train=[target]' \
  init_from="$WORK/s4a/export" curriculum_by=mixed max_minutes="${S4B_MINUTES:-6.5}" \
  steps=1000000 warmup=100 lr=1e-3 lm_weight=0.1 \
  'curriculum=[[1024,32],[2048,16],[4096,8],[8192,4],[16384,2]]' sparse.prob=0.5 \
  sparse.stretch=2 workers="${WORKERS:-14}" log_every=500 checkpoint_every=1000000 \
  checkpoint_dir="$WORK/s4/ckpt" export_dir="$OUT/s4/export" export_dtype=bfloat16 \
  metrics_path="$OUT/s4/metrics.json" hydra.run.dir="$WORK/s4/hydra" ${S4B_ARGS:-} \
  > "$OUT/s4.log" 2>&1 || { tail -30 "$OUT/s4.log"; exit 1; }; }
# Stage 5: from stage 4's pair (PAIR_FROM), the target again at every length up to 32K drawn
# per step (stage 4 stopped at 16K: at 32K its full-prefill multivalue was 0.68 and multiquery
# 0.40), weighted towards the multi-needle tasks and variable tracking, half the rows
# span-dropped. max_position_embeddings 65536 lets the 32K rows' span-dropped views come from
# 64K cases at their original positions (sparse.stretch=2).
MIX5='tasks={niah_single: 1, niah_pflash: 1, niah_multikey: 3, niah_multivalue: 3, niah_multiquery: 3, variable_tracking: 2, common_words: 0.5, frequent_words: 0.5}'
run 5 && { mkdir -p "$OUT/s5"
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$OPTS" "$MIX5" 'train=[target]' \
  "init_from={target: $PAIR_FROM/target, drafter: $PAIR_FROM/drafter}" curriculum_by=mixed \
  max_minutes="${S5_MINUTES:-3}" steps=1000000 warmup=50 lr=5e-4 lm_weight=0.1 \
  max_position_embeddings=65536 \
  'curriculum=[[2048,16],[4096,8],[8192,4],[16384,2],[32768,1]]' sparse.prob=0.5 \
  sparse.stretch=2 workers="${WORKERS:-14}" log_every=500 checkpoint_every=1000000 \
  checkpoint_dir="$WORK/s5/ckpt" export_dir="$OUT/s5/export" export_dtype=bfloat16 \
  metrics_path="$OUT/s5/metrics.json" hydra.run.dir="$WORK/s5/hydra" ${S5_ARGS:-} \
  > "$OUT/s5.log" 2>&1 || { tail -30 "$OUT/s5.log"; exit 1; }; }
# Stage 6: variable tracking (full prefill 0.00-0.03 after stage 5: the target writes the
# answer's format and some of the chain's names, others from the distractor chain or made up).
# As stage 4 fixed multikey: 6a, variable tracking alone at 512-1024 tokens (chains of 2-6
# hops, 1-3 chains, so the lookup "VAR x = VAR y" is learned where the statements dominate),
# then 6b, stage 5's mix at every length up to 32K with variable tracking weighted up, half the
# rows span-dropped. A new seed: stages 4-5 drew their batches from seed 0.
VT_ONLY='tasks={niah_single: 0, niah_pflash: 0, niah_multikey: 0, niah_multivalue: 0, niah_multiquery: 0, variable_tracking: 1, common_words: 0, frequent_words: 0}'
VT_OPTS='task_opts={niah_multikey: {n_distractors: {one_of: [1, 3, 5, 7]}}, variable_tracking: {n_hops: {one_of: [2, 3, 4, 5, 6]}, n_chains: {one_of: [1, 2, 3]}}}'
MIX6='tasks={niah_single: 1, niah_pflash: 1, niah_multikey: 3, niah_multivalue: 2, niah_multiquery: 2, variable_tracking: 4, common_words: 0.5, frequent_words: 0.5}'
run 6 && { mkdir -p "$OUT/s6a" "$OUT/s6"
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$VT_OPTS" "$VT_ONLY" 'train=[target]' seed=6 \
  "init_from={target: $PAIR_FROM/target, drafter: $PAIR_FROM/drafter}" curriculum_by=mixed \
  max_minutes="${S6A_MINUTES:-1.5}" steps=1000000 warmup=100 lr=1.5e-3 lm_weight=0.0 \
  max_position_embeddings=65536 'curriculum=[[512,32],[1024,16]]' workers="${WORKERS:-14}" \
  log_every=500 checkpoint_every=1000000 checkpoint_dir="$WORK/s6a/ckpt" \
  export_dir="$WORK/s6a/export" metrics_path="$OUT/s6a/metrics.json" \
  hydra.run.dir="$WORK/s6a/hydra" ${S6A_ARGS:-} > "$OUT/s6a.log" 2>&1 \
  || { tail -30 "$OUT/s6a.log"; exit 1; }
python3 experiments/train_tiny.py "${SHAPES[@]}" drafter.hidden_size=128 \
  drafter.intermediate_size=384 "$VT_OPTS" "$MIX6" 'train=[target]' seed=7 \
  init_from="$WORK/s6a/export" curriculum_by=mixed max_minutes="${S6B_MINUTES:-4}" \
  steps=1000000 warmup=50 lr=5e-4 lm_weight=0.1 max_position_embeddings=65536 \
  'curriculum=[[1024,32],[2048,16],[4096,8],[8192,4],[16384,2],[32768,1]]' sparse.prob=0.5 \
  sparse.stretch=2 workers="${WORKERS:-14}" log_every=500 checkpoint_every=1000000 \
  checkpoint_dir="$WORK/s6/ckpt" export_dir="$OUT/s6/export" export_dtype=bfloat16 \
  metrics_path="$OUT/s6/metrics.json" hydra.run.dir="$WORK/s6/hydra" ${S6B_ARGS:-} \
  > "$OUT/s6.log" 2>&1 || { tail -30 "$OUT/s6.log"; exit 1; }; }
tail -n 3 "$OUT"/s*.log
