"""The pieces of FlashPrefill block selection that every backend needs (selection.py's
steps 1, 4 and 5; docs/design.md 1.1): the block means of the keys, the structural-block
predicate and the fixed-density budget.

They live here, not in selection.py, because selection.py dispatches to the backends
(selection_xla.py, selection_triton.py) and re-exports the first two: a backend importing them
from selection.py would close an import cycle.
"""

from __future__ import annotations

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


def density_budget(density, n_blocks: int):
    """int32 [M]: fixed-density mode's budget of each query block m, clip(ceil(density *
    (m + 1)), 1, m + 1). Shared by selection.select_blocks_fixed_density_unfused and the fused
    path, which must agree on it to the block."""
    m = jnp.arange(n_blocks)
    return jnp.clip(jnp.ceil(density * (m + 1)).astype(jnp.int32), 1, m + 1)
