"""One entry per attention mode, dispatching on `impl=`.

dense_attention: impl in {"reference", "xla", "cudnn"}.
  reference  chunked plain-jnp spec (any backend, float32 softmax)
  xla        jax.nn.dot_product_attention(implementation="xla"): materialises T x S, small only
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"): the dense flash baseline on
             NVIDIA GPUs. Never given a boolean mask (it would become a dense S x S bias).
"""

from __future__ import annotations

import jax

from pflash_jax.attention import reference

DENSE_IMPLS = ("reference", "xla", "cudnn")


def dense_attention(q, k, v, *, impl: str = "reference", causal: bool = True):
    """Causal GQA attention. q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H] in q's dtype.

    Causality is bottom-right aligned (query t sits at key position S - T + t).
    """
    if impl == "reference":
        return reference.dense_attention(q, k, v, causal=causal)
    if impl in ("xla", "cudnn"):
        if causal and q.shape[1] != k.shape[1]:
            # jax.nn's is_causal aligns top-left; we only call it for square prefill.
            raise ValueError(f"impl={impl!r} with causal=True needs T == S, got "
                             f"T={q.shape[1]}, S={k.shape[1]}")
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
    raise ValueError(f"unknown dense attention impl {impl!r}; expected one of {DENSE_IMPLS}")
