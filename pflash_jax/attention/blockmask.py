"""BlockMask: which key blocks each query block attends to, in the two layouts kernels need.

A block-sparse attention pattern over M = ceil(S / block_size) blocks per head is stored twice:

- `mask`    bool  [B, N, M, M]  dense: mask[b, h, m, n] = query block m reads key block n.
- `indices` int32 [B, N, M, M]  compressed: row (b, h, m) lists its kept key blocks first, in
                                ascending order; entries past `counts` repeat the last kept index
                                (so a kernel that over-reads stays in bounds and on a block it
                                already touched).
- `counts`  int32 [B, N, M]     number of kept key blocks per row.

Invariants (enforced by `from_dense`, the only constructor callers should use):
- the diagonal block (n == m) is always kept: every causal row sees at least its own token, and
  kernels rely on it being the LAST entry of a causal row (the only block needing a per-token mask);
- with causal=True nothing above the diagonal is kept.

`density()` is the kept fraction of the causal lower triangle (M (M + 1) / 2 blocks per head),
the quantity the benchmarks and the FlashPrefill paper report.

The object is a frozen dataclass registered as a pytree (arrays are leaves, block_size and
seq_len are static), so it passes through jit and lax control flow.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockMask:
    mask: jax.Array  # bool [B, N, M, M]
    indices: jax.Array  # int32 [B, N, M, M]
    counts: jax.Array  # int32 [B, N, M]
    block_size: int = dataclasses.field(metadata=dict(static=True))
    seq_len: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_blocks(self) -> int:
        return self.mask.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape

    def density(self) -> jax.Array:
        """Kept blocks / causal blocks (float32 scalar, averaged over batch and heads)."""
        M = self.num_blocks
        B, N = self.mask.shape[:2]
        kept = jnp.sum(self.counts, dtype=jnp.float32)
        return kept / (B * N * M * (M + 1) / 2)

    @classmethod
    def from_dense(cls, mask, *, block_size: int, seq_len: int, causal: bool = True) -> BlockMask:
        """Build from a bool [B, N, M, M] mask: adds the diagonal, drops future blocks if causal."""
        mask = jnp.asarray(mask, bool)
        M = mask.shape[-1]
        if mask.ndim != 4 or mask.shape[-2] != M:
            raise ValueError(f"block mask must be [B, N, M, M], got {mask.shape}")
        if M != -(-seq_len // block_size):
            raise ValueError(f"block mask has M={M} blocks but seq_len={seq_len} with "
                             f"block_size={block_size} needs {-(-seq_len // block_size)}")
        eye = jnp.eye(M, dtype=bool)
        mask = mask | eye
        if causal:
            mask = mask & jnp.tril(jnp.ones((M, M), bool))
        return cls(mask, *compress(mask), block_size=block_size, seq_len=seq_len)


def compress(mask):
    """bool [..., M] -> (indices int32 [..., M] kept-first ascending, padded; counts [...])."""
    M = mask.shape[-1]
    lead = mask.shape[:-1]
    flat = mask.reshape(-1, M)
    counts = jnp.sum(flat, axis=-1, dtype=jnp.int32)
    # Scatter each kept n to its rank among the kept (a cumsum): linear work, unlike a sort.
    n = jnp.arange(M, dtype=jnp.int32)
    rank = jnp.where(flat, jnp.cumsum(flat, axis=-1, dtype=jnp.int32) - 1, M)  # M: dropped
    rows = jnp.arange(flat.shape[0], dtype=jnp.int32)[:, None]
    packed = jnp.zeros_like(rank).at[rows, rank].set(jnp.broadcast_to(n, rank.shape),
                                                     mode="drop")
    last = jnp.take_along_axis(packed, jnp.maximum(counts - 1, 0)[:, None], axis=-1)
    indices = jnp.where(n < counts[:, None], packed, last)  # rows with no kept block -> 0
    return indices.reshape(lead + (M,)), counts.reshape(lead)
