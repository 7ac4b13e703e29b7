"""A/B of layer-level code alternatives on PFlash's two heavy stages at real shapes (issue 17).

    python experiments/bench_layers.py --out DIR [--seq 131072] [--tokens 6528] [--rounds 2]
    -> DIR/bench_layers.json, DIR/table.md (and the table printed)

Stages, each a random-init bf16 model of real shapes timed warm in this one process:
- drafter: `drafter.drafter_scores` of Qwen3-0.6B at --seq tokens, the pflash preset at fixed
  block density 0.1 (the speed rows' drafter stage);
- target: `pipeline.prefill_at` of Qwen3-8B on --tokens kept tokens (the speed rows' target
  stage: 6,528 = 5% of 128K), as the pipeline calls it.

Variants of the layer's q/k/v step (`qwen3.layer_qkv` with the variant's projection mode, or an
alternative swapped in for the A/B; whichever wins becomes the code, the bench only measures):
- base: one GEMM over [Wq|Wk|Wv], q_norm / k_norm, then RoPE of the normed q / k;
- v_apart: [Wq|Wk] as one GEMM and Wv as its own, so v is a GEMM output rather than a slice
  copied out of the fused one (the attention kernels need it contiguous);
- scale_rope: RoPE of (q * w_norm), times the row's rsqrt(mean(q^2) + eps) (RoPE is linear, so
  this is norm-then-RoPE up to rounding), so RoPE reads the GEMM output and not a normed copy;
- both.
Target variants also run the layers unrolled (`unroll=True`: static weight slices, no loop).
Every variant runs --rounds times in turn (A B C .. A B C ..), so a clock drifting under
sustained load does not favour one; the table gives the median of each variant's rounds.
XLA flags (e.g. --xla_gpu_enable_dynamic_slice_fusion=true) act on the whole process: run the
script again under XLA_FLAGS for those, and compare the two tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import bench
from pflash_jax.models import qwen3
from pflash_jax.models.config import model_preset
from pflash_jax.models.params import init_params
from pflash_jax.pflash import drafter as drafter_mod
from pflash_jax.pflash import pipeline
from pflash_jax.pflash.config import preset

BASE_LAYER_QKV = qwen3.layer_qkv


def rope_of_scaled(x, w, eps, cos, sin):
    """RoPE(rms_norm(x) * w) as RoPE(x * w) * rsqrt(mean(x^2) + eps), float32 inside."""
    xf = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (qwen3.apply_rope(xf * w.astype(jnp.float32), cos, sin) * r).astype(x.dtype)


def make_layer_qkv(v_apart: bool, scale_rope: bool):
    """An alternative qwen3.layer_qkv (same signature and outputs). The projection mode is
    the variant's, whatever the caller passes (the drafter now passes "qk" itself), so "base"
    stays the one [Wq|Wk|Wv] GEMM."""
    mode = "qk" if v_apart else True

    def layer_qkv(layer, x, positions, cfg, rope=None, *, fuse_qkv=True):
        if not scale_rope:
            return BASE_LAYER_QKV(layer, x, positions, cfg, rope, fuse_qkv=mode)
        eps = cfg.rms_norm_eps
        q, k, v = qwen3.qkv_projections(layer, qwen3.rms_norm(x, layer.input_layernorm, eps),
                                        cfg, mode)
        q_pre, k_pre = qwen3.rms_norm(q, layer.q_norm, eps), qwen3.rms_norm(k, layer.k_norm, eps)
        cos, sin = qwen3.rope_tables(cfg, positions) if rope is None else rope
        return qwen3.QKV(q_pre, k_pre, rope_of_scaled(q, layer.q_norm, eps, cos, sin),
                         rope_of_scaled(k, layer.k_norm, eps, cos, sin), v)
    return layer_qkv


VARIANTS = {"base": (False, False), "v_apart": (True, False), "scale_rope": (False, True),
            "both": (True, True)}


def compile_drafter(variant, params, mcfg, pcfg, ids, S):
    qwen3.layer_qkv = make_layer_qkv(*VARIANTS[variant])
    try:
        # a fresh function object: jax caches traces per function, and the swapped layer_qkv
        # is only seen by a new trace
        f = drafter_mod.drafter_scores.__wrapped__
        fn = jax.jit(lambda p, i, n: f(p, mcfg, i, n, pcfg))
        return fn.lower(params, ids, S).compile()
    finally:
        qwen3.layer_qkv = BASE_LAYER_QKV


def compile_target(variant, unroll, attn, params, cfg, ids, pos, n, cache_len):
    qwen3.layer_qkv = make_layer_qkv(*VARIANTS[variant])
    try:
        f = pipeline.prefill_at.__wrapped__  # a fresh function object, as compile_drafter
        fn = jax.jit(lambda p, i, q, m: f(p, cfg, i, q, m, attn=attn, cache_len=cache_len,
                                          unroll=unroll))
        return fn.lower(params, ids, pos, n).compile()
    finally:
        qwen3.layer_qkv = BASE_LAYER_QKV


def time_rounds(calls: dict, rounds: int, repeats: int) -> dict:
    """{name: zero-arg callable} -> {name: [median seconds of each round]}, rounds interleaved."""
    out = {k: [] for k in calls}
    for f in calls.values():  # one warm call each before any timing
        bench.block(f())
    for _ in range(rounds):
        for k, f in calls.items():
            out[k].append(bench.time_fn(f, warmup=1, repeats=repeats).median_s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seq", type=int, default=131072, help="drafter prompt length")
    ap.add_argument("--tokens", type=int, default=6528, help="target: kept tokens")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stages", default="drafter,target")
    ap.add_argument("--drafter-variants", default="base,v_apart,scale_rope,both")
    ap.add_argument("--target-variants", default="base,base+unroll,v_apart,v_apart+unroll")
    ap.add_argument("--drafter-model", default="qwen3-0.6b")
    ap.add_argument("--target-model", default="qwen3-8b")
    ap.add_argument("--layers", type=int, default=None, help="smoke tests: fewer layers")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    stages = a.stages.split(",")
    rows = []

    def cfg_of(name):
        cfg = model_preset(name)
        if a.layers:
            cfg = dataclasses.replace(cfg, num_hidden_layers=a.layers)
        return cfg

    if "drafter" in stages:
        mcfg = cfg_of(a.drafter_model)
        params = bench.block(init_params(mcfg, jax.random.key(1), jnp.bfloat16))
        pcfg = preset("pflash", block_density=a.density)
        rng = np.random.default_rng(0)
        Sb = -(-a.seq // pcfg.block_size) * pcfg.block_size
        ids = jnp.asarray(rng.integers(0, mcfg.vocab_size, (1, Sb)).astype(np.int32))
        S = jnp.int32(a.seq)
        calls = {}
        for v in a.drafter_variants.split(","):
            c = compile_drafter(v, params, mcfg, pcfg, ids, S)
            calls[v] = functools.partial(c, params, ids, S)
        # the variants score alike (same math up to rounding): say how far apart they are
        ref = np.asarray(calls["base"]()[0]) if "base" in calls else None
        for k, rounds in time_rounds(calls, a.rounds, a.repeats).items():
            diff = (float(np.max(np.abs(np.asarray(calls[k]()[0]) - ref)))
                    if ref is not None else float("nan"))
            rows.append({"stage": "drafter", "variant": k, "rounds_s": rounds,
                         "median_s": statistics.median(rounds), "max_abs_diff_vs_base": diff})
        del params, calls

    if "target" in stages:
        cfg = cfg_of(a.target_model)
        params = bench.block(init_params(cfg, jax.random.key(2), jnp.bfloat16))
        nb = pipeline.bucket(a.tokens)
        ids = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (1, nb))
                          .astype(np.int32))
        pos = jnp.arange(nb, dtype=jnp.int32)[None]
        n = jnp.int32(a.tokens)
        calls, ref = {}, None
        for name in a.target_variants.split(","):
            parts = name.split("+")
            v, unroll = parts[0], "unroll" in parts
            attn = "cudnn" if "cudnn" in parts else "auto"
            c = compile_target(v, unroll, attn, params, cfg, ids, pos, n, nb)
            calls[name] = functools.partial(c, params, ids, pos, n)
        for k, rounds in time_rounds(calls, a.rounds, a.repeats).items():
            lg = np.asarray(calls[k]()[0], np.float32)
            ref = lg if ref is None else ref
            rows.append({"stage": "target", "variant": k, "rounds_s": rounds,
                         "median_s": statistics.median(rounds),
                         "max_abs_diff_vs_base": float(np.max(np.abs(lg - ref)))})

    prov = bench.provenance()
    result = {"args": {k: str(v) for k, v in vars(a).items()},
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows, "provenance": prov}
    bench.write_metrics(a.out / "bench_layers.json", result)
    base = {r["stage"]: r["median_s"] for r in rows if r["variant"] == "base"}
    lines = [f"# bench_layers ({prov.get('device', '?')}, jax {jax.__version__}, commit "
             f"{prov.get('commit', '?')}; XLA_FLAGS={result['xla_flags'] or '(none)'})", "",
             "| stage | variant | median s (rounds) | vs base | max abs diff vs base |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        b = base.get(r["stage"])
        rel = f"{(r['median_s'] - b) * 1e3:+.1f} ms" if b else "-"
        rounds = ", ".join(f"{t:.4f}" for t in r["rounds_s"])
        diff = r.get("max_abs_diff_vs_base")
        lines.append(f"| {r['stage']} | {r['variant']} | {r['median_s']:.4f} ({rounds}) | {rel} | "
                     f"{'-' if diff is None else f'{diff:.3g}'} |")
    text = "\n".join(lines) + "\n"
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
