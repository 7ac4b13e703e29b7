"""The pieces of FlashPrefill block selection that every backend needs (selection.py's
steps 1, 4 and 5; docs/design.md 1.1): the block means of the keys, the structural-block
predicate and the fixed-density budget.

They live here, not in selection.py, because selection.py dispatches to the backends
(selection_xla.py, selection_triton.py) and re-exports the first two: a backend importing them
from selection.py would close an import cycle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_means(k, block_size: int):
    """k [B,S,K,H] -> kbar float32 [B,M,K,H]: mean of each block's valid keys."""
    B, S, K, H = k.shape
    M = -(-S // block_size)
    kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, M * block_size - S), (0, 0), (0, 0)))
    sums = kp.reshape(B, M, block_size, K, H).sum(axis=2)
    valid = jnp.minimum(block_size, S - jnp.arange(M) * block_size).astype(jnp.float32)
    return sums / valid[None, :, None, None]


def is_structural(m, n, *, n_blocks: int, sink: int, window: int, last_full: int):
    """Whether key block n is a structural block of query block m (elementwise, before the
    causal cut): a sink column, the local window (diagonal included) or a last query row.
    Shared by selection.structural_mask and the fused selection kernel (selection_triton.py)."""
    return (n < sink) | (n > m - window) | (m >= n_blocks - last_full) | (n == m)


def row_budget(density, n_blocks: int):
    """int32 [M]: clip(ceil(density * (m + 1)), 1, m + 1), the product in float32."""
    m1 = jnp.arange(1, n_blocks + 1, dtype=jnp.int32)
    d = jnp.asarray(density, jnp.float32)
    return jnp.clip(jnp.ceil(d * m1.astype(jnp.float32)).astype(jnp.int32), 1, m1)


def structural_counts(n_blocks: int, *, sink: int, window: int, last_full: int):
    """int32 [M]: how many causal blocks of query block m are structural (always kept)."""
    m = jnp.arange(n_blocks)[:, None]
    n = jnp.arange(n_blocks)[None, :]
    st = is_structural(m, n, n_blocks=n_blocks, sink=sink, window=window, last_full=last_full)
    return jnp.sum(st & (n <= m), axis=1).astype(jnp.int32)


def density_budget(density, n_blocks: int, *, sink: int, window: int, last_full: int,
                   structural_in_budget: bool = True):
    """int32 [M]: fixed-density mode's budget of each query block m (blocks kept = max(budget,
    structural blocks of the row)). Shared by selection.select_blocks_fixed_density_unfused
    and the fused path, which must agree on it to the block; density may be traced.

    structural_in_budget=True (default): `density` is the kept fraction of ALL causal blocks,
    the structural ones included (what BlockMask.density() measures): rows get
    row_budget(d') with d' <= density the largest rate (24 halvings) whose total
    sum_m max(row_budget(d')[m], structural[m]) stays within density * M (M + 1) / 2. Where the
    structural blocks alone exceed that (tiny density, short prompts), d' = 0: they are kept.
    False: row_budget(density) as given, the structural blocks counted on top where they exceed
    a row's budget (the rule before 2026-12-01; at 128K and density 0.1 it keeps 0.105).
    """
    if not structural_in_budget:
        return row_budget(density, n_blocks)
    st = structural_counts(n_blocks, sink=sink, window=window, last_full=last_full)
    d = jnp.asarray(density, jnp.float32)
    target = d * jnp.float32(n_blocks * (n_blocks + 1) / 2)

    def total(rate):
        return jnp.sum(jnp.maximum(row_budget(rate, n_blocks), st)).astype(jnp.float32)

    def halve(_, lo_hi):
        lo, hi = lo_hi
        mid = 0.5 * (lo + hi)
        fits = total(mid) <= target
        return jnp.where(fits, mid, lo), jnp.where(fits, hi, mid)

    lo, hi = jnp.float32(0.0), d
    lo, hi = jax.lax.fori_loop(0, 24, halve, (lo, hi))
    rate = jnp.where(total(hi) <= target, hi, lo)  # density itself when it already fits
    return row_budget(rate, n_blocks)
