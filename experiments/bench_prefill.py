"""Full-prefill baseline: random-init Qwen3 of real shapes, bf16, one long prompt.

The number every PFlash speedup is measured against (docs/design.md section 1): a Qwen3-8B-shaped
prefill of 131072 random tokens with cuDNN flash attention returning the KV cache and the
first-token logits, and a Qwen3-0.6B-shaped dense forward (the dense drafter) likewise.

    python experiments/bench_prefill.py --model qwen3-8b --seq 131072 --out DIR/8b.json
    python experiments/bench_prefill.py --report DIR   # DIR/*.json -> metrics.json + table.md

Each run is its own process so `peak_bytes_in_use` belongs to that model alone. Compile time is
measured by lowering + compiling ahead of time; the warm time is bench.time_fn's median.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from pflash_jax import bench
from pflash_jax.attention import dense_attention
from pflash_jax.attention.api import resolve_dense
from pflash_jax.models import qwen3
from pflash_jax.models.config import Qwen3Config, model_preset
from pflash_jax.models.params import init_params


def prefill_flops(cfg: Qwen3Config, T: int) -> dict[str, float]:
    """Matmul + causal attention FLOPs of a T-token prefill (last-token LM head only)."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    N, K, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    per_layer = D * (N + 2 * K) * H + N * H * D + 3 * D * F
    matmul = 2.0 * T * per_layer * L + 2.0 * D * cfg.vocab_size
    attention = 2.0 * T * T * N * H * L  # QK^T and PV over the causal half: 2 * 2 * T^2/2 * N*H
    return {"matmul": matmul, "attention": attention, "total": matmul + attention}


def run(model: str, seq: int, attn: str, chunk: int | None, repeats: int,
        layers: int | None = None, fuse_qkv: bool = True) -> dict:
    cfg = model_preset(model)
    if layers:  # smoke tests only: fewer layers of the same shapes
        cfg = dataclasses.replace(cfg, num_hidden_layers=layers)
    params = bench.block(init_params(cfg, jax.random.key(0), jnp.bfloat16))
    ids = jax.random.randint(jax.random.key(1), (1, seq), 0, cfg.vocab_size, jnp.int32)
    pos = jnp.arange(seq, dtype=jnp.int32)[None]

    fn = jax.jit(qwen3.prefill, static_argnames=("cfg", "attn", "chunk", "fuse_qkv"))
    t0 = time.perf_counter()
    compiled = fn.lower(params, cfg, ids, pos, attn=attn, chunk=chunk,
                        fuse_qkv=fuse_qkv).compile()
    compile_s = time.perf_counter() - t0
    step = lambda: compiled(params, ids, pos)  # noqa: E731  (binds the AOT executable)
    timing = bench.time_fn(step, warmup=1, repeats=repeats)
    logits, cache = step()
    finite = bool(jnp.isfinite(logits).all())

    # One attention call at the model's shapes, to split the time.
    q = jax.random.normal(jax.random.key(2), (1, seq, cfg.num_attention_heads, cfg.head_dim),
                          jnp.bfloat16)
    kv = cache.k[0], cache.v[0]
    att = jax.jit(lambda q, k, v: dense_attention(q, k, v, impl=attn))
    att_t = bench.time_fn(att, q, *kv, warmup=1, repeats=repeats)

    flops = prefill_flops(cfg, seq)
    return {
        "model": model, "seq": seq, "dtype": "bfloat16", "attn": attn, "chunk": chunk,
        "batch": 1, "config": cfg.to_hf_config(),
        "warm_median_s": timing.median_s, "warm_min_s": timing.min_s,
        "first_call_after_compile_s": timing.first_call_s, "repeats": repeats,
        "compile_s": compile_s, "peak_memory_bytes": bench.peak_memory_bytes(),
        "flops": flops, "tflops_per_s": flops["total"] / timing.median_s / 1e12,
        "attention_one_layer_s": att_t.median_s,
        "attention_share": att_t.median_s * cfg.num_hidden_layers / timing.median_s,
        "kv_cache_shape": list(cache.k.shape), "logits_finite": finite,
    }


