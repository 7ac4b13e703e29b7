"""FlashPrefill block selection (docs/design.md 1.1): which key blocks each query block attends to.

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
   Fixed-density mode (`select_blocks_fixed_density`): row m's budget is
   clip(ceil(d * (m + 1)), 1, m + 1) blocks; structural ones score +inf, the others their
   mass, and every causal block scoring >= the budget-th largest score is kept (so structural
   ones first, even past the budget, then highest mass; ties at the last place all kept). The
   rate d <= density is set so that the structural excess (short rows, the last_full rows)
   counts inside `density`: the kept fraction of all causal blocks is `density`
   (selection_common.density_budget; structural_in_budget=False keeps d = density, the rule
   before 2026-12-01, 0.105 kept at density 0.1 and 128K). For controlled timing on random
   weights.
5. Structural blocks are always kept: sinks (n < sink), the local window (m - window < n <= m, the
   diagonal included), and every block of the last `last_full` query blocks. Then AND causal.

One file per backend of the mass (step 3), chosen by `impl=` through api.resolve_mass ("auto":
triton on a GPU or in interpret mode, xla otherwise):
- "xla" (selection_xla.py): plain jnp, scores built for a chunk of query blocks at a time; it
  writes and re-reads every score: about 12 ms at 128K on an H200.
- "triton" (selection_triton.py): a Pallas (Triton backend) kernel whose scores stay in
  registers; the same mass in 1.6 ms at 128K on an H200 (whole alpha-mode selection 1.6 ms vs
  11.8 ms with "xla").
Steps 1 and 5's predicate, which both backends use, are in selection_common.py.

With "triton" and share="none" neither mode builds the dense mass: a second Triton kernel
(selection_triton.select_blocks_fused / select_blocks_fixed_density_fused) thresholds, adds the
structural blocks and compresses in registers, writing the BlockMask directly (alpha mode: 1.49
-> 1.21 ms for the whole selection at 128K, 16 heads on an H100). In fixed-density mode it finds
each row's threshold by a 31-step bisection over the float32 bit patterns instead of the unfused
path's sort of every row (0.76 ms a drafter layer at 128K, 16 heads on an H200; the fused path
is not timed yet: experiments/probe_selection.py). Every other combination goes through the
dense mass and BlockMask.from_dense (`select_blocks_unfused`,
`select_blocks_fixed_density_unfused`, also the fused paths' references: identical masks in
interpret mode, within a few ulps of the threshold compiled).

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

import jax
import jax.numpy as jnp

from pflash_jax.attention.api import resolve_mass
from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.attention.selection_common import block_means, density_budget, is_structural
from pflash_jax.attention.selection_triton import (
    MASS_TILES,
    MassTiles,
    block_mass_triton,
    select_blocks_fixed_density_fused,
    select_blocks_fused,
)
from pflash_jax.attention.selection_xla import block_mass_xla

# The backends' entries and tiles are re-exported: `from ...selection import block_mass_xla`
# keeps working for code written before the split.
__all__ = ["MASS_TILES", "SHARE_MODES", "MassTiles", "block_mass", "block_mass_triton",
           "block_mass_xla", "block_means", "select_blocks", "select_blocks_fixed_density",
           "select_blocks_fixed_density_unfused", "select_blocks_unfused", "structural_mask"]

SHARE_MODES = ("none", "union", "mean")


def block_mass(q, k, *, block_size: int = 128, impl: str = "auto", interpret: bool = False):
    """Normalised block mass float32 [B, N, M, M] (step 3 above); zero above the diagonal."""
    impl = resolve_mass(impl, interpret)
    if impl == "xla":
        return block_mass_xla(q, k, block_size=block_size)
    if impl == "triton":
        return block_mass_triton(q, k, block_size=block_size, interpret=interpret)
    raise ValueError(f"unknown block_mass impl {impl!r}; expected auto, xla or triton")


def structural_mask(M: int, *, sink: int, window: int, last_full: int):
    """bool [M, M]: sink columns, local window (diagonal included), last query rows; causal."""
    m = jnp.arange(M)[:, None]
    n = jnp.arange(M)[None, :]
    keep = is_structural(m, n, n_blocks=M, sink=sink, window=window, last_full=last_full)
    return keep & (n <= m)


def _share(keep_or_mass, K: int, how: str):
    """Combine over each kv group of query heads and broadcast back: [B,N,M,M] -> same."""
    B, N, M, _ = keep_or_mass.shape
    x = keep_or_mass.reshape(B, K, N // K, M, M)
    x = x.any(axis=2, keepdims=True) if how == "union" else x.mean(axis=2, keepdims=True)
    return jnp.broadcast_to(x, (B, K, N // K, M, M)).reshape(B, N, M, M)


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
        return select_blocks_fused(q, k, alpha, block_size=block_size, sink=sink,
                                   window=window, last_full=last_full, interpret=interpret)
    return select_blocks_unfused(q, k, alpha=alpha, block_size=block_size, sink=sink,
                                 window=window, last_full=last_full, share=share, impl=impl,
                                 interpret=interpret)


@functools.partial(jax.jit, static_argnames=_STATIC)
def select_blocks_unfused(q, k, *, alpha: float, block_size: int = 128, sink: int = 2,
                          window: int = 4, last_full: int = 2, share: str = "none",
                          impl: str = "auto", interpret: bool = False) -> BlockMask:
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


@functools.partial(jax.jit, static_argnames=_STATIC + ("structural_in_budget",))
def select_blocks_fixed_density(q, k, *, density: float, block_size: int = 128, sink: int = 2,
                                window: int = 4, last_full: int = 2, share: str = "none",
                                impl: str = "auto", interpret: bool = False,
                                structural_in_budget: bool = True) -> BlockMask:
    """Keep a `density` fraction of the causal blocks: each query block m keeps its budget
    (selection_common.density_budget, about density * (m + 1)) of blocks, structural blocks
    first (always, even past the budget), then the highest-mass ones (ties at the last place
    all kept). structural_in_budget (default): the structural blocks count inside `density`
    overall, so BlockMask.density() comes out at `density` (not above it); False: the rule
    before 2026-12-01, ceil(density * (m + 1)) a row with structural excess on top.
    density=1 keeps everything."""
    _check(q, k, share)
    if resolve_mass(impl, interpret) == "triton" and share == "none":
        return select_blocks_fixed_density_fused(q, k, density, block_size=block_size,
                                                 sink=sink, window=window,
                                                 last_full=last_full, interpret=interpret,
                                                 structural_in_budget=structural_in_budget)
    return select_blocks_fixed_density_unfused(q, k, density=density, block_size=block_size,
                                               sink=sink, window=window, last_full=last_full,
                                               share=share, impl=impl, interpret=interpret,
                                               structural_in_budget=structural_in_budget)


@functools.partial(jax.jit, static_argnames=_STATIC + ("structural_in_budget",))
def select_blocks_fixed_density_unfused(q, k, *, density: float, block_size: int = 128,
                                        sink: int = 2, window: int = 4, last_full: int = 2,
                                        share: str = "none", impl: str = "auto",
                                        interpret: bool = False,
                                        structural_in_budget: bool = True) -> BlockMask:
    """select_blocks_fixed_density through the dense mass, a sort per row and
    BlockMask.from_dense: every impl and share mode, and the fused path's reference."""
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
    budget = density_budget(density, M, sink=sink, window=window, last_full=last_full,
                            structural_in_budget=structural_in_budget)  # [M]
    ranked = -jnp.sort(-score, axis=-1)  # descending
    nth = jnp.broadcast_to(budget[:, None] - 1, ranked.shape[:-1] + (1,))
    thr = jnp.take_along_axis(ranked, nth, axis=-1)  # the budget-th largest score of the row
    keep = ((score >= thr) & causal) | structural
    return BlockMask.from_dense(keep, block_size=block_size, seq_len=S, causal=True)
