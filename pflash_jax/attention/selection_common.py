"""The pieces of FlashPrefill block selection that every backend needs (selection.py's
steps 1, 4 and 5; docs/design.md 1.1): the block means of the keys, the structural-block
predicate and the fixed-density budget.

They live here, not in selection.py, because selection.py dispatches to the backends
(selection_xla.py, selection_triton.py) and re-exports the first two: a backend importing them
from selection.py would close an import cycle.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


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
    return jnp.asarray(_row_budget(_xp(density), density, n_blocks))


def density_budget(density, n_blocks: int, *, sink: int, window: int, last_full: int,
                   structural_in_budget: bool = True):
    """int32 [M]: fixed-density mode's budget of each query block m (blocks kept = max(budget,
    structural blocks of the row)). Shared by selection.select_blocks_fixed_density_unfused
    and the fused path, which must agree on it to the block; density may be traced.

    structural_in_budget=True (default): `density` is the kept fraction of ALL causal blocks,
    the structural ones included (what BlockMask.density() measures): rows get row_budget(d')
    with d' <= density the largest rate, to 64^-4 of density (four rounds of 64 candidates,
    unrolled: no device loop), whose total sum_m max(row_budget(d')[m], structural[m]) stays
    within density * M (M + 1) / 2. Where the structural blocks alone exceed that (tiny
    density, short prompts), d' = 0: they are kept. False: row_budget(density) as given, the
    structural blocks counted on top where they exceed a row's budget (the rule before
    2026-12-01; at 128K and density 0.1 it keeps 0.105).
    """
    if not structural_in_budget:
        return row_budget(density, n_blocks)
    xp = _xp(density)
    st = xp.asarray(_structural_counts_np(n_blocks, sink, window, last_full))  # [M], static
    d = xp.asarray(density, xp.float32)
    target = d * xp.float32(n_blocks * (n_blocks + 1) / 2)

    def totals(rates):  # [C] rates -> [C] kept blocks in all
        b = _row_budget(xp, rates[:, None], n_blocks)  # [C, M]
        return xp.sum(xp.maximum(b, st), axis=1).astype(xp.float32)

    steps = xp.arange(65, dtype=xp.float32) / xp.float32(64)  # 0, 1/64, ..., 1
    lo, width = xp.float32(0.0), d
    for _ in range(4):
        cand = xp.minimum(lo + width * steps, d)  # [65]; cand[0] = lo fits (or is 0)
        fits = totals(cand) <= target
        j = xp.maximum(xp.sum(xp.cumprod(fits.astype(xp.int32))) - 1, 0)  # last of the prefix
        lo, width = cand[j], width / xp.float32(64)
    return row_budget(lo, n_blocks)


def _xp(density):
    """numpy for a Python density (decided on the host: a constant even inside a jit), jnp
    for a traced one; both run the same float32 arithmetic."""
    return np if isinstance(density, (int, float, np.floating)) else jnp


def _row_budget(xp, density, n_blocks: int):
    """row_budget in numpy or jnp (the same float32 product); density may be a column of
    rates [C, 1], giving [C, M]."""
    m1 = xp.arange(1, n_blocks + 1, dtype=xp.int32)
    d = xp.asarray(density, xp.float32)
    return xp.clip(xp.ceil(d * m1.astype(xp.float32)).astype(xp.int32), 1, m1)


@functools.lru_cache(maxsize=64)
def _structural_counts_np(n_blocks: int, sink: int, window: int, last_full: int) -> np.ndarray:
    """int32 [M]: how many causal blocks of query block m are structural (always kept); numpy,
    so a constant even inside a trace."""
    m = np.arange(n_blocks)[:, None]
    n = np.arange(n_blocks)[None, :]
    st = is_structural(m, n, n_blocks=n_blocks, sink=sink, window=window, last_full=last_full)
    return np.sum(st & (n <= m), axis=1).astype(np.int32)
