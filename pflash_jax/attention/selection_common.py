"""The two pieces of FlashPrefill block selection that every backend needs (selection.py's
steps 1 and 5; docs/design.md 1.1): the block means of the keys and the structural-block
predicate.

They live here, not in selection.py, because selection.py dispatches to the backends
(selection_xla.py, selection_triton.py) and re-exports these two: a backend importing them from
selection.py would close an import cycle.
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