def breakdown(model: str, seq: int, repeats: int) -> list[dict]:
    """Per-layer pieces at full length (one layer's weights): where the non-attention time goes."""
    cfg = dataclasses.replace(model_preset(model), num_hidden_layers=1)
    p = init_params(cfg, jax.random.key(0), jnp.bfloat16)
    layer = jax.tree.map(lambda a: a[0], p.layers)
    D, N, K, H = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = jax.random.normal(jax.random.key(1), (1, seq, D), jnp.bfloat16)
    o = jax.random.normal(jax.random.key(2), (1, seq, N, H), jnp.bfloat16)
    pos = jnp.arange(seq, dtype=jnp.int32)[None]
    rows = []

    def timed(name, fn, *args, flops=0.0):
        t = bench.time_fn(jax.jit(fn), *args, warmup=1, repeats=repeats).median_s
        rows.append({"piece": name, "ms": 1e3 * t, "tflops_per_s": flops / t / 1e12})
        print(f"{name:28s} {1e3 * t:9.2f} ms  {flops / t / 1e12:6.0f} TFLOP/s")

    for fused in (False, True):
        tag = "fused" if fused else "unfused"
        qkv_f = 2.0 * seq * D * (N + 2 * K) * H
        fin_f = 2.0 * seq * (N * H * D + 3 * D * cfg.intermediate_size)
        timed(f"layer_qkv[{tag}]",
              lambda l, x, pos, f=fused: qwen3.layer_qkv(l, x, pos, cfg, fuse_qkv=f)[2:],
              layer, x, pos, flops=qkv_f)
    timed("layer_finish", lambda l, x, o: qwen3.layer_finish(l, x, o, cfg), layer, x, o,
          flops=fin_f)
    h = x[0]
    for name in ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"):
        w = getattr(layer, name)
        a = h if w.shape[0] == D else jax.random.normal(jax.random.key(3), (seq, w.shape[0]),
                                                         jnp.bfloat16)
        timed(f"gemm {name} {tuple(w.shape)}", jnp.matmul, a, w,
              flops=2.0 * seq * w.shape[0] * w.shape[1])
    timed("rms_norm x", lambda x, w: qwen3.rms_norm(x, w, 1e-6), x, layer.input_layernorm)
    qn = o.reshape(1, seq, N, H)
    timed("q_norm + rope (tables inside)", lambda q, w, pos: qwen3.apply_rope(
        qwen3.rms_norm(q, w, 1e-6), *qwen3.rope_tables(cfg, pos)), qn, layer.q_norm, pos)
    cos, sin = jax.jit(qwen3.rope_tables, static_argnums=0)(cfg, pos)
    timed("q_norm + rope (tables given)", lambda q, w, c, s: qwen3.apply_rope(
        qwen3.rms_norm(q, w, 1e-6), c, s), qn, layer.q_norm, cos, sin)
    timed("attention (cudnn)", lambda q, k, v: dense_attention(q, k, v, impl="cudnn"),
          o, o[:, :, :K], o[:, :, :K], flops=2.0 * seq * seq * N * H)
    return rows


def report(directory: Path) -> None:
    runs = [json.loads(p.read_text()) for p in sorted(directory.glob("run_*.json"))]
    parts = [json.loads(p.read_text()) for p in sorted(directory.glob("breakdown_*.json"))]
    # The runs' own provenance (the GPU machine), not that of whoever regenerates the table.
    prov = runs[0]["provenance"] if runs else bench.provenance()
    bench.write_metrics(directory / "metrics.json",
                        {"provenance": prov, "runs": runs, "breakdowns": parts})
    commits = ", ".join(dict.fromkeys(r["provenance"]["commit"] for r in runs)) or prov["commit"]
    lines = [f"# Full-prefill baseline ({prov['device']}, jax {prov['jax']}, "
             f"commit(s) {commits})", "",
             "Random-init weights, bf16, batch 1, random ids; warm median of repeats, compile "
             "separate. Generated by experiments/bench_prefill.py --report.", "",
             "| model | S | attn | chunk | warm s | compile s | peak GiB | TFLOP/s | "
             "attention share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        peak = r["peak_memory_bytes"]
        lines.append(
            f"| {r['model']} | {r['seq']} | {r['attn']} | {r['chunk'] or '-'} | "
            f"{r['warm_median_s']:.3f} | {r['compile_s']:.1f} | "
            f"{peak / 2**30 if peak else float('nan'):.1f} | {r['tflops_per_s']:.0f} | "
            f"{r['attention_share']:.0%} |")
    for part in parts:
        lines += ["", f"One-layer breakdown at full length ({part['provenance']['device']}; "
                  "one layer's weights, random inputs):", "", "| piece | ms | TFLOP/s |",
                  "|---|---|---|"]
        lines += [f"| {r['piece']} | {r['ms']:.2f} | {r['tflops_per_s']:.0f} |"
                  for r in part["rows"]]
    (directory / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--attn", default="auto",
                    help="dense attention impl; auto = what full prefill uses on this card")
    ap.add_argument("--chunk", type=int, default=0, help="0: no sequence chunking")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=0, help="override layer count (smoke test)")
    ap.add_argument("--tag", default="", help="suffix of the run file (e.g. XLA flag variant)")
    ap.add_argument("--out", type=Path, default=Path("results/prefill_baseline"))
    ap.add_argument("--report", action="store_true", help="merge OUT/run_*.json into tables")
    ap.add_argument("--breakdown", action="store_true", help="time one layer's pieces")
    ap.add_argument("--unfused", action="store_true", help="separate q/k/v and gate/up GEMMs")
    args = ap.parse_args()
    if args.report:
        report(args.out)
        return
    if args.breakdown:
        rows = breakdown(args.model, args.seq, args.repeats)
        bench.write_metrics(args.out / f"breakdown_{args.model}_{args.seq}.json", {"rows": rows})
        return
    if args.attn == "auto":
        args.attn = resolve_dense("auto", jnp.bfloat16)
    args.tag += "_unfused" if args.unfused else ""
    r = run(args.model, args.seq, args.attn, args.chunk or None, args.repeats, args.layers,
            fuse_qkv=not args.unfused)
    r["tag"] = args.tag
    r["fused_projections"] = not args.unfused
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"run_{args.model}_{args.seq}_{args.attn}_c{args.chunk}{args.tag}.json"
    path = bench.write_metrics(args.out / name, r)
    print(json.dumps({k: r[k] for k in ("model", "seq", "chunk", "warm_median_s", "compile_s",
                                        "peak_memory_bytes", "tflops_per_s",
                                        "attention_share", "logits_finite")}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
