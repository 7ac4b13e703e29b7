"""FlashPrefill block mass in plain jnp: selection.block_mass(impl="xla") (selection.py step 3,
docs/design.md 1.1). The portable path and the one off the GPU.

Algorithm: the scores s[i, n] = q_i . kbar[n] / sqrt(H) are built for a chunk of C query blocks
at a time (all heads), C chosen so that one chunk's float32 scores [B, N, C*b, M] take about
`chunk_bytes` (at S = 128K, 16 heads the whole [S, M] tensor would be 8.6 GB). Per chunk: the
voting mask (row i >= last key of block n, i < S), one max constant per query block subtracted
before exp (it cancels in the normalisation), the sum over voting rows, the normalisation.
jax.lax.map runs the chunks one after another.

Layout: q [B,S,N,H], k [B,S,K,H] (any dtype; the q . kbar product runs in q's dtype, kbar rounded
to it, with float32 accumulation) -> float32 [B,N,M,M].

Limits: it writes and re-reads every score: about 12 ms at 128K on an H200, against 1.6 ms for
selection_triton.py's kernel. Any S, block size and head dim.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pflash_jax.attention.selection_common import block_means


@functools.partial(jax.jit, static_argnames=("block_size", "chunk_bytes"))
def block_mass_xla(q, k, *, block_size: int = 128, chunk_bytes: int = 1 << 28):
    """Normalised block mass float32 [B, N, M, M], chunked over query blocks (docstring)."""
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
