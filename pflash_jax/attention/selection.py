"""FlashPrefill block selection (DESIGN 1.1): which key blocks each query block attends to.

With block size b and M = ceil(S / b) blocks, per batch row and query head:
1. kbar[n] = mean of the keys of block n (a partial last block averages its valid rows only).
2. s[i, n] = q_i . kbar[n] / sqrt(H), counted only for rows i >= last key index of block n
   (min((n + 1) b, S) - 1) and i < S: a row votes only for blocks it can fully see, and padding
   rows never vote. Consequence: for n < m every row of block m votes; for the diagonal n == m
   only the block's last valid row does; for n > m nobody does (mass 0).
3. mass[m, n] = sum over voting rows i of block m of exp(s[i, n]), divided by sum_n' of the same:
   the share of block m's (block-averaged) attention mass that goes to key block n. One constant
   per query block (its largest voting score) is subtracted before exp: it cancels in the ratio
   and keeps exp from overflowing.
4. alpha mode (`select_blocks`): keep n if mass[m, n] >= alpha * max_n' mass[m, n'] (alpha on this
   NORMALISED scale, FlashPrefill's 0.08-0.18; not the unnormalised 0.7-0.85 of other systems).
   Fixed-density mode (`select_blocks_fixed_density`): keep ceil(density * (m + 1)) blocks of row m
   (structural ones first, then highest mass), for controlled timing on random weights.
5. Structural blocks are always kept: sinks (n < sink), the local window (m - window < n <= m, the
   diagonal included), and every block of the last `last_full` query blocks. Then AND causal.

Two implementations of the mass (step 3), `impl=`:
- "xla": plain jnp, scores built for a chunk of query blocks at a time (all heads), about
  `chunk_bytes` of float32 (at S = 128K, 16 heads the full [S, M] tensor would be 8.6 GB). It
  writes and re-reads every score: about 12 ms at 128K on an H200.
- "triton": a Pallas (Triton backend) kernel, one program per (query block, head): scores for
  BN key blocks at a time stay in registers, only the causal chunks are visited (only the one
  holding the diagonal is masked), exp2 of log2(e)-scaled scores, and each chunk writes its
  row-summed exp and (once) its own max constant; a tiny XLA epilogue rescales the chunks to one
  constant per query block and normalises (exactly the same mass): 1.6 ms at 128K on an H200
  (whole alpha-mode selection 1.6 ms vs 11.8 ms with "xla"). "auto" picks triton on a GPU.
  The q . kbar product runs in q's dtype (kbar rounded to it) with float32 accumulation.

alpha mode with "triton" and share="none" does not build the dense mass at all: a second Pallas
kernel (`_select_kernel`, one program per query block, head and batch row) reads the mass
kernel's raw chunks and does the rescale, normalisation, threshold, structural OR, causal AND and
the compression (ranks by cumsum, one scatter store) in registers, writing the BlockMask's three
arrays directly. It replaces a chain of XLA passes over [B,N,M,M] float32 plus from_dense
(0.30 ms of compression alone at 128K, 16 heads on an H100): with the retuned mass kernel
(MASS_TILES) the whole alpha-mode selection went from 1.49 to 1.21 ms there (one process,
results/kernel_bench/h100/session3_selection; block means 0.22 ms of it). It uses the same
float32 operations as the unfused path (`_select_dense`, kept for the other modes and as the
reference), so the masks are identical in interpret mode (tested); compiled, the row sum's
order and Triton's float32 division may round differently from XLA's, which can flip only
blocks within a few ulps of the threshold (the GPU test allows 1e-5 relative).

GQA (`share`): selection is per query head (kbar from the head's kv group). `share="union"` keeps
the union of a kv group's per-head masks, `share="mean"` thresholds the group's mean mass; both
give every head of a group the same list. Default "none" (per head), chosen from a measurement
(results/kernel_bench, H200, S=32K, alpha=0.1, structured random q/k, Qwen3-0.6B heads):
sharing buys no selection time (0.50 / 0.53 / 0.57 ms for none / union / mean: the per-head
scores dominate and are computed anyway) and no kernel time (the kernel runs one program per
query head; it would need a shared list to fold a group into one program). union raises density
0.155 -> 0.210 (+36% kernel time, 2.65 -> 3.03 ms) for +5 points of kept own-head mass;
mean raises density to 0.175 and keeps slightly LESS own-head mass (0.723 vs 0.726).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pflash_jax.attention.api import resolve_mass
from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.numerics import MASK_VALUE

LOG2E = math.log2(math.e)

SHARE_MODES = ("none", "union", "mean")


def block_means(k, block_size: int):
    """k [B,S,K,H] -> kbar float32 [B,M,K,H]: mean of each block's valid keys."""
    B, S, K, H = k.shape
    M = -(-S // block_size)
    kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, M * block_size - S), (0, 0), (0, 0)))
    sums = kp.reshape(B, M, block_size, K, H).sum(axis=2)
    valid = jnp.minimum(block_size, S - jnp.arange(M) * block_size).astype(jnp.float32)
    return sums / valid[None, :, None, None]


