"""Block-sparse causal flash-attention forward: Pallas on the Triton backend (sm_80+).

Algorithm: one program per (query tile, query head, batch row). It reads its selection row's
compressed kept-block list (BlockMask.indices / counts), loops over the kept key blocks with an
online softmax in float32 (exp2 of log2(e)-prescaled logits), and skips every other block: work
and K/V traffic scale with the kept blocks. The causal diagonal block is the LAST kept entry of
a causal row (BlockMask invariant): all earlier entries run unmasked, the last one gets the exact
per-token causal mask (key position <= query position, and < S). Padded keys sit only in the
last block, which only the last query block's diagonal visits, so the same mask hides them.
With causal=False the last entry is masked only for padding (key position < S).

Layout: q/o [B, S, N, H], k/v [B, S, K, H] (S padded inside to a multiple of the selection block
size). Query head h reads kv head h // G (GQA, G = N // K); one program per query head because
selection is per head (kv groups would share K/V tiles only if they shared the kept list).
Programs are launched heaviest-first (last query tiles, which keep the most blocks, start first)
to shorten the tail of the causal work triangle. BlockSizes.group_heads launches the heads of a
kv group side by side (the default: they share K/V blocks in L2; results/kernel_bench).

Block sizes: the selection block (block_size, 128 by default) fixes the mask granularity; the
kernel tiles (block_q query rows, block_k key rows) must divide it. A kept selection block is
visited as block_size / block_k key tiles; a query tile reads the mask row of the selection block
containing it. On the diagonal block only the key tiles that start at or before the query tile's
last row are visited.

Limits: head dim a power of two (64 and 128 tested); T == S (prefill); bf16, f16 and f32
(f32 dots use TF32 on the GPU, and f32 tiles are capped at 64x64 to fit shared memory). Forward
only. Default tiles 128x128, 8 warps, 2 stages: the fastest on an H200 (results/kernel_bench:
3 stages ties, 128x64 is 5% slower, 4 warps 1.8x slower), kv-group heads launched together.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.numerics import MASK_VALUE

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Kernel tiles and Triton launch knobs. block_q and block_k must divide the selection
    block size. Defaults from the H200 sweep in results/kernel_bench (docs/LOG.md)."""

    block_q: int = 128
    block_k: int = 128
    num_warps: int = 8
    num_stages: int = 2
    # Launch the G query heads of a kv group next to each other (grid (G, tiles, K*B)) rather
    # than all tiles of one head first (grid (tiles, N, B)): concurrent programs then share K/V
    # blocks in L2. 7% faster at 128K, density 0.1; equal at density 1 (H200).
    group_heads: bool = True


def _kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, o_ref, *, scale: float, causal: bool,
            seq_len: int, sel_block: int, block_q: int, block_k: int, n_q_tiles: int,
            tile_axis: int):
    # idx_ref [Mp] int32   kept key blocks of this selection row (ascending, padded)
    # cnt_ref [Mp] int32   kept counts of all selection rows of this (batch, head)
    # q_ref   [block_q, H] this query tile
    # k_ref   [S_pad, H]   all keys of this head's kv head (read at kept blocks only)
    # v_ref   [S_pad, H]   all values, same
    # o_ref   [block_q, H] output tile
    tile = n_q_tiles - 1 - pl.program_id(tile_axis)  # heaviest first
    row = jax.lax.div(tile * block_q, sel_block)  # selection row (lax.div: Triton-safe int op)
    q0 = tile * block_q
    q = q_ref[...]
    H = q.shape[-1]
    qk_scale = scale * LOG2E
    sub = sel_block // block_k
    q_pos = q0 + jnp.arange(block_q)

    def visit(kstart, carry, masked):
        acc, m_i, l_i = carry
        kstart = pl.multiple_of(kstart, block_k)
        k = k_ref[pl.ds(kstart, block_k), :]
        v = v_ref[pl.ds(kstart, block_k), :]
        s = plgpu.dot(q, k, trans_b=True) * qk_scale  # [block_q, block_k] float32
        if masked:
            k_pos = kstart + jnp.arange(block_k)
            ok = k_pos[None, :] < seq_len
            if causal:
                ok = ok & (k_pos[None, :] <= q_pos[:, None])
            s = jnp.where(ok, s, MASK_VALUE)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=-1))
        corr = jnp.exp2(m_i - m_new)
        p = jnp.exp2(s - m_new[:, None])
        l_new = corr * l_i + jnp.sum(p, axis=-1)
        acc = acc * corr[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, l_new

    def body(j, carry):
        kblock = idx_ref[j]
        for t in range(sub):
            carry = visit(kblock * sel_block + t * block_k, carry, masked=False)
        return carry

    count = cnt_ref[row]
    carry = (jnp.zeros((block_q, H), jnp.float32),
             jnp.full((block_q,), MASK_VALUE, jnp.float32),
             jnp.zeros((block_q,), jnp.float32))
    carry = jax.lax.fori_loop(0, count - 1, body, carry)

    last = idx_ref[jnp.maximum(count - 1, 0)]
    base = last * sel_block
    if causal:  # diagonal block: key tiles starting after this query tile's last row are future
        n_tiles = jnp.minimum(sub, jax.lax.div(q0 + block_q - base + block_k - 1, block_k))
    else:
        n_tiles = jnp.int32(sub)
    # Integer arithmetic, not a select, for the trip count (0 when the row keeps nothing).
    carry = jax.lax.fori_loop(
        0, jnp.minimum(count, 1) * n_tiles,
        lambda t, c: visit(base + t * block_k, c, masked=True), carry)
    acc, _, l_i = carry
    o_ref[...] = (acc / jnp.where(l_i > 0, l_i, 1.0)[:, None]).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("causal", "block_sizes", "interpret"))
