"""A/B of the Mosaic kernel's pipeline variants (mosaic.BlockSizes) in one process (issue 17).

    python experiments/bench_kernel_variants.py --out DIR [--seq 131072] [--density 0.1]
        [--heads 16] [--variants base,stages3,overlap,overlap3] [--rounds 3]
        [--operands bf16|fp8_qk|fp8_qkv]
    -> DIR/bench_kernel_variants.json, DIR/table.md (and the table printed)

One bf16 input at Qwen3-0.6B's head shapes (--heads query heads, 8 kv heads, head dim 128):
q, k, v random normal, the block mask from the fixed-density selection the speed rows use
(select_blocks_fixed_density on these q, k). --operands fp8_qk / fp8_qkv: q, k (and v) rounded
to e4m3 at amax scales before the timed calls (the fp8 Q/K and fp8 P @ V kernels; fp8_qkv's
calls include V's transpose to V^T, which the kernel's wrapper does).
Every variant runs --rounds times in turn
(A B C .. A B C ..), so a clock drifting under sustained load favours none; the table gives the
median of each variant's rounds, TFLOP/s at the mask's kept blocks, and each output's largest
difference from the base variant's (the variants compute the same attention: only rounding
differs, the overlap variants visiting the diagonal block first).
A variant that hangs on the GPU (a deadlock, e.g. a register split the kernel cannot run under)
takes the whole process with it: run an untried one alone under `timeout` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp

from pflash_jax import bench
from pflash_jax.attention import api, mosaic
from pflash_jax.attention.selection import select_blocks_fixed_density

VARIANTS = {
    "base": mosaic.BlockSizes(),  # the ping-pong pipeline (the GPU default before 2026-12-02)
    "default": mosaic.GPU_DEFAULT,
    "stages3": mosaic.BlockSizes(stages=3),
    "overlap": mosaic.BlockSizes(overlap=True),
    "overlap3": mosaic.BlockSizes(overlap=True, stages=3),
    "overlap3_nosched": mosaic.BlockSizes(overlap=True, stages=3, schedule_barrier=False),
    "nosched": mosaic.BlockSizes(schedule_barrier=False),
    "overlap_token": mosaic.BlockSizes(overlap=True, schedule="token"),
    "overlap3_token": mosaic.BlockSizes(overlap=True, stages=3, schedule="token"),
    "overlap2_nosched": mosaic.BlockSizes(overlap=True, schedule_barrier=False),
    "default_kvgroup": dataclasses.replace(mosaic.GPU_DEFAULT, order="kv_group"),
    # four K/V slots: fit with fp8 K/V only (16 KB + 16 KB a slot)
    "default4": dataclasses.replace(mosaic.GPU_DEFAULT, stages=4),
    "overlap4_token": mosaic.BlockSizes(overlap=True, stages=4, schedule="token"),
    "stages4": mosaic.BlockSizes(stages=4),
    "base_kvgroup": mosaic.BlockSizes(order="kv_group"),
    "stages3_kvgroup": mosaic.BlockSizes(stages=3, order="kv_group"),
}
# Not a variant: GPU_DEFAULT with compute_registers=240 / memory_registers=32 never returned
# (no output within 290 s on an H200, 2026-12-02, commit 391bcf8): a hang, not a slow kernel.


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--variants", default="base,stages3,overlap,overlap3")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--operands", default="bf16", choices=("bf16", "fp8_qk", "fp8_qkv"))
    a = ap.parse_args()
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}")

    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, (1, a.seq, a.heads, 128), jnp.bfloat16)
    k = jax.random.normal(kk, (1, a.seq, a.kv_heads, 128), jnp.bfloat16)
    v = jax.random.normal(kv, (1, a.seq, a.kv_heads, 128), jnp.bfloat16)
    bm = select_blocks_fixed_density(q, k, density=a.density, block_size=128)
    kept = int(jnp.sum(bm.counts))
    flops = kept * 4 * 128 * 128 * 128  # Q K^T and P V of each kept 128 x 128 block

    kw = {}
    if a.operands != "bf16":
        (q, qs), (k, ks) = api.quantize_v(q), api.quantize_v(k)  # amax scales
        kw["qk_scale"] = qs * ks
        if a.operands == "fp8_qkv":
            v, kw["v_scale"] = api.quantize_v(v)
    fns = {n: jax.jit(lambda q, k, v, bm, kw, s=VARIANTS[n]: mosaic.block_sparse_attention(
        q, k, v, bm, block_sizes=s, **kw)) for n in names}
    outs, compile_s = {}, {}
    for n in names:  # compile and keep each output for the difference column
        t = bench.time_fn(fns[n], q, k, v, bm, kw, warmup=1, repeats=1)
        compile_s[n] = t.first_call_s
        outs[n] = fns[n](q, k, v, bm, kw).astype(jnp.float32)
        print(f"compiled {n}: {t.first_call_s:.1f} s", flush=True)
    ref = outs[names[0]]
    times = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names:
            times[n].append(bench.time_fn(fns[n], q, k, v, bm, kw, warmup=1,
                                          repeats=a.repeats).median_s)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{n} {times[n][-1] * 1e3:.2f} ms" for n in names), flush=True)

    rows = []
    base_ms = statistics.median(times[names[0]]) * 1e3
    for n in names:
        ms = statistics.median(times[n]) * 1e3
        rows.append({"variant": n, "block_sizes": repr(VARIANTS[n]), "ms": ms,
                     "rounds_ms": [t * 1e3 for t in times[n]],
                     "tflops": flops / (ms * 1e-3) / 1e12, "vs_first": ms / base_ms,
                     "max_abs_diff": float(jnp.max(jnp.abs(outs[n] - ref))),
                     "compile_s": compile_s[n]})
    meta = {**bench.provenance(), "operands": a.operands, "seq": a.seq, "density": a.density,
            "heads": a.heads,
            "kv_heads": a.kv_heads, "kept_blocks": kept, "mask_density": float(bm.density()),
            "rounds": a.rounds, "repeats": a.repeats}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    bench.write_metrics(out / "bench_kernel_variants.json", {"meta": meta, "rows": rows})
    lines = [f"# Mosaic kernel variants ({a.operands}): S={a.seq}, {a.heads}/{a.kv_heads} heads, "
             f"density {meta['mask_density']:.3f} ({meta.get('device', '?')}, jax "
             f"{meta.get('jax', '?')}, commit {meta.get('commit', '?')})", "",
             "Generated by experiments/bench_kernel_variants.py: median of "
             f"{a.rounds} interleaved rounds of {a.repeats} calls each.", "",
             "| variant | ms | TFLOP/s | vs first | max abs diff vs first | rounds (ms) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                     f"{r['vs_first']:.3f} | {r['max_abs_diff']:.2e} | "
                     + " ".join(f"{t:.2f}" for t in r["rounds_ms"]) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
