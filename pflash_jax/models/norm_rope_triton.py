"""q_norm / k_norm and RoPE in one pass on Pallas' Triton backend (qwen3.layer_qkv with
norm_rope="triton"; issue 17).

XLA runs a Qwen3 layer's per-head RMSNorm and its rotate-half RoPE as two fusions per tensor:
the norm (a reduction fusion) writes the normalised q, the RoPE (a concatenate fusion) reads it
back and writes the rotated one. At 128K tokens on Qwen3-0.6B that is ~0.5 ms of the drafter's
layer for q alone (results/profile_drafter_h200_s8: fusion_86 + input_concatenate_fusion).
Here one program per (token tile, head, batch row) reads the head's raw rows from the fused
projection output in place, normalises them in float32 and writes the rotated rows (and, if
asked, the normalised ones): one read and one or two writes.

Numerics: the same operations as qwen3.rms_norm then qwen3.apply_rope (float32 mean of squares,
rsqrt, cast to the input dtype, times the weight in the input dtype, rotation in float32, cast
back). The sum of squares runs over the two halves in another order than XLA's reduction and
Triton's rsqrt may differ from XLA's by an ulp, so outputs can differ from the XLA path by one
rounding step of the output dtype (tested).

Layout: x [B, T, C, H], the projection output viewed as C heads of H (a bitcast of the fused
q|k|v GEMM's [B, T, C*H]); the kernel reads heads [first_head, first_head + n_heads). cos / sin
float32 [B, T, H/2] (qwen3.rope_tables, YaRN's factor included). T must be a multiple of the
token tile (the drafter's buckets are multiples of 128); an sm_80+ GPU or interpret=True.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

BLOCK_T = 64  # tokens per program (64 x 128 bf16 = 16 KB read a program at H=128)


def supports(x, block_t: int = BLOCK_T) -> None:
    """Raises NotImplementedError naming what the kernel cannot take."""
    B, T, C, H = x.shape
    if H % 2 or H & (H - 1):
        raise NotImplementedError(f"norm_rope_triton: head dim {H} is not a power of two")
    if T % block_t:
        raise NotImplementedError(f"norm_rope_triton: {T} tokens is not a multiple of the "
                                  f"token tile {block_t}")


def _kernel(x_ref, w_ref, cos_ref, sin_ref, *out_refs, eps: float, with_pre: bool):
    # x_ref [bt, H] one head's raw rows; w_ref [H]; cos_ref / sin_ref [bt, H/2] float32
    # out_refs: rope [bt, H] (then pre [bt, H] when with_pre)
    H = x_ref.shape[-1]
    h2 = H // 2
    lo, hi = pl.ds(0, h2), pl.ds(h2, h2)
    dtype = x_ref.dtype
    x1 = x_ref[:, lo].astype(jnp.float32)
    x2 = x_ref[:, hi].astype(jnp.float32)
    ms = (jnp.sum(x1 * x1, axis=1) + jnp.sum(x2 * x2, axis=1)) / H
    r = jax.lax.rsqrt(ms + eps)[:, None]
    # rms_norm: normalise in float32, cast back, then scale by the weight in the input dtype
    p1 = w_ref[lo][None, :] * (x1 * r).astype(dtype)
    p2 = w_ref[hi][None, :] * (x2 * r).astype(dtype)
    c, s = cos_ref[...], sin_ref[...]
    f1, f2 = p1.astype(jnp.float32), p2.astype(jnp.float32)
    rope = out_refs[0]
    rope[:, lo] = (f1 * c - f2 * s).astype(rope.dtype)
    rope[:, hi] = (f2 * c + f1 * s).astype(rope.dtype)
    if with_pre:
        pre = out_refs[1]
        pre[:, lo] = p1.astype(pre.dtype)
        pre[:, hi] = p2.astype(pre.dtype)


@functools.partial(jax.jit, static_argnames=("first_head", "n_heads", "eps", "with_pre",
                                             "block_t", "interpret"))
def norm_rope_triton(x, w, cos, sin, *, first_head: int, n_heads: int, eps: float,
                     with_pre: bool = False, block_t: int = BLOCK_T, interpret: bool = False):
    """RoPE(rms_norm(x[:, :, first_head:first_head + n_heads], w)) -> [B, T, n_heads, H] in
    x's dtype; with_pre: (rope, the normalised rows before RoPE), else (rope, None)."""
    supports(x, block_t)
    B, T, C, H = x.shape
    if first_head < 0 or first_head + n_heads > C:
        raise ValueError(f"norm_rope_triton: heads [{first_head}, {first_head + n_heads}) "
                         f"outside the input's {C}")
    if w.shape != (H,) or cos.shape != (B, T, H // 2) or sin.shape != cos.shape:
        raise ValueError(f"norm_rope_triton: weight {w.shape} / cos {cos.shape} / sin "
                         f"{sin.shape} do not fit x {x.shape} (want ({H},) and "
                         f"({B}, {T}, {H // 2}))")
    out_spec = pl.BlockSpec((None, block_t, None, H), lambda t, h, b: (b, t, h, 0))
    out_shape = jax.ShapeDtypeStruct((B, T, n_heads, H), x.dtype)
    n_out = 2 if with_pre else 1
    outs = pl.pallas_call(
        functools.partial(_kernel, eps=float(eps), with_pre=with_pre),
        grid=(T // block_t, n_heads, B),
        in_specs=[
            pl.BlockSpec((None, block_t, None, H), lambda t, h, b: (b, t, first_head + h, 0)),
            pl.BlockSpec((H,), lambda t, h, b: (0,)),
            pl.BlockSpec((None, block_t, H // 2), lambda t, h, b: (b, t, 0)),
            pl.BlockSpec((None, block_t, H // 2), lambda t, h, b: (b, t, 0)),
        ],
        out_specs=[out_spec] * n_out,
        out_shape=[out_shape] * n_out,
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="qwen3_norm_rope",
    )(x, w.astype(x.dtype), cos.astype(jnp.float32), sin.astype(jnp.float32))
    return outs[0], (outs[1] if with_pre else None)
