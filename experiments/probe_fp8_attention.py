"""Probe (issue 17): the Mosaic block-sparse kernel with fp8 Q/K (and P @ V) against bf16,
alone, at the drafter's shapes (Qwen3-0.6B: 16 q / 8 kv heads, head dim 128), fixed block
density. GPU
(Hopper: the fp8 path is wgmma's e4m3 operands):

    python experiments/probe_fp8_attention.py --seqs 32768,131072 --density 0.1
    -> one line per (seq, path): warm ms, TFLOP/s on the kept blocks, error against the bf16
       kernel (and, at --check-seq, both against the float32 reference)

Paths: "bf16" (the kernel as the drafter runs it), "fp8 kernel" (q8, k8 given: the kernel
alone), "fp8 + quantize" (bf16 q, k in: api.block_sparse_attention with qk_fp8_scales, the
rounding inside the same jit, as the drafter would run it), "fp8 qkv kernel" (q8, k8, v8: fp8
P @ V as well, V's transpose to V^T inside), "fp8 qkv + quantize" (api with v_fp8=True: V's
amax and rounding inside the same jit, as attention_pv="fp8" runs). q and k are
RMS-normalised random vectors times `--qk-gain` (the drafter's q/k come out of
q_norm/k_norm), so the logits have the spread of a trained model's rather than N(0, H).
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import bench
from pflash_jax.attention import api, mosaic, reference
from pflash_jax.attention.selection import select_blocks_fixed_density


def qkv(S: int, N: int, K: int, H: int, gain: float, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 3)

    def normed(key, n):
        x = jax.random.normal(key, (1, S, n, H), jnp.float32)
        return (gain * x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True))).astype(
            jnp.bfloat16)

    v = jax.random.normal(ks[2], (1, S, K, H), jnp.bfloat16)
    return normed(ks[0], N), normed(ks[1], K), v


def kept_flops(bm, H: int, N: int) -> float:
    """4 b^2 H per kept off-diagonal block and head, half of that for a diagonal one, over the
    N query heads (a mask shared by every head counts N times)."""
    counts = np.asarray(bm.counts, np.float64)  # [B, N or 1, M]; a row's last entry: diagonal
    if counts.shape[1] == 1:
        counts = counts * N
    b = bm.block_size
    return float(4 * b * b * H * (counts.sum() - 0.5 * counts.size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="32768,131072")
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--heads", default="16,8,128", help="q heads, kv heads, head dim")
    ap.add_argument("--qk-gain", type=float, default=2.0,
                    help="RMS of q and k's elements (q_norm / k_norm weight scale)")
    ap.add_argument("--check-seq", type=int, default=8192,
                    help="also compare both paths with the float32 reference at this length")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    N, K, H = (int(x) for x in args.heads.split(","))
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, heads {N}/{K}/{H}, "
          f"density {args.density}, qk gain {args.qk_gain}", flush=True)
    bound = args.qk_gain * math.sqrt(H) * 1.05 / api.FP8_MAX  # |x| <= gain * sqrt(H)
    scales = (jnp.float32(bound), jnp.float32(bound))
    bf16 = jax.jit(lambda q, k, v, bm: mosaic.block_sparse_attention(q, k, v, bm))
    fp8_kernel = jax.jit(lambda q8, k8, v, bm, s: mosaic.block_sparse_attention(
        q8, k8, v, bm, qk_scale=s))
    fp8_full = jax.jit(lambda q, k, v, bm: api.block_sparse_attention(
        q, k, v, bm, impl="mosaic", qk_fp8_scales=scales))
    qkv_kernel = jax.jit(lambda q8, k8, v8, bm, s, vs: mosaic.block_sparse_attention(
        q8, k8, v8, bm, qk_scale=s, v_scale=vs))
    qkv_full = jax.jit(lambda q, k, v, bm: api.block_sparse_attention(
        q, k, v, bm, impl="mosaic", qk_fp8_scales=scales, v_fp8=True))
    seqs = [int(s) for s in args.seqs.split(",")]
    for S in ([args.check_seq] if args.check_seq else []) + seqs:
        q, k, v = qkv(S, N, K, H, args.qk_gain)
        bm = select_blocks_fixed_density(q, k, density=args.density, block_size=128)
        q8, k8, factor = api.quantize_qk(q, k, scales)
        v8, vs = api.quantize_v(v)
        flops = kept_flops(bm, H, N)
        ref = bf16(q, k, v, bm)
        outs = {"bf16": ref, "fp8 kernel": fp8_kernel(q8, k8, v, bm, factor),
                "fp8 + quantize": fp8_full(q, k, v, bm),
                "fp8 qkv kernel": qkv_kernel(q8, k8, v8, bm, factor, vs),
                "fp8 qkv + quantize": qkv_full(q, k, v, bm)}
        f32 = None
        if S == args.check_seq:
            f32 = reference.block_sparse_attention(
                *(x.astype(jnp.float32) for x in (q, k, v)), bm.mask, block_size=128)
        runs = {"bf16": (bf16, (q, k, v, bm)),
                "fp8 kernel": (fp8_kernel, (q8, k8, v, bm, factor)),
                "fp8 + quantize": (fp8_full, (q, k, v, bm)),
                "fp8 qkv kernel": (qkv_kernel, (q8, k8, v8, bm, factor, vs)),
                "fp8 qkv + quantize": (qkv_full, (q, k, v, bm))}
        for name, (fn, fn_args) in runs.items():
            t = bench.time_fn(fn, *fn_args, warmup=1, repeats=args.repeats).median_s
            err = np.abs(np.asarray(outs[name], np.float32) - np.asarray(ref, np.float32))
            line = (f"seq {S:>6} {name:<18} {t * 1e3:8.3f} ms {flops / t / 1e12:6.0f} TFLOP/s  "
                    f"vs bf16 kernel: max {err.max():.3e} mean {err.mean():.3e}")
            if f32 is not None:
                e32 = np.abs(np.asarray(outs[name], np.float32) - np.asarray(f32))
                line += f"  vs f32 reference: max {e32.max():.3e} mean {e32.mean():.3e}"
            print(line, flush=True)
        print(f"seq {S:>6} kept density {float(bm.density()):.4f}", flush=True)


if __name__ == "__main__":
    main()