def block_mass(q, k, *, block_size: int = 128, impl: str = "auto", interpret: bool = False):
    """Normalised block mass float32 [B, N, M, M] (step 3 above); zero above the diagonal."""
    impl = resolve_mass(impl, interpret)
    if impl == "xla":
        return block_mass_xla(q, k, block_size=block_size)
    if impl == "triton":
        return block_mass_triton(q, k, block_size=block_size, interpret=interpret)
    raise ValueError(f"unknown block_mass impl {impl!r}; expected auto, xla or triton")


@functools.partial(jax.jit, static_argnames=("block_size", "chunk_bytes"))
def block_mass_xla(q, k, *, block_size: int = 128, chunk_bytes: int = 1 << 28):
    """block_mass in plain jnp, chunked over query blocks (module docstring)."""
    B, S, N, H = q.shape
    K = k.shape[2]
    G = N // K
    M = -(-S // block_size)
    kbar = block_means(k, block_size).astype(q.dtype)  # [B,M,K,H]
    # Query blocks per chunk so that one chunk's scores [B,N,C*b,M] fit in chunk_bytes.
    C = int(max(1, min(M, chunk_bytes // (4 * B * N * block_size * M))))
    n_chunks = -(-M // C)
    rows_pad = n_chunks * C * block_size - S
    qp = jnp.pad(q, ((0, 0), (0, rows_pad), (0, 0), (0, 0)))
    qc = qp.reshape(B, n_chunks, C, block_size, K, G, H).swapaxes(0, 1)
    last_key = jnp.minimum((jnp.arange(M) + 1) * block_size, S) - 1  # [M]
    scale = 1.0 / math.sqrt(H)

    def one(args):
        c, qi = args  # qi [B,C,b,K,G,H]
        s = jnp.einsum("bcrkgh,bnkh->bkgcrn", qi, kbar,
                       preferred_element_type=jnp.float32) * scale  # [B,K,G,C,b,M]
        row = (c * C + jnp.arange(C))[:, None] * block_size + jnp.arange(block_size)[None, :]
        votes = (row[:, :, None] >= last_key[None, None, :]) & (row < S)[:, :, None]  # [C,b,M]
        top = jnp.max(jnp.where(votes, s, -jnp.inf), axis=(-2, -1), keepdims=True)
        top = jnp.where(jnp.isfinite(top), top, 0.0)  # chunk-padding blocks have no voters
        e = jnp.where(votes, jnp.exp(s - top), 0.0)
        mass = e.sum(axis=-2)  # [B,K,G,C,M]
        total = mass.sum(axis=-1, keepdims=True)
        return mass / jnp.where(total > 0, total, 1.0)

    mass = jax.lax.map(one, (jnp.arange(n_chunks), qc))  # [n,B,K,G,C,M]
    mass = jnp.moveaxis(mass, 0, 3).reshape(B, N, n_chunks * C, M)
    return mass[:, :, :M]



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


# The mass kernel's knobs, from a grid timed on an H100 (S=128K, 16/8 heads, probe_selection.py,
# results/kernel_bench/h100/session3_selection): chunk 64 / 4 warps / 1 stage 1.20 ms against
# 1.36 ms for the earlier 128 / 8 / 2 (half the wasted columns in the diagonal's chunk, no
# register pressure from a second stage); 3 stages were the slowest everywhere.
MASS_TILES = {"chunk": 64, "num_warps": 4, "num_stages": 1}


def _mass_chunks(q, k, *, block_size: int, interpret: bool, chunk: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None):
    """The mass kernel's raw output: e float32 [B,N,M,Cp,chunk] (zero past M), c [B,N,M,Cp].
    chunk / num_warps / num_stages default to MASS_TILES (probe_selection.py times others)."""
    B, S, N, H = q.shape
    K = k.shape[2]
    G = N // K
    M = -(-S // block_size)
    chunk = chunk or MASS_TILES["chunk"]
    chunk = max(16, min(chunk, pl.next_power_of_2(M)))  # key blocks per step (Triton dot >= 16)
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
        compiler_params=plgpu.CompilerParams(
            num_warps=num_warps or MASS_TILES["num_warps"],
            num_stages=num_stages or MASS_TILES["num_stages"]),
        interpret=interpret,
        name="flashprefill_block_mass",
    )(q, kbar)
    return e.reshape(B, N, M, Cp, chunk), c


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "num_warps"))
def block_mass_triton(q, k, *, block_size: int = 128, interpret: bool = False,
                      num_warps: int | None = None):
    """block_mass through the Pallas/Triton kernel above (block_size and H powers of two)."""
    e, c = _mass_chunks(q, k, block_size=block_size, interpret=interpret, num_warps=num_warps)
    B, N, M = c.shape[:3]
    # One constant per query block: rescale each chunk from its own max to the row's max.
    e = e * jnp.exp2(c - jnp.max(c, axis=-1, keepdims=True))[..., None]
    mass = e.reshape(B, N, M, -1)[..., :M]
    return mass / jnp.sum(mass, axis=-1, keepdims=True)


def _structural(m, n, *, n_blocks: int, sink: int, window: int, last_full: int):
    """Whether key block n is a structural block of query block m (elementwise, before the
    causal cut): a sink column, the local window (diagonal included) or a last query row.
    Shared by structural_mask and the fused selection kernel."""
    return (n < sink) | (n > m - window) | (m >= n_blocks - last_full) | (n == m)


def structural_mask(M: int, *, sink: int, window: int, last_full: int):
    """bool [M, M]: sink columns, local window (diagonal included), last query rows; causal."""
    m = jnp.arange(M)[:, None]
    n = jnp.arange(M)[None, :]
    keep = _structural(m, n, n_blocks=M, sink=sink, window=window, last_full=last_full)
    return keep & (n <= m)


def _share(keep_or_mass, K: int, how: str):
    """Combine over each kv group of query heads and broadcast back: [B,N,M,M] -> same."""
    B, N, M, _ = keep_or_mass.shape
    x = keep_or_mass.reshape(B, K, N // K, M, M)
    x = x.any(axis=2, keepdims=True) if how == "union" else x.mean(axis=2, keepdims=True)
    return jnp.broadcast_to(x, (B, K, N // K, M, M)).reshape(B, N, M, M)


def _select_kernel(alpha_ref, e_ref, c_ref, mask_ref, idx_ref, count_ref, *, n_blocks: int,
                   sink: int, window: int, last_full: int):
    # alpha_ref [1]          the threshold (an input, not a constant: no recompile per alpha)
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
    # The same float32 operations as block_mass_triton's epilogue and the threshold in
    # _select_dense, so that the keep decisions match it (see the module docstring). Reductions
    # over [Cp, chunk] go one axis at a time: a two-axis jnp.sum fails to lower under an
    # abstract mesh (the CPU test's CUDA lowering), and Triton splits it that way anyway.
    scaled = e * jnp.exp2(c - jnp.max(c))[:, None]
    mass = scaled / jnp.sum(jnp.sum(scaled, axis=1))
    keep = mass >= alpha_ref[0] * jnp.max(jnp.max(mass, axis=1))
    keep = keep | _structural(m, n, n_blocks=n_blocks, sink=sink, window=window,
                              last_full=last_full)
    keep = keep & (n <= m)  # causal; it also drops the padding columns n >= M
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


def _select_fused(q, k, alpha, *, block_size: int, sink: int, window: int, last_full: int,
                  interpret: bool, num_warps: int = 4) -> BlockMask:
    """select_blocks for impl="triton", share="none": mass kernel + one epilogue kernel."""
    e, c = _mass_chunks(q, k, block_size=block_size, interpret=interpret)
    B, N, M, Cp, chunk = e.shape
    kernel = functools.partial(_select_kernel, n_blocks=M, sink=sink, window=window,
                               last_full=last_full)
    row = lambda m, h, b: (b, h, m, 0)
    mask, indices, counts = pl.pallas_call(
        kernel,
        grid=(M, N, B),
        in_specs=[
            pl.BlockSpec((1,), lambda m, h, b: (0,)),
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
        name="flashprefill_select",
    )(jnp.asarray(alpha, jnp.float32).reshape(1), e, c)
    # The kernel enforces from_dense's invariants (diagonal kept, causal), so no second pass.
    return BlockMask(mask.astype(bool), indices, counts, block_size=block_size,
                     seq_len=q.shape[1])


def _check(q, k, share):
    if q.ndim != 4 or k.ndim != 4 or q.shape[1] != k.shape[1] or q.shape[2] % k.shape[2]:
        raise ValueError(f"need q [B,S,N,H], k [B,S,K,H] with N % K == 0; got {q.shape}, {k.shape}")
    if share not in SHARE_MODES:
        raise ValueError(f"share={share!r}; expected one of {SHARE_MODES}")


_STATIC = ("block_size", "sink", "window", "last_full", "share", "impl", "interpret")


@functools.partial(jax.jit, static_argnames=_STATIC)
def select_blocks(q, k, *, alpha: float, block_size: int = 128, sink: int = 2, window: int = 4,
                  last_full: int = 2, share: str = "none", impl: str = "auto",
                  interpret: bool = False) -> BlockMask:
    """alpha-threshold selection (module docstring). q [B,S,N,H], k [B,S,K,H] -> BlockMask."""
    _check(q, k, share)
    if resolve_mass(impl, interpret) == "triton" and share == "none":
        return _select_fused(q, k, alpha, block_size=block_size, sink=sink, window=window,
                             last_full=last_full, interpret=interpret)
    return _select_dense(q, k, alpha=alpha, block_size=block_size, sink=sink, window=window,
                         last_full=last_full, share=share, impl=impl, interpret=interpret)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _select_dense(q, k, *, alpha: float, block_size: int = 128, sink: int = 2, window: int = 4,
                  last_full: int = 2, share: str = "none", impl: str = "auto",
                  interpret: bool = False) -> BlockMask:
    """select_blocks through the dense mass and BlockMask.from_dense: every impl and share mode.
    The fused path is checked (and timed, experiments/probe_selection.py) against it."""
    _check(q, k, share)
    S, K = q.shape[1], k.shape[2]
    mass = block_mass(q, k, block_size=block_size, impl=impl, interpret=interpret)
    M = mass.shape[-1]
    if share == "mean":
        mass = _share(mass, K, "mean")
    keep = mass >= alpha * jnp.max(mass, axis=-1, keepdims=True)
    if share == "union":
        keep = _share(keep, K, "union")
    keep = keep | structural_mask(M, sink=sink, window=window, last_full=last_full)
    return BlockMask.from_dense(keep, block_size=block_size, seq_len=S, causal=True)


@functools.partial(jax.jit, static_argnames=_STATIC)
def select_blocks_fixed_density(q, k, *, density: float, block_size: int = 128, sink: int = 2,
                                window: int = 4, last_full: int = 2, share: str = "none",
                                impl: str = "auto", interpret: bool = False) -> BlockMask:
    """Keep ceil(density * (m + 1)) causal blocks in query block m: structural blocks first
    (always, even past the budget), then the highest-mass ones. density=1 keeps everything."""
    _check(q, k, share)
    S, K = q.shape[1], k.shape[2]
    mass = block_mass(q, k, block_size=block_size, impl=impl, interpret=interpret)
    if share != "none":  # one list per kv group: rank the group's mean mass
        mass = _share(mass, K, "mean")
    M = mass.shape[-1]
    m = jnp.arange(M)
    structural = structural_mask(M, sink=sink, window=window, last_full=last_full)
    causal = m[None, :] <= m[:, None]
    score = jnp.where(structural, jnp.inf, jnp.where(causal, mass, -jnp.inf))
    budget = jnp.clip(jnp.ceil(density * (m + 1)).astype(jnp.int32), 1, m + 1)  # [M]
    ranked = -jnp.sort(-score, axis=-1)  # descending
    nth = jnp.broadcast_to(budget[:, None] - 1, ranked.shape[:-1] + (1,))
    thr = jnp.take_along_axis(ranked, nth, axis=-1)  # the budget-th largest score of the row
    keep = ((score >= thr) & causal) | structural
    return BlockMask.from_dense(keep, block_size=block_size, seq_len=S, causal=True)
