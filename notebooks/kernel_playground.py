# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Kernel playground: block-sparse causal attention in Pallas
#
# The cell "The kernel" below holds a complete block-sparse flash-attention forward written in
# Pallas (Triton backend). Edit it, rerun the cells below it:
#
# 1. `playground.check_kernel` runs it against the reference (dense float32 attention with the
#    block mask expanded to tokens) on fresh random inputs: the causal diagonal alone, every
#    block kept, random sparse rows, GQA, S not a multiple of the block, batch 2, the
#    FlashPrefill selection, bf16. Any mismatch raises an AssertionError listing each failing
#    case with its max and mean error.
# 2. The block mask it ran on is drawn.
# 3. On a GPU it is timed against cuDNN flash attention (and the package's tuned kernel).
#
# On a CPU the kernel runs with `interpret=True` (slow, but the same program); sizes stay small.
# `PFLASH_NB_SMALL=1` shrinks them further (CI).

# %%
import functools
import math
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pflash_jax import viz
from pflash_jax.attention import BlockMask, playground, select_blocks_fixed_density
from pflash_jax.numerics import MASK_VALUE

SMALL = os.environ.get("PFLASH_NB_SMALL") == "1"
INTERPRET = not playground.gpu_available()  # Pallas interpreter off the GPU
print(f"backend {jax.default_backend()}, jax {jax.__version__}, interpret={INTERPRET}, "
      f"small={SMALL}")

# %% [markdown]
# ## The kernel (edit me)
#
# One program per (query block m, query head h, batch row b). The BlockMask gives row
# (b, h, m) as a compressed list: `indices` (kept key blocks, ascending, the diagonal last) and
# `counts` (how many). The program loops over its kept key blocks with an online softmax in
# float32 and never touches the others. Every visited block gets the token mask
# (key <= query, key < S): simple rather than fast (the package kernel in
# `pflash_jax/attention/triton.py` masks the diagonal block only and uses exp2).

# %%
def attention_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, o_ref, *, block: int,
                     seq_len: int, scale: float):
    # idx_ref [Mp] int32     kept key blocks of this query block (ascending, then padding)
    # cnt_ref [Mp] int32     kept-block counts of every query block of this (batch, head)
    # q_ref   [block, H]     this query block
    # k_ref   [S_pad, H]     all keys of this head's kv head (read at kept blocks only)
    # v_ref   [S_pad, H]     all values, same
    # o_ref   [block, H]     output block
    m = pl.program_id(0)
    q = q_ref[...]
    q_pos = m * block + jnp.arange(block)

    def visit(j, carry):
        acc, m_i, l_i = carry
        start = pl.multiple_of(idx_ref[j] * block, block)
        k = k_ref[pl.ds(start, block), :]
        v = v_ref[pl.ds(start, block), :]
        s = plgpu.dot(q, k, trans_b=True) * scale  # [block, block] float32
        k_pos = start + jnp.arange(block)
        ok = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] < seq_len)
        s = jnp.where(ok, s, MASK_VALUE)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=-1))
        corr = jnp.exp(m_i - m_new)  # rescales what was summed under the old max
        p = jnp.exp(s - m_new[:, None])
        l_new = corr * l_i + jnp.sum(p, axis=-1)
        acc = acc * corr[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l_new

    H = q.shape[-1]
    init = (jnp.zeros((block, H), jnp.float32),
            jnp.full((block,), MASK_VALUE, jnp.float32),
            jnp.zeros((block,), jnp.float32))
    acc, _, l_i = jax.lax.fori_loop(0, cnt_ref[m], visit, init)
    o_ref[...] = (acc / l_i[:, None]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("interpret",))
def my_attention(q, k, v, bm: BlockMask, interpret: bool = INTERPRET):
    """q [B,S,N,H], k/v [B,S,K,H], BlockMask -> [B,S,N,H] (causal prefill)."""
    B, S, N, H = q.shape
    G = N // k.shape[2]
    bs, M = bm.block_size, bm.num_blocks
    S_pad = M * bs
    pad = ((0, 0), (0, S_pad - S), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    Mp = pl.next_power_of_2(M)  # Triton likes power-of-two extents
    idx = jnp.pad(bm.indices, ((0, 0), (0, 0), (0, 0), (0, Mp - M)))
    cnt = jnp.pad(bm.counts, ((0, 0), (0, 0), (0, Mp - M)))
    kernel = functools.partial(attention_kernel, block=bs, seq_len=S, scale=1 / math.sqrt(H))
    out = pl.pallas_call(
        kernel,
        grid=(M, N, B),
        in_specs=[
            pl.BlockSpec((None, None, None, Mp), lambda m, h, b: (b, h, m, 0)),
            pl.BlockSpec((None, None, Mp), lambda m, h, b: (b, h, 0)),
            pl.BlockSpec((None, bs, None, H), lambda m, h, b: (b, m, h, 0)),
            pl.BlockSpec((None, S_pad, None, H), lambda m, h, b: (b, 0, h // G, 0)),
            pl.BlockSpec((None, S_pad, None, H), lambda m, h, b: (b, 0, h // G, 0)),
        ],
        out_specs=pl.BlockSpec((None, bs, None, H), lambda m, h, b: (b, m, h, 0)),
        out_shape=jax.ShapeDtypeStruct((B, S_pad, N, H), q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
    )(idx, cnt, q, k, v)
    return out[:, :S]

# %% [markdown]
# ## Check against the reference
# Raises `AssertionError` (with max and mean error per failing case) if the kernel is wrong.

# %%
cases = playground.SMALL_CASES if SMALL else playground.DEFAULT_CASES
rows = playground.check_kernel(my_attention, cases)

# %% [markdown]
# ## The block mask
# A fixed-density mask (top blocks by FlashPrefill mass, sinks / local window / last rows
# always kept) on random q/k, drawn for four heads, and the kernel checked on it once more.
# Random weights give diffuse attention, so the alpha rule (`select_blocks`) keeps nearly
# everything on them; fixed density shows the structure.

# %%
S_demo, block_demo = (1024, 32) if SMALL else (2048, 64)
q, k, v = playground.random_qkv(1, S_demo, 4, 2, 32, seed=1)
bm = select_blocks_fixed_density(q, k, density=0.25, block_size=block_demo)
fig = viz.draw_block_mask(bm, heads=(0, 1, 2, 3))
plt.show()
print(playground.compare(my_attention(q, k, v, bm), playground.reference(q, k, v, bm),
                         "float32"))

# %% [markdown]
# ## Timing against cuDNN (GPU only)
# Median of warm calls, compile excluded, same process and inputs: cuDNN dense causal flash
# attention (`jax.nn.dot_product_attention(implementation="cudnn")`) vs this kernel and the
# package kernel on a 10%-density mask.

# %%
if playground.gpu_available():
    timing = playground.time_against_cudnn(
        {"inline kernel (this notebook)": my_attention,
         "package kernel (triton.py)": playground.package_kernel},
        S=4096 if SMALL else 16384, density=0.1)
else:
    print("No GPU here: skipping the timing against cuDNN (it needs jax.nn.dot_product_attention"
          "(implementation='cudnn')). Run this notebook on a CUDA machine to time the kernel.")
