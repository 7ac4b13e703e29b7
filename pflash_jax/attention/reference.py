"""Reference attention in plain jnp: the specification every kernel is tested against.

- `dense_attention`: causal GQA attention, chunked over queries so 32K+ tokens never build an
  S x S tensor (peak extra memory is chunk x S scores per head).
- Softmax in float32 (see pflash_jax.numerics); output cast back to q's dtype.

Causality is bottom-right aligned: query t of T sits at key position S - T + t, so T == S is
ordinary causal prefill and T == 1 is a decode step that sees every key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from pflash_jax.numerics import MASK_VALUE, SOFTMAX_DTYPE


def _attend_chunk(q, k, v, q_pos, causal: bool, key_mask=None):
    # q [B,C,K,G,H]; k, v [B,S,K,H]; q_pos [C] absolute key-axis positions of the queries.
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bckgh,bskh->bkgcs", q.astype(SOFTMAX_DTYPE), k.astype(SOFTMAX_DTYPE)) * scale
    allowed = jnp.ones((q.shape[1], k.shape[1]), bool)
    if causal:
        allowed = q_pos[:, None] >= jnp.arange(k.shape[1])[None, :]
    if key_mask is not None:  # [B,K?,G?,C,S]-broadcastable extra mask (block-sparse reference)
        allowed = allowed & key_mask
    s = jnp.where(allowed, s, MASK_VALUE)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgcs,bskh->bckgh", p, v.astype(SOFTMAX_DTYPE))
    return o


def dense_attention(q, k, v, *, causal: bool = True, chunk: int = 1024):
    """q [B,T,N,H], k/v [B,S,K,H] with N % K == 0 -> [B,T,N,H] in q.dtype."""
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    if N % K:
        raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
    if T > S:
        raise ValueError(f"more queries (T={T}) than keys (S={S})")
    G = N // K
    qg = q.reshape(B, T, K, G, H)
    offset = S - T
    C = min(chunk, T)
    n_chunks = -(-T // C)
    pad = n_chunks * C - T
    qg = jnp.pad(qg, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    qc = qg.reshape(B, n_chunks, C, K, G, H).swapaxes(0, 1)  # [n,B,C,K,G,H]

    def one(args):
        i, qi = args
        pos = offset + i * C + jnp.arange(C)
        return _attend_chunk(qi, k, v, pos, causal)

    out = jax.lax.map(one, (jnp.arange(n_chunks), qc))  # [n,B,C,K,G,H]
    out = out.swapaxes(0, 1).reshape(B, n_chunks * C, N, H)[:, :T]
    return out.astype(q.dtype)


def block_sparse_attention(q, k, v, block_mask, *, block_size: int = 128, causal: bool = True,
                           chunk: int = 1024):
    """Dense attention with the block mask expanded to tokens: the spec for sparse kernels.

    q [B,S,N,H], k/v [B,S,K,H]; block_mask bool [B, N, M, M] with M = ceil(S / block_size)
    (query block m reads key block n where it is True). Softmax in float32 over the allowed keys
    only, so an all-True mask is exactly `dense_attention` (same code path, extra mask all True).
    Rows whose allowed set is empty (impossible once the diagonal is kept) would average V.
    """
    B, S, N, H = q.shape
    K = k.shape[2]
    if k.shape[1] != S:
        raise ValueError(f"block-sparse attention is square prefill: T={S} != S={k.shape[1]}")
    if N % K:
        raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
    M = -(-S // block_size)
    if block_mask.shape != (B, N, M, M):
        raise ValueError(f"block_mask shape {block_mask.shape} != {(B, N, M, M)}")
    G = N // K
    # Chunks are whole query blocks, so each chunk's mask rows are a contiguous slice.
    C = max(1, min(chunk, S) // block_size) * block_size
    n_chunks = -(-S // C)
    pad = n_chunks * C - S
    qg = jnp.pad(q.reshape(B, S, K, G, H), ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    qc = qg.reshape(B, n_chunks, C, K, G, H).swapaxes(0, 1)  # [n,B,C,K,G,H]
    bm = block_mask.reshape(B, K, G, M, M)
    Mp = n_chunks * C // block_size
    bm = jnp.pad(bm, ((0, 0), (0, 0), (0, 0), (0, Mp - M), (0, 0)))
    key_block = jnp.arange(S) // block_size  # [S]

    def one(args):
        i, qi = args
        pos = i * C + jnp.arange(C)
        rows = jax.lax.dynamic_slice_in_dim(bm, i * (C // block_size), C // block_size, axis=3)
        rows = jnp.repeat(rows, block_size, axis=3)  # [B,K,G,C,M]
        key_mask = jnp.take(rows, key_block, axis=4)  # [B,K,G,C,S]
        return _attend_chunk(qi, k, v, pos, causal, key_mask)

    out = jax.lax.map(one, (jnp.arange(n_chunks), qc))  # [n,B,C,K,G,H]
    out = out.swapaxes(0, 1).reshape(B, n_chunks * C, N, H)[:, :S]
    return out.astype(q.dtype)