def block_sparse_attention(q, k, v, block_mask: BlockMask, *, causal: bool = True,
                           block_sizes: BlockSizes = BlockSizes(), interpret: bool = False):
    """q [B,S,N,H], k/v [B,S,K,H], BlockMask over M = ceil(S/bs) blocks -> [B,S,N,H] q.dtype."""
    B, S, N, H = q.shape
    K = k.shape[2]
    bs = block_mask.block_size
    bq, bk = min(block_sizes.block_q, bs), min(block_sizes.block_k, bs)
    stages = block_sizes.num_stages
    if jnp.dtype(q.dtype).itemsize > 2:
        # float32 tiles take twice the shared memory: 128x128 tiles at H=128 ask for 256 KB
        # (Hopper has 227 KB per block), so float32 runs 64x64 tiles, 2 stages.
        bq, bk, stages = min(bq, 64), min(bk, 64), min(stages, 2)
    if bs % bq or bs % bk:
        raise ValueError(f"kernel tiles {bq}x{bk} must divide the selection block {bs}")
    if H & (H - 1):
        raise ValueError(f"head dim {H} must be a power of two for the Triton backend")
    if N % K:
        raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
    M = block_mask.num_blocks
    if block_mask.shape != (B, N, M, M) or M != -(-S // bs):
        raise ValueError(f"block mask {block_mask.shape} does not fit q {q.shape} with "
                         f"block_size {bs}")
    G = N // K
    S_pad = M * bs
    if S_pad != S:
        pad = ((0, 0), (0, S_pad - S), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    # Index rows padded to a power of two: Triton refs are happiest with power-of-two extents.
    Mp = pl.next_power_of_2(M)
    idx = jnp.pad(block_mask.indices, ((0, 0), (0, 0), (0, 0), (0, Mp - M)))
    cnt = jnp.pad(block_mask.counts, ((0, 0), (0, 0), (0, Mp - M)))
    n_q_tiles = S_pad // bq
    per_row = bs // bq

    def coords(*ids):  # grid ids -> (query tile, query head, batch row)
        if block_sizes.group_heads:
            g, i, kb = ids
            return n_q_tiles - 1 - i, jax.lax.rem(kb, K) * G + g, jax.lax.div(kb, K)
        i, h, b = ids
        return n_q_tiles - 1 - i, h, b

    def row_map(*ids):
        t, h, b = coords(*ids)
        return b, h, jax.lax.div(t, per_row), 0

    def count_map(*ids):
        _, h, b = coords(*ids)
        return b, h, 0

    def tile_map(*ids):
        t, h, b = coords(*ids)
        return b, t, h, 0

    def kv_map(*ids):
        _, h, b = coords(*ids)
        return b, 0, jax.lax.div(h, G), 0

    grid = (G, n_q_tiles, K * B) if block_sizes.group_heads else (n_q_tiles, N, B)
    kernel = functools.partial(_kernel, scale=1.0 / math.sqrt(H), causal=causal, seq_len=S,
                               sel_block=bs, block_q=bq, block_k=bk, n_q_tiles=n_q_tiles,
                               tile_axis=1 if block_sizes.group_heads else 0)
    out = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[
            pl.BlockSpec((None, None, None, Mp), row_map),
            pl.BlockSpec((None, None, Mp), count_map),
            pl.BlockSpec((None, bq, None, H), tile_map),
            pl.BlockSpec((None, S_pad, None, H), kv_map),
            pl.BlockSpec((None, S_pad, None, H), kv_map),
        ],
        out_specs=pl.BlockSpec((None, bq, None, H), tile_map),
        out_shape=jax.ShapeDtypeStruct((B, S_pad, N, H), q.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=block_sizes.num_warps,
                                             num_stages=stages),
        interpret=interpret,
        name="block_sparse_attention_fwd",
    )(idx, cnt, q, k, v)
    return out[:, :S]
