"""One entry per attention mode, dispatching on `impl=`.

dense_attention: impl in {"auto", "reference", "xla", "cudnn", "mosaic"}.
  auto       the fastest exact kernel here (`default_dense_impl`): mosaic on Hopper for 16-bit
             inputs, cudnn on other GPUs, reference without a GPU
  reference  chunked plain-jnp spec (any backend, float32 softmax)
  xla        jax.nn.dot_product_attention(implementation="xla"): materialises T x S, small only
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"): the dense flash baseline on
             NVIDIA GPUs. Never given a boolean mask (it would become a dense S x S bias).
  mosaic     the Mosaic GPU block-sparse kernel with every causal block kept (Hopper, prefill
             T == S, bf16/f16): 2-4% faster than cudnn on an H100 at 128K for Qwen3-0.6B
             and -8B prefill (results/prefill_baseline).

block_sparse_attention: impl in {"reference", "triton", "mosaic"}.
  reference  dense attention with the block mask expanded to tokens (the spec)
  triton     Pallas/Triton kernel visiting only the kept blocks (sm_80+, or interpret=True on CPU)
  mosaic     Pallas/Mosaic GPU kernel (TMA + wgmma, Hopper only, block_size 128, bf16/f16), or
             interpret=True for the Mosaic GPU interpreter on CPU (its "smem" P@V variant)
A bool [B, N, M, M] mask is turned into a BlockMask first: the diagonal block is added and, when
causal, blocks above the diagonal are dropped, so both impls see the same pattern.
"""

from __future__ import annotations

import jax

from pflash_jax.attention import reference
from pflash_jax.attention.blockmask import BlockMask

DENSE_IMPLS = ("auto", "reference", "xla", "cudnn", "mosaic")
SPARSE_IMPLS = ("reference", "triton", "mosaic")


def is_hopper() -> bool:
    """True when the default device is an sm_90 GPU (H100/H200): Mosaic GPU kernels run there."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def default_sparse_impl() -> str:
    """The block-sparse kernel to use here: "mosaic" on Hopper, "triton" on other GPUs (sm_80+,
    e.g. an RTX 3090), "reference" without a GPU."""
    if jax.default_backend() != "gpu":
        return "reference"
    return "mosaic" if is_hopper() else "triton"


def default_dense_impl(dtype=None) -> str:
    """The dense prefill attention to use here (the full-prefill baseline): "mosaic" on Hopper
    for 16-bit inputs (faster than cuDNN there, see DENSE_IMPLS), "cudnn" on other GPUs and for
    float32, "reference" without a GPU."""
    if jax.default_backend() != "gpu":
        return "reference"
    sixteen = dtype is None or jax.numpy.dtype(dtype).itemsize == 2
    return "mosaic" if is_hopper() and sixteen else "cudnn"


def dense_attention(q, k, v, *, impl: str = "reference", causal: bool = True):
    """Causal GQA attention. q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H] in q's dtype.

    Causality is bottom-right aligned (query t sits at key position S - T + t).
    """
    if impl == "auto":
        impl = default_dense_impl(q.dtype)
        if impl == "mosaic" and q.shape[1] != k.shape[1]:
            impl = "reference"  # not prefill-shaped (T != S): no kernel path takes it
    if impl == "reference":
        return reference.dense_attention(q, k, v, causal=causal)
    if impl in ("xla", "cudnn"):
        if causal and q.shape[1] != k.shape[1]:
            # jax.nn's is_causal aligns top-left; we only call it for square prefill.
            raise ValueError(f"impl={impl!r} with causal=True needs T == S, got "
                             f"T={q.shape[1]}, S={k.shape[1]}")
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
    if impl == "mosaic":
        from pflash_jax.attention import mosaic

        return mosaic.dense_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown dense attention impl {impl!r}; expected one of {DENSE_IMPLS}")


def block_sparse_attention(q, k, v, block_mask, *, impl: str, block_size: int = 128,
                           causal: bool = True, interpret: bool = False, block_sizes=None):
    """Block-sparse GQA prefill attention. q [B,S,N,H], k/v [B,S,K,H] -> [B,S,N,H] in q.dtype.

    block_mask: a BlockMask (from select_blocks) or bool [B, N, ceil(S/bs), ceil(S/bs)] where
    [b, h, m, n] = query block m of head h reads key block n. Any S (padding handled inside).
    block_sizes: optional triton.BlockSizes (kernel tiles and launch knobs) for impl="triton",
    mosaic.BlockSizes (pipeline depth, P@V variant) for impl="mosaic".
    """
    S = q.shape[1]
    if not isinstance(block_mask, BlockMask):
        block_mask = BlockMask.from_dense(block_mask, block_size=block_size, seq_len=S,
                                          causal=causal)
    elif block_mask.block_size != block_size or block_mask.seq_len != S:
        raise ValueError(f"BlockMask has block_size={block_mask.block_size}, "
                         f"seq_len={block_mask.seq_len}; call has block_size={block_size}, S={S}")
    if impl == "reference":
        return reference.block_sparse_attention(q, k, v, block_mask.mask, block_size=block_size,
                                                causal=causal)
    if impl == "triton":
        from pflash_jax.attention import triton

        kw = {} if block_sizes is None else {"block_sizes": block_sizes}
        return triton.block_sparse_attention(q, k, v, block_mask, causal=causal,
                                             interpret=interpret, **kw)
    if impl == "mosaic":
        from pflash_jax.attention import mosaic

        kw = {} if block_sizes is None else {"block_sizes": block_sizes}
        return mosaic.block_sparse_attention(q, k, v, block_mask, causal=causal,
                                             interpret=interpret, **kw)
    raise ValueError(f"unknown block-sparse impl {impl!r}; expected one of {SPARSE_IMPLS}")
