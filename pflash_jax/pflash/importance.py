"""Token importance from the drafter's tail attention (docs/design.md 1.2).

    p[l, n, t, j] = softmax_j(q[l, t, n] . k[l, j, n // G] / sqrt(H))   float32, causal per row
    importance[j] = mean_t max_{l, n} pool(p)[l, n, t, j]

Design choices:
- Fused into the drafter's layer scan: `fold_layer` turns one layer's tail queries and keys into
  its [N, T, S] probabilities and immediately folds their max over heads into a running max
  [T, S]. Max is associative, so the fused fold equals the unfused max over (layer, head) that
  `importance_unfused` computes from every layer's keys; no per-layer K/V is ever kept.
- Two implementations of the fold, picked by ScoringConfig.fold_impl (default "xla"; "auto":
  the kernels on a GPU): "xla" (`_head_max`, the reference) builds the layer's [N, T, S]
  float32 logits and makes several passes over them; "triton" (pflash/fold_triton.py, every
  pooling but per_row) keeps the logits in registers, one key tile at a time: pass 1 writes per
  tile and (head, row) the max logit and sum of exp, combined in jnp into each row's max and
  normaliser; pass 2 recomputes the logits, normalises, takes the max over all heads and folds
  it into the running max tile. It reads k twice and writes no [N, T, S] array. Equal to the
  reference up to float32 summation order (tested to 1e-5 relative in interpret mode); not yet
  compiled or timed on a GPU.
- Per-row pooling (SpecPrefill) commutes with nothing, so it is applied to each probability row
  *before* the max, inside the fold; after-mean pooling (PFlash) runs once in `importance`.
- float32 softmax: probabilities of single tokens at S = 128K are ~1e-5, below bf16's resolution
  next to the row maximum. Logits are accumulated in float32 from the inputs' own dtype, so a
  bf16 drafter pays no float32 copy of its keys.
- Which q/k come in decides the RoPE option: post-RoPE q/k ("post") or pre-RoPE q/k after
  q_norm/k_norm ("nope"); the drafter picks, this module only sees the vectors.
- Bucket padding: give padded keys a position larger than every query position (for example
  int32 max) and they get probability exactly 0, which is also what zero-padded per-row pooling
  assumes; pass `length` (the true S) to `importance` so truncated edges stop at the real end.
- Look-ahead mode: the pipeline passes the prompt keys only, so each tail row is a distribution
  over prompt tokens (the generated tokens' own keys are left out of the normalisation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from pflash_jax.numerics import MASK_VALUE, SOFTMAX_DTYPE
from pflash_jax.pflash import fold_triton
from pflash_jax.pflash.config import ScoringConfig

EDGE_MODES = ("zero", "truncate")


def tail_probs(q_tail: jax.Array, k: jax.Array, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
    """Causal softmax of the tail queries over all keys of one layer.

    q_tail [T, N, H], k [S, K, H] (GQA: query head n reads kv head n // (N // K)),
    q_pos [T], k_pos [S] int positions; key j is visible to row t iff k_pos[j] <= q_pos[t].
    Returns float32 [N, T, S]; each row sums to 1 (rows must see at least one key).
    """
    T, N, H = q_tail.shape
    S, K, Hk = k.shape
    if Hk != H:
        raise ValueError(f"q_tail head dim {H} != k head dim {Hk}")
    if N % K:
        raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
    G = N // K
    dtype = jnp.promote_types(q_tail.dtype, k.dtype)
    q = q_tail.astype(dtype).reshape(T, K, G, H)
    logits = jnp.einsum(
        "tkgh,skh->kgts",
        q,
        k.astype(dtype),
        preferred_element_type=SOFTMAX_DTYPE,
        precision=lax.Precision.HIGHEST,
    )
    logits = logits.reshape(N, T, S) * (1.0 / math.sqrt(H))
    visible = k_pos[None, :] <= q_pos[:, None]  # [T, S]
    logits = jnp.where(visible[None], logits, MASK_VALUE)
    return jax.nn.softmax(logits, axis=-1)


def moving_average(x: jax.Array, width: int, edges: str, length=None) -> jax.Array:
    """Centred moving average of odd `width` along the last axis.

    edges="zero": out-of-range neighbours count as 0, always divided by `width` (SpecPrefill).
    edges="truncate": mean over the in-range part of the window only (PFlash).
    length (int or traced scalar, default x.shape[-1]): entries at index >= length are out of
    range (bucket padding); their outputs are 0.
    """
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, got {edges!r}")
    if width < 1 or width % 2 == 0:
        raise ValueError(f"pool width must be odd and >= 1, got {width}")
    S = x.shape[-1]
    idx = jnp.arange(S)
    valid = idx < (S if length is None else length)
    x = jnp.where(valid, x, jnp.zeros((), x.dtype))
    if width == 1:
        return x
    r = width // 2
    ones = (1,) * (x.ndim - 1)
    sums = lax.reduce_window(
        x,
        jnp.zeros((), x.dtype),
        lax.add,
        window_dimensions=ones + (width,),
        window_strides=ones + (1,),
        padding=[(0, 0)] * (x.ndim - 1) + [(r, r)],
    )
    if edges == "zero":
        out = sums / width
    else:
        n = S if length is None else length
        count = jnp.minimum(idx + r, n - 1) - jnp.maximum(idx - r, 0) + 1
        out = sums / jnp.maximum(count, 1).astype(x.dtype)
    return jnp.where(valid, out, jnp.zeros((), x.dtype))


def _window_max(x: jax.Array, left: int, right: int, length=None) -> jax.Array:
    """out[i] = max(x[i - left .. i + right]) along the last axis, the window cut at the ends;
    entries at index >= length (bucket padding) neither win a window nor get a value (0)."""
    S = x.shape[-1]
    valid = jnp.arange(S) < (S if length is None else length)
    x = jnp.where(valid, x, jnp.zeros((), x.dtype))  # importance >= 0: 0 never wins a max
    if left == right == 0:
        return x
    ones = (1,) * (x.ndim - 1)
    out = lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                            window_dimensions=ones + (left + right + 1,),
                            window_strides=ones + (1,),
                            padding=[(0, 0)] * (x.ndim - 1) + [(left, right)])
    return jnp.where(valid, out, jnp.zeros((), x.dtype))


def trailing_max(x: jax.Array, width: int, length=None) -> jax.Array:
    """out[i] = max(x[i - width .. i]) along the last axis (the window cut at 0); entries at
    index >= length (bucket padding) are 0 and never win."""
    if width < 0:
        raise ValueError(f"trail width must be >= 0, got {width}")
    return _window_max(x, width, 0, length)


def moving_max(x: jax.Array, width: int, length=None) -> jax.Array:
    """Centred max of odd `width` along the last axis; entries at index >= length are out of
    range (they neither win a window nor get a value: 0)."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"pool width must be odd and >= 1, got {width}")
    return _window_max(x, width // 2, width // 2, length)


def init_running_max(n_tail: int, S: int) -> jax.Array:
    """The fold's starting value: probabilities are >= 0, so 0 is the identity of max."""
    return jnp.zeros((n_tail, S), SOFTMAX_DTYPE)


def _head_max(q_tail, k, q_pos, k_pos, cfg: ScoringConfig) -> jax.Array:
    """[T, S]: max over heads of (optionally per-row pooled) tail probabilities."""
    p = tail_probs(q_tail, k, q_pos, k_pos)  # [N, T, S]
    if cfg.pooling == "per_row":
        p = moving_average(p, cfg.pool_width, "zero")
    return p.max(axis=0)


def resolve_fold(cfg: ScoringConfig, q_tail, k) -> str:
    """The fold implementation cfg.fold_impl means for these shapes: "auto" -> "triton" on a
    GPU when pooling is not per_row and the kernels take the shapes (fold_triton.supports),
    else "xla"; an explicit "triton" the kernels cannot take is a ValueError saying why."""
    if cfg.fold_impl == "xla" or cfg.pooling == "per_row":  # config rejects per_row + triton
        return "xla"
    try:
        fold_triton.supports(q_tail, k)
    except NotImplementedError as e:
        if cfg.fold_impl == "triton":
            raise ValueError(f"ScoringConfig.fold_impl='triton': {e}") from None
        return "xla"
    if cfg.fold_impl == "auto" and jax.default_backend() != "gpu":
        return "xla"
    return "triton"


def fold_layer(
    running_max: jax.Array,
    q_tail: jax.Array,
    k: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    cfg: ScoringConfig,
    kv_chunk: int | None = None,
) -> jax.Array:
    """One layer's contribution to the running max [T, S] (called inside the drafter's scan).

    q_tail [T, N, H], k [S, K, H]. cfg.fold_impl picks the implementation (resolve_fold):
    "triton" runs the fused kernels of fold_triton.py (interpreted without a GPU), which never
    build an [N, T, S] block, so `kv_chunk` does not apply to it; "xla" is the reference.
    On the XLA path peak extra memory is one [N, T, S] float32 block; with `kv_chunk` (a divisor
    of K) the heads are processed kv_chunk kv-heads at a time in a loop, so the block shrinks
    to [kv_chunk * G, T, S] at the price of a short sequential loop.
    Measured, XLA path (H200, jax 0.11.2, Qwen3-0.6B shapes N=16 K=8 H=128, T=8, bf16 q/k,
    28 layers): S=128K costs 11.7 ms in all ("after_mean") or 15.4 ms ("per_row"); kv_chunk=2
    was ~45% slower and saved little memory, so the default is no chunking. Reading k once a
    layer would take ~1.5 ms for the 28 layers at the H200's bandwidth (an estimate from k's
    bytes); the Triton path reads it twice and is not yet timed on a GPU.
    """
    if resolve_fold(cfg, q_tail, k) == "triton":
        return fold_triton.fold_max_triton(running_max, q_tail, k, q_pos, k_pos,
                                           interpret=jax.default_backend() != "gpu")
    T, N, H = q_tail.shape
    K = k.shape[1]
    if kv_chunk is None or kv_chunk >= K:
        return jnp.maximum(running_max, _head_max(q_tail, k, q_pos, k_pos, cfg))
    if K % kv_chunk:
        raise ValueError(f"kv_chunk={kv_chunk} must divide the kv head count K={K}")
    G = N // K

    def body(i, acc):
        qi = lax.dynamic_slice_in_dim(q_tail, i * kv_chunk * G, kv_chunk * G, axis=1)
        ki = lax.dynamic_slice_in_dim(k, i * kv_chunk, kv_chunk, axis=1)
        return jnp.maximum(acc, _head_max(qi, ki, q_pos, k_pos, cfg))

    return lax.fori_loop(0, K // kv_chunk, body, running_max)


def importance(running_max: jax.Array, cfg: ScoringConfig, length=None,
               row_weights=None) -> jax.Array:
    """[S] importance: mean over tail rows, then after-mean pooling (truncated edges) if set.

    row_weights: float [T], the tail rows' weights when they depend on the prompt (question
    rows, token rarity: `drafter.tail_row_weights`; traced, so no recompile per prompt); None:
    cfg.tail_weights' uniform or linear weights. Entries at index >= length (bucket padding)
    are 0, so they can never win a span.
    """
    if row_weights is not None:
        w = row_weights.astype(running_max.dtype)
        imp = (w[:, None] * running_max).sum(axis=0) / w.sum()
    elif cfg.tail_weights == "linear":  # row t of T weighs t + 1 (the rows nearest the answer)
        w = jnp.arange(1, running_max.shape[0] + 1, dtype=running_max.dtype)
        imp = (w[:, None] * running_max).sum(axis=0) / w.sum()
    else:
        imp = running_max.mean(axis=0)
    if cfg.pooling == "after_mean":
        imp = moving_average(imp, cfg.pool_width, "truncate", length)
    elif cfg.pooling == "max_after_mean":
        imp = moving_max(imp, cfg.pool_width, length)
    elif length is not None:
        imp = jnp.where(jnp.arange(imp.shape[0]) < length, imp, 0.0)
    return trailing_max(imp, cfg.trail_width, length) if cfg.trail_width else imp


def importance_unfused(
    q_tails: jax.Array,
    ks: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    cfg: ScoringConfig,
    length=None,
) -> jax.Array:
    """Reference: every layer's probabilities at once, then max over (layer, head).

    q_tails [L, T, N, H], ks [L, S, K, H]. Memory O(L * N * T * S): tests and small S only.
    """
    probs = jax.vmap(lambda q, k: tail_probs(q, k, q_pos, k_pos))(q_tails, ks)  # [L, N, T, S]
    if cfg.pooling == "per_row":
        probs = moving_average(probs, cfg.pool_width, "zero")
    return importance(probs.max(axis=(0, 1)), cfg, length)
