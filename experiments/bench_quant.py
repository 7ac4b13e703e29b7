"""Quantized target prefill against bf16, one process: Qwen3 of real shapes, random weights.

Issue 15's speed bar: int8 and int4 weight-only prefill of 8K tokens at least 90% of bf16's
speed, fp8 W8A8 measured against bf16. Every format is timed in the same process on the same
ids (the bf16 model first, each model freed before the next is made), plus one GEMM per format
at the prefill's shape with the compiled temporary bytes beside it: a temporary as large as
the bf16 weight means XLA wrote the dequantized weight to memory instead of fusing the convert
into the GEMM (models/quant.py's docstring).

    python experiments/bench_quant.py --model qwen3-8b --seq 8192 --out DIR
    -> DIR/metrics.json, DIR/table.md (and the table printed)
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from pflash_jax import bench
from pflash_jax.attention.api import resolve_dense
from pflash_jax.memory import tree_bytes
from pflash_jax.models import quant, qwen3
from pflash_jax.models.config import model_preset
from pflash_jax.models.params import init_params

FORMATS = ("bf16", "int8", "int4", "fp8")


def make_params(cfg, fmt: str):
    key = jax.random.key(0)
    if fmt == "bf16":
        return bench.block(init_params(cfg, key, jnp.bfloat16))
    return bench.block(quant.init_quantized_params(cfg, key, fmt, jnp.bfloat16))


def time_prefill(cfg, params, seq: int, attn: str, repeats: int) -> dict:
    ids = jax.random.randint(jax.random.key(1), (1, seq), 0, cfg.vocab_size, jnp.int32)
    pos = jnp.arange(seq, dtype=jnp.int32)[None]
    fn = jax.jit(qwen3.prefill, static_argnames=("cfg", "attn", "chunk", "fuse_qkv"))
    t0 = time.perf_counter()
    compiled = fn.lower(params, cfg, ids, pos, attn=attn).compile()
    compile_s = time.perf_counter() - t0
    step = lambda: compiled(params, ids, pos)  # noqa: E731  (binds the AOT executable)
    t = bench.time_fn(step, warmup=1, repeats=repeats)
    logits, _ = step()
    return {"warm_median_s": t.median_s, "warm_min_s": t.min_s, "compile_s": compile_s,
            "tokens_per_s": seq / t.median_s, "logits_finite": bool(jnp.isfinite(logits).all()),
            "weights_bytes": tree_bytes(params)}


def time_gemm(cfg, fmt: str, seq: int, repeats: int) -> dict:
    """x [seq, D] @ gate_proj [D, F] in the format: time and XLA's temporary bytes."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    w = (0.02 * jax.random.normal(jax.random.key(3), (D, F), jnp.float32)).astype(jnp.bfloat16)
    if fmt != "bf16":
        g = quant.int4_group(D) if fmt == "int4" else None
        w = quant.QuantizedWeight(*quant.quantize_layer(w, fmt, g), fmt, g)
    x = jax.random.normal(jax.random.key(4), (seq, D), jnp.bfloat16)
    compiled = jax.jit(quant.matmul).lower(x, w).compile()
    mem = compiled.memory_analysis()
    t = bench.time_fn(compiled, x, w, warmup=1, repeats=repeats)
    flops = 2.0 * seq * D * F
    hlo = compiled.as_text() or ""
    return {"gemm_ms": 1e3 * t.median_s, "gemm_tflops_per_s": flops / t.median_s / 1e12,
            "gemm_temp_bytes": None if mem is None else mem.temp_size_in_bytes,
            "bf16_weight_bytes": D * F * 2,
            # which GEMM XLA chose: a cuBLASLt fp8 call, another cuBLAS call, or a fusion
            "gemm_kernel": ("cublaslt_fp8" if "$f8" in hlo else "cublas" if "__cublas" in hlo
                            else "triton_fusion" if "__triton" in hlo else "other")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (smoke tests)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    formats = a.formats.split(",")
    for f in formats:
        if f not in FORMATS:
            ap.error(f"--formats: {f!r} is not one of {list(FORMATS)}")
    cfg = model_preset(a.model)
    if a.layers:
        import dataclasses

        cfg = dataclasses.replace(cfg, num_hidden_layers=a.layers)
    attn = resolve_dense("auto", jnp.bfloat16)
    rows = []
    for fmt in formats:
        gemm = time_gemm(cfg, fmt, a.seq, a.repeats)  # first: seconds, says what XLA chose
        print(f"{fmt}: gemm {gemm['gemm_ms']:.2f} ms ({gemm['gemm_kernel']})", flush=True)
        params = make_params(cfg, fmt)
        row = {"format": fmt, "model": a.model, "seq": a.seq, "attn": attn,
               **time_prefill(cfg, params, a.seq, attn, a.repeats), **gemm}
        del params
        gc.collect()
        rows.append(row)
        print(f"{fmt}: prefill {row['warm_median_s'] * 1e3:.1f} ms", flush=True)
    base = next((r for r in rows if r["format"] == "bf16"), None)
    for r in rows:
        r["speed_vs_bf16"] = None if base is None else base["warm_median_s"] / r["warm_median_s"]
        r["gemm_speed_vs_bf16"] = None if base is None else base["gemm_ms"] / r["gemm_ms"]
    prov = bench.provenance()
    bench.write_metrics(a.out / "metrics.json", {"runs": rows})
    lines = [f"# Quantized prefill vs bf16 ({prov['device']}, jax {prov['jax']}, commit "
             f"{prov['commit']})", "",
             f"{a.model}, random weights, {a.seq} tokens, batch 1, attention {attn}; warm median"
             f" of {a.repeats}, one process. GEMM: x [{a.seq}, D] @ gate_proj [D, F]; temp = "
             "XLA's temporary bytes (a bf16-weight-sized temp: the dequantized weight was "
             "written to memory). Generated by experiments/bench_quant.py.", "",
             "| format | prefill ms | speed vs bf16 | weights GiB | GEMM ms | GEMM TFLOP/s | "
             "GEMM vs bf16 | GEMM temp MiB | GEMM kernel |", "|---" * 9 + "|"]
    for r in rows:
        vs = "" if r["speed_vs_bf16"] is None else f"{r['speed_vs_bf16']:.3f}"
        gvs = "" if r["gemm_speed_vs_bf16"] is None else f"{r['gemm_speed_vs_bf16']:.3f}"
        temp = "" if r["gemm_temp_bytes"] is None else f"{r['gemm_temp_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['format']} | {r['warm_median_s'] * 1e3:.1f} | {vs} | "
                     f"{r['weights_bytes'] / 2**30:.2f} | {r['gemm_ms']:.2f} | "
                     f"{r['gemm_tflops_per_s']:.0f} | {gvs} | {temp} | {r['gemm_kernel']} |")
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
