"""The fp8 (W8A8) SwiGLU MLP's down-projection input in one row-wise Pallas/Triton kernel.

In `quant.matmul` form the fp8 MLP is down(quantize_rows(silu(gate(h)) * up(h))): XLA made two
passes of the activation at 128K on an H100, one for each token's amax and one that recomputes
silu(g) * u (re-reading both GEMM outputs and re-applying their scales) to write e4m3. They
took 1.00 + 1.36 ms a layer of Qwen3-0.6B (results/fp8_pv_h100). `silu_mul_quant` reads each
row block of the two fp8 GEMMs' raw bf16 outputs, dequantizes them as `quant.matmul` would
(times the token's and the column's scales, rounded to bf16), forms silu(g) * u with the same
bf16 roundings as the XLA expression, and writes the e4m3 rows and their scales
(`quant.quantize_rows`' rule: amax / 448, 1 for an all-zero row, clipped before the cast). The
second pass over a row block reads what the first just brought into L2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

FP8 = jnp.float8_e4m3fn
QMAX = float(jnp.finfo(FP8).max)  # 448
ROWS = 16  # rows per program
MAX_CHUNK = 1024  # columns per step (a power of two dividing F)


def chunk_of(F: int) -> int | None:
    """The largest power of two <= MAX_CHUNK dividing F (>= 128), or None."""
    c = MAX_CHUNK
    while c >= 128:
        if F % c == 0:
            return c
        c //= 2
    return None


def runs_here() -> bool:
    """A GPU whose Triton casts to e4m3 (compute capability 8.9+: Ada, Hopper)."""
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return False
    try:
        major, minor = (int(x) for x in str(dev.compute_capability).split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (8, 9)


def supports(R: int, F: int) -> bool:
    """Whether the kernel takes [R, F] activations (R a multiple of ROWS, F of 128)."""
    return R % ROWS == 0 and chunk_of(F) is not None


def _act(g, u, xs, wg, wu, dtype):
    """silu(g) * u as the XLA expression computes it: each GEMM output dequantized and rounded
    to the activations' dtype, silu rounded, the product rounded; float32 out."""
    def deq(acc, w):
        return (acc.astype(jnp.float32) * xs * w[None, :]).astype(dtype)

    g, u = deq(g, wg), deq(u, wu)
    gf = g.astype(jnp.float32)
    s = (gf * jax.nn.sigmoid(gf)).astype(dtype)
    return (s.astype(jnp.float32) * u.astype(jnp.float32)).astype(dtype).astype(jnp.float32)


def _kernel(g_ref, u_ref, xs_ref, wg_ref, wu_ref, o_ref, s_ref, *, n_chunks: int, chunk: int,
            dtype):
    xs = xs_ref[...]  # [ROWS, 1] float32: the tokens' activation scales

    def act(c):
        cols = pl.ds(c * chunk, chunk)
        return _act(g_ref[:, cols], u_ref[:, cols], xs, wg_ref[cols], wu_ref[cols], dtype)

    amax = jnp.zeros((ROWS,), jnp.float32)
    for c in range(n_chunks):  # pass 1: each row's amax
        amax = jnp.maximum(amax, jnp.max(jnp.abs(act(c)), axis=1))
    scale = jnp.where(amax > 0, amax / QMAX, 1.0)
    s_ref[...] = scale[:, None]
    for c in range(n_chunks):  # pass 2: the e4m3 values (the block is in L2 now)
        y = jnp.clip(act(c) / scale[:, None], -QMAX, QMAX)
        o_ref[:, pl.ds(c * chunk, chunk)] = y.astype(FP8)


@functools.partial(jax.jit, static_argnames=("dtype", "interpret"))
def silu_mul_quant(g, u, xs, wg, wu, *, dtype=jnp.bfloat16, interpret: bool = False):
    """g, u [R, F]: the gate / up fp8 GEMMs' raw outputs (before scales); xs [R, 1] float32:
    the tokens' activation scales; wg, wu [F] float32: the weights' column scales ->
    (e4m3 [R, F], float32 scales [R, 1]) of silu(g) * u, the down projection's input."""
    R, F = g.shape
    chunk = chunk_of(F)
    if not supports(R, F):
        raise ValueError(f"silu_mul_quant takes R a multiple of {ROWS} and F of 128, got "
                         f"[{R}, {F}]")
    rows = pl.BlockSpec((ROWS, F), lambda i: (i, 0))
    cols = pl.BlockSpec((F,), lambda i: (0,))
    one = pl.BlockSpec((ROWS, 1), lambda i: (i, 0))
    return pl.pallas_call(
        functools.partial(_kernel, n_chunks=F // chunk, chunk=chunk, dtype=dtype),
        grid=(R // ROWS,),
        in_specs=[rows, rows, one, cols, cols],
        out_specs=[rows, one],
        out_shape=[jax.ShapeDtypeStruct((R, F), FP8),
                   jax.ShapeDtypeStruct((R, 1), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="fp8_silu_mul_quant",
    )(g, u, xs, wg, wu)
