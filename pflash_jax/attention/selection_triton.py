"""FlashPrefill block selection on Pallas' Triton backend: the block-mass kernel
(selection.block_mass(impl="triton"), selection.py step 3) and the fused selection kernel, alpha
or fixed-density mode (select_blocks / select_blocks_fixed_density with impl="triton",
share="none"; steps 3-5). docs/design.md 1.1.

Mass kernel (`_mass_kernel`), one program per (query block m, query head, batch row), heaviest
query blocks first: the scores s[i, n] = q_i . kbar[n] / sqrt(H) of the block's rows against BN =
`chunk` key blocks at a time stay in registers, in log2 units (exp2 of log2(e)-scaled scores).
Only the causal chunks are visited, and only the one holding the diagonal is masked (n < m: all
rows vote; n == m: only the block's last valid row; n > m: nobody). Each chunk j writes its
row-summed exp e and (once) its own max constant c_j; a tiny XLA epilogue (`block_mass_triton`)
rescales the chunks to one constant per query block and normalises: the same mass as
selection_xla.py, 1.6 ms at 128K on an H200 against its 12 ms (whole alpha-mode selection 1.6
vs 11.8 ms). The q . kbar product runs in q's dtype (kbar rounded to it) with float32
accumulation.

Fused selection kernel (`_select_kernel`), one program per (query block, head, batch row): it
reads the mass kernel's raw chunks and does the rescale, normalisation, threshold, structural OR,
causal AND and the compression (ranks by cumsum, one scatter store) in registers, writing the
BlockMask's three arrays directly. It replaces a chain of XLA passes over [B,N,M,M] float32 plus
BlockMask.from_dense (0.30 ms of compression alone at 128K, 16 heads on an H100): with the
retuned mass kernel (MASS_TILES) the whole alpha-mode selection went from 1.49 to 1.21 ms there
(one process, results/kernel_bench/h100/session3_selection; block means 0.22 ms of it). It uses
the same float32 operations as the unfused path (selection.select_blocks_unfused, kept for the
other modes and as the reference), so the masks are identical in interpret mode (tested);
compiled, the row sum's order and Triton's float32 division may round differently from XLA's,
which can flip only blocks within a few ulps of the threshold (the GPU test allows 1e-5
relative).

Fixed-density mode (`mode="density"`) replaces the alpha threshold by the unfused path's rule
(selection.select_blocks_fixed_density_unfused): keep the causal non-structural blocks whose
mass >= the r-th largest of theirs, r = budget(m) - #structural(m) (none if r <= 0), ties all
kept. The r-th largest is found in registers by bisection over int32 bit patterns, which order
as the floats do for non-negative float32 (the masses): 31 halvings of [0, one past +inf), each
a count over the row's [Cp, chunk] values, instead of XLA's sort of every [M] row. The budgets
(selection_common.density_budget, the same XLA expression as the unfused path) are a per-row
input, so density is a runtime value like alpha.

Layout: q [B,S,N,H], k [B,S,K,H] (query head h reads kv head h // G). The mass kernel writes
e float32 [B,N,M,Cp*chunk] and c float32 [B,N,M,Cp], Cp = next power of two >= the number of
chunks (Triton shapes are powers of two, and the select kernel holds a row as [Cp, chunk]).

Limits: block_size and head dim powers of two (Triton tensor shapes), chunk >= 16 (Triton dot);
an sm_80+ GPU or interpret=True.
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
from pflash_jax.attention.selection_common import block_means, density_budget, is_structural
from pflash_jax.numerics import MASK_VALUE

LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class MassTiles:
    """The mass kernel's knobs. chunk: key blocks per step (clamped to [16, next power of two
    >= M]); num_warps / num_stages: Triton launch parameters."""

    chunk: int = 64
    num_warps: int = 4
    num_stages: int = 1


# From a grid timed on an H100 (S=128K, 16/8 heads, probe_selection.py,
# results/kernel_bench/h100/session3_selection): chunk 64 / 4 warps / 1 stage 1.20 ms against
# 1.36 ms for the earlier 128 / 8 / 2 (half the wasted columns in the diagonal's chunk, no
# register pressure from a second stage); 3 stages were the slowest everywhere.
MASS_TILES = MassTiles()


def _mass_kernel(q_ref, kbar_ref, e_ref, c_ref, *, seq_len: int, n_blocks: int, chunk: int,
                 scale: float):
    # q_ref    [b, H]          the rows of query block m (one head)
    # kbar_ref [n_chunks * chunk, H]  block means of this head's kv head (zero-padded)
    # e_ref    [Cp * chunk]    out: sum over voting rows of 2^(s' - c_j), s' = s * log2(e), per n
    # c_ref    [Cp]            out: c_j, the max voting s' of chunk j (MASK_VALUE if none);
    #                          Cp = next power of two >= n_chunks, so that the fused epilogue can
    #                          hold the row as a [Cp, chunk] tensor (Triton shapes are powers of 2)
    m = n_blocks - 1 - pl.program_id(0)  # heaviest (most chunks) first
    q = q_ref[...]
    b = q.shape[0]
    rows = m * b + jnp.arange(b)
    last_row = jnp.minimum((m + 1) * b, seq_len) - 1
    ragged = seq_len % b != 0  # static: only then can a row be padding

    def visit(j, masked):
        n = j * chunk + jnp.arange(chunk)
        kb = kbar_ref[pl.ds(pl.multiple_of(j * chunk, chunk), chunk), :]
        # Key blocks on the row axis: the per-n sum over query rows is then a row reduction.
        s = plgpu.dot(kb, q, trans_b=True) * (scale * LOG2E)  # [chunk, b] float32, log2 units
        if masked:  # the chunk holding the diagonal: n < m votes, n == m only its last row
            votes = (((n[:, None] < m) & (rows[None, :] < seq_len))
                     | ((n[:, None] == m) & (rows[None, :] == last_row)))
            s = jnp.where(votes, s, MASK_VALUE)
        elif ragged:
            s = jnp.where(rows[None, :] < seq_len, s, MASK_VALUE)
        c = jnp.max(jnp.max(s, axis=1), axis=0)
        e = jnp.sum(jnp.exp2(s - c), axis=1)  # masked entries underflow to exactly 0
        e_ref[pl.ds(j * chunk, chunk)] = e
        c_ref[j] = c

    def full(j, carry):  # every n < m: all rows vote
        visit(j, masked=False)
        return carry

    def skip(j, carry):  # chunks above the diagonal (and the padding chunks): nobody votes
        e_ref[pl.ds(j * chunk, chunk)] = jnp.zeros((chunk,), jnp.float32)
        # plgpu.store, not c_ref[j] = ...: JAX 0.11's Triton lowering of `ref[i] = constant`
        # pairs the constant with the index's dtype (int32) and fails.
        plgpu.store(c_ref.at[j], MASK_VALUE)
        return carry

    diag = jax.lax.div(m, chunk)
    jax.lax.fori_loop(0, diag, full, 0)
    visit(diag, masked=True)
    jax.lax.fori_loop(diag + 1, c_ref.shape[0], skip, 0)


def mass_chunks(q, k, *, block_size: int, interpret: bool, tiles: MassTiles = MASS_TILES):
    """The mass kernel's raw output: e float32 [B,N,M,Cp,chunk] (zero past M), c [B,N,M,Cp].
    probe_selection.py times other tiles than MASS_TILES."""
    B, S, N, H = q.shape
    K = k.shape[2]
    G = N // K
    M = -(-S // block_size)
    chunk = max(16, min(tiles.chunk, pl.next_power_of_2(M)))  # Triton dot needs >= 16
    n_chunks = -(-M // chunk)
    Cp = pl.next_power_of_2(n_chunks)
    kbar = block_means(k, block_size).astype(q.dtype)
    kbar = jnp.pad(kbar, ((0, 0), (0, n_chunks * chunk - M), (0, 0), (0, 0)))
    if M * block_size != S:
        q = jnp.pad(q, ((0, 0), (0, M * block_size - S), (0, 0), (0, 0)))
    kernel = functools.partial(_mass_kernel, seq_len=S, n_blocks=M, chunk=chunk,
                               scale=1.0 / math.sqrt(H))
    row = lambda i, h, b: (b, h, M - 1 - i, 0)
    e, c = pl.pallas_call(
        kernel,
        grid=(M, N, B),
        in_specs=[
            pl.BlockSpec((None, block_size, None, H), lambda i, h, b: (b, M - 1 - i, h, 0)),
            pl.BlockSpec((None, n_chunks * chunk, None, H),
                         lambda i, h, b: (b, 0, jax.lax.div(h, G), 0)),
        ],
        out_specs=[pl.BlockSpec((None, None, None, Cp * chunk), row),
                   pl.BlockSpec((None, None, None, Cp), row)],
        out_shape=[jax.ShapeDtypeStruct((B, N, M, Cp * chunk), jnp.float32),
                   jax.ShapeDtypeStruct((B, N, M, Cp), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps,
                                             num_stages=tiles.num_stages),
        interpret=interpret,
        name="flashprefill_block_mass",
    )(q, kbar)
    return e.reshape(B, N, M, Cp, chunk), c


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "tiles"))
def block_mass_triton(q, k, *, block_size: int = 128, interpret: bool = False,
                      tiles: MassTiles = MASS_TILES):
    """Normalised block mass float32 [B, N, M, M] through the mass kernel (docstring)."""
    e, c = mass_chunks(q, k, block_size=block_size, interpret=interpret, tiles=tiles)
    B, N, M = c.shape[:3]
    # One constant per query block: rescale each chunk from its own max to the row's max.
    e = e * jnp.exp2(c - jnp.max(c, axis=-1, keepdims=True))[..., None]
    mass = e.reshape(B, N, M, -1)[..., :M]
    return mass / jnp.sum(mass, axis=-1, keepdims=True)


# One past the bit pattern of +inf: every non-negative float32's pattern is below it.
_PAST_INF_BITS = 0x7F800001


def _sum2(x):
    """Sum of a [Cp, chunk] tensor, one axis at a time: a two-axis jnp.sum fails to lower under
    an abstract mesh (the CPU test's CUDA lowering), and Triton splits it that way anyway."""
    return jnp.sum(jnp.sum(x, axis=1))


def _nth_largest_bits(bits, cand, r):
    """The largest t with #{cand & bits >= t} >= r (r >= 1): the bit pattern of the r-th
    largest candidate. Bisection on [0, _PAST_INF_BITS), where the count is >= r at the bottom
    and < r at the top: 31 halvings leave one value. For non-negative float32 the int32 bit
    patterns order as the floats do, so `bits >= t` is the float comparison `mass >= thr`."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2  # not (lo + hi) // 2: that overflows int32
        enough = _sum2((cand & (bits >= mid)).astype(jnp.int32)) >= r
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    bounds = (jnp.int32(0), jnp.int32(_PAST_INF_BITS))
    return jax.lax.fori_loop(0, 31, halve, bounds)[0]


def _select_kernel(param_ref, e_ref, c_ref, mask_ref, idx_ref, count_ref, *, mode: str,
                   n_blocks: int, sink: int, window: int, last_full: int):
    # param_ref [1]          mode "alpha": alpha float32; mode "density": row m's budget int32
    #                        (inputs, not constants: no recompile per alpha or density)
    # e_ref     [Cp, chunk]  row m of the mass kernel's e: key block n = j * chunk + i at [j, i]
    # c_ref     [Cp]         the constant of each chunk j
    # mask_ref  [M] int8     out: dense keep row (int8: a bool ref would be i1 pointers)
    # idx_ref   [M] int32    out: kept n ascending, then m repeated (as blockmask.compress)
    # count_ref []  int32    out: number of kept blocks
    m = pl.program_id(0)
    Cp, chunk = e_ref.shape
    j = jnp.arange(Cp)
    n = j[:, None] * chunk + jnp.arange(chunk)[None, :]  # [Cp, chunk]
    # Chunks past the diagonal's hold exact zeros: skipping their load changes no value.
    e = plgpu.load(e_ref, mask=jnp.broadcast_to((j <= m // chunk)[:, None], n.shape), other=0.0)
    c = c_ref[...]
    # The same float32 operations as block_mass_triton's epilogue and the thresholds in
    # selection.select_blocks_unfused / select_blocks_fixed_density_unfused, so that the keep
    # decisions match them (see the docstring).
    scaled = e * jnp.exp2(c - jnp.max(c))[:, None]
    mass = scaled / _sum2(scaled)
    causal = n <= m  # it also drops the padding columns n >= M
    structural = causal & is_structural(m, n, n_blocks=n_blocks, sink=sink, window=window,
                                        last_full=last_full)
    if mode == "alpha":
        keep = (mass >= param_ref[0] * jnp.max(jnp.max(mass, axis=1))) & causal
    else:  # "density": the unfused path's rule, score >= the budget-th largest score, where
        # structural blocks score +inf: the top r = budget - #structural of the others, ties
        # included; r <= 0 keeps the structural blocks alone.
        cand = causal & ~structural
        r = param_ref[0] - _sum2(structural.astype(jnp.int32))
        bits = jax.lax.bitcast_convert_type(mass, jnp.int32)  # mass >= 0: sign bit clear
        keep = cand & (bits >= _nth_largest_bits(bits, cand, r)) & (r > 0)
    keep = keep | structural
    # Rank of every n among the kept (inclusive count): within a chunk by a cumsum along it,
    # plus the kept total of the chunks before it (exclusive cumsum of the chunk totals).
    kept = keep.astype(jnp.int32)
    per_chunk = jnp.sum(kept, axis=1)
    upto = jnp.cumsum(kept, axis=1) + (jnp.cumsum(per_chunk) - per_chunk)[:, None]
    count = jnp.sum(per_chunk)
    # One scatter store through a permutation of [0, Cp * chunk): kept n go to slot upto - 1,
    # dropped n to count + (number dropped before n) and carry the value m, so the slots past
    # count repeat the last kept block (m: the diagonal is kept and is the largest causal n).
    # No two lanes share an address, so there is no write order to get wrong (also in the
    # interpreter, which scatters masked-off lanes too); slots >= M are padding, not stored.
    pos = jnp.where(keep, upto - 1, count + n - upto)
    plgpu.store(idx_ref.at[pos], jnp.where(keep, n, m), mask=pos < n_blocks)
    plgpu.store(mask_ref.at[n], keep.astype(jnp.int8), mask=n < n_blocks)
    count_ref[...] = count


def _select_fused(q, k, param, *, per_row: bool, mode: str, block_size: int, sink: int,
                  window: int, last_full: int, interpret: bool, tiles: MassTiles,
                  num_warps: int) -> BlockMask:
    """The mass kernel, then the select kernel in `mode`; param [1] (one for all rows) or
    [M] (per_row: entry m for query block m)."""
    e, c = mass_chunks(q, k, block_size=block_size, interpret=interpret, tiles=tiles)
    B, N, M, Cp, chunk = e.shape
    kernel = functools.partial(_select_kernel, mode=mode, n_blocks=M, sink=sink, window=window,
                               last_full=last_full)
    row = lambda m, h, b: (b, h, m, 0)
    mask, indices, counts = pl.pallas_call(
        kernel,
        grid=(M, N, B),
        in_specs=[
            pl.BlockSpec((1,), (lambda m, h, b: (m,)) if per_row else (lambda m, h, b: (0,))),
            pl.BlockSpec((None, None, None, Cp, chunk), lambda m, h, b: (b, h, m, 0, 0)),
            pl.BlockSpec((None, None, None, Cp), row),
        ],
        # Rows of exactly M entries (M need not be a power of two: only the stores' index
        # tensors [Cp, chunk] are Triton tensors, the rows are pointers + masks).
        out_specs=[pl.BlockSpec((None, None, None, M), row)] * 2
        + [pl.BlockSpec((None, None, None), lambda m, h, b: (b, h, m))],
        out_shape=[jax.ShapeDtypeStruct((B, N, M, M), jnp.int8),
                   jax.ShapeDtypeStruct((B, N, M, M), jnp.int32),
                   jax.ShapeDtypeStruct((B, N, M), jnp.int32)],
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name=f"flashprefill_select_{mode}",
    )(param, e, c)
    # The kernel enforces from_dense's invariants (diagonal kept, causal), so no second pass.
    return BlockMask(mask.astype(bool), indices, counts, block_size=block_size,
                     seq_len=q.shape[1])


def select_blocks_fused(q, k, alpha, *, block_size: int, sink: int, window: int,
                        last_full: int, interpret: bool, tiles: MassTiles = MASS_TILES,
                        num_warps: int = 4) -> BlockMask:
    """select_blocks for impl="triton", share="none": the mass kernel, then the select kernel.
    num_warps: the select kernel's (tiles are the mass kernel's)."""
    return _select_fused(q, k, jnp.asarray(alpha, jnp.float32).reshape(1), per_row=False,
                         mode="alpha", block_size=block_size, sink=sink, window=window,
                         last_full=last_full, interpret=interpret, tiles=tiles,
                         num_warps=num_warps)


def select_blocks_fixed_density_fused(q, k, density, *, block_size: int, sink: int,
                                      window: int, last_full: int, interpret: bool,
                                      tiles: MassTiles = MASS_TILES,
                                      num_warps: int = 4,
                                      structural_in_budget: bool = True) -> BlockMask:
    """select_blocks_fixed_density for impl="triton", share="none": the mass kernel, then the
    select kernel with each row's budget (selection_common.density_budget, computed as the
    unfused path does). num_warps: the select kernel's."""
    budget = density_budget(density, -(-q.shape[1] // block_size), sink=sink, window=window,
                            last_full=last_full, structural_in_budget=structural_in_budget)
    return _select_fused(q, k, budget, per_row=True, mode="density", block_size=block_size,
                         sink=sink, window=window, last_full=last_full, interpret=interpret,
                         tiles=tiles, num_warps=num_warps)
