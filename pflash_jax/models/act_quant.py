"""The fp8 (W8A8) SwiGLU MLP's down-projection input in one pass of a row-wise Pallas/Triton
kernel.

In `quant.matmul` form the fp8 MLP is down(quantize_rows(silu(gate(h)) * up(h))). XLA makes two
passes of the activation: one fusion for each token's amax, one that recomputes silu(g) * u
(re-reading both bf16 GEMM outputs) to write e4m3. At 128K tokens of Qwen3-0.6B on an H100 they
took 1.36 + 1.00 ms a layer (results/fp8_pv_h100). `silu_mul_quant` reads each row of the two
fp8 GEMMs' raw outputs once: it dequantizes them (times the token's and the column's scales),
forms silu(g) * u in float32, keeps the whole row in registers while it takes the amax, and
writes the e4m3 row and its scale (`quant.quantize_rows`' rule: amax / 448, 1 for an all-zero
row, clipped before the cast).

Why the row stays in registers: a first version (session 22, reverted) read 16 rows a program
and passed over them twice, once for the amax, once to write. 16 x 1024 float32 values of each
operand per step spilled, and it ran 9.8 ms a layer. Here a program takes `rows` rows (1 by
default) and the F columns in `F / chunk` power-of-two chunks (Triton's tensors are
power-of-two sized): at F = 3072 and 4 warps a thread holds 24 values of the product.

Numerics differ from the XLA expression in where they round: XLA rounds the dequantized g and u,
silu(g) and the product to bf16; the kernel keeps float32 until the e4m3 cast, so it is the
closer of the two to the float32 product (tests/models/test_act_quant.py measures both).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

FP8 = jnp.float8_e4m3fn
QMAX = float(jnp.finfo(FP8).max)  # 448
ROWS = 1  # rows per program (default)
NUM_WARPS = 4
MAX_CHUNK = 1024  # columns per load (a power of two dividing F)
MIN_CHUNK = 128


def chunk_of(F: int) -> int | None:
    """The largest power of two in [MIN_CHUNK, MAX_CHUNK] dividing F, or None."""
    c = MAX_CHUNK
    while c >= MIN_CHUNK:
        if F % c == 0:
            return c
        c //= 2
    return None


ENV = "PFLASH_ACT_QUANT"  # "fused" (default) | "xla": the A/B switch, read when a jit traces


def runs_here() -> bool:
    """Whether quant.swiglu takes the kernel: a GPU whose Triton casts to e4m3 (compute
    capability 8.9+: Ada, Hopper), unless the environment sets PFLASH_ACT_QUANT=xla (the
    matmul expression, for A/B timing; a process-wide switch, so set it before the first
    trace)."""
    mode = os.environ.get(ENV, "fused")
    if mode not in ("fused", "xla"):
        raise ValueError(f"{ENV} must be 'fused' or 'xla', got {mode!r}")
    if mode == "xla":
        return False
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return False
    try:
        major, minor = (int(x) for x in str(dev.compute_capability).split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return (major, minor) >= (8, 9)


def supports(R: int, F: int, rows: int = ROWS) -> bool:
    """Whether the kernel takes [R, F] activations (R a multiple of rows, F of MIN_CHUNK)."""
    return R % rows == 0 and chunk_of(F) is not None


def act_reference(g, u, xs, wg, wu):
    """silu(g') * u' in float32, g' = g * xs * wg (u' likewise): what the kernel quantizes."""
    gf = g.astype(jnp.float32) * xs * wg
    uf = u.astype(jnp.float32) * xs * wu
    return gf * jax.nn.sigmoid(gf) * uf


def _kernel(g_ref, u_ref, xs_ref, wg_ref, wu_ref, o_ref, s_ref, *, n_chunks: int, chunk: int):
    xs = xs_ref[...]  # [rows, 1] float32: the tokens' activation scales
    acts = []
    amax = None
    for c in range(n_chunks):  # one read of each chunk; the products stay in registers
        cols = pl.ds(c * chunk, chunk)
        a = act_reference(g_ref[:, cols], u_ref[:, cols], xs, wg_ref[cols][None, :],
                          wu_ref[cols][None, :])
        m = jnp.max(jnp.abs(a), axis=1)
        amax = m if amax is None else jnp.maximum(amax, m)
        acts.append(a)
    scale = jnp.where(amax > 0, amax / QMAX, 1.0)[:, None]
    s_ref[...] = scale
    for c, a in enumerate(acts):
        o_ref[:, pl.ds(c * chunk, chunk)] = jnp.clip(a / scale, -QMAX, QMAX).astype(FP8)


@functools.partial(jax.jit, static_argnames=("rows", "num_warps", "interpret"))
def silu_mul_quant(g, u, xs, wg, wu, *, rows: int = ROWS, num_warps: int = NUM_WARPS,
                   interpret: bool = False):
    """g, u [R, F]: the gate / up fp8 GEMMs' raw outputs (before scales); xs [R, 1] float32:
    the tokens' activation scales; wg, wu [F] float32: the weights' column scales ->
    (e4m3 [R, F], float32 scales [R, 1]) of silu(g) * u, the down projection's input."""
    R, F = g.shape
    if g.shape != u.shape or xs.shape != (R, 1) or wg.shape != (F,) or wu.shape != (F,):
        raise ValueError(f"silu_mul_quant: g {g.shape}, u {u.shape}, xs {xs.shape}, wg "
                         f"{wg.shape}, wu {wu.shape}; want g, u [R, F], xs [R, 1], wg, wu [F]")
    if not supports(R, F, rows):
        raise ValueError(f"silu_mul_quant takes R a multiple of {rows} and F of {MIN_CHUNK}, "
                         f"got [{R}, {F}]")
    chunk = chunk_of(F)
    block = pl.BlockSpec((rows, F), lambda i: (i, 0))
    cols = pl.BlockSpec((F,), lambda i: (0,))
    one = pl.BlockSpec((rows, 1), lambda i: (i, 0))
    return pl.pallas_call(
        functools.partial(_kernel, n_chunks=F // chunk, chunk=chunk),
        grid=(R // rows,),
        in_specs=[block, block, one, cols, cols],
        out_specs=[block, one],
        out_shape=[jax.ShapeDtypeStruct((R, F), FP8),
                   jax.ShapeDtypeStruct((R, 1), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="fp8_silu_mul_quant",
    )(g, u, xs, wg.astype(jnp.float32), wu.astype(jnp.float32))
