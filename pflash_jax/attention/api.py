"""One entry per attention mode, dispatching on `impl=`.

dense_attention: impl in {"auto", "reference", "xla", "cudnn", "mosaic"}.
  auto       the first of AUTO_DENSE that supports the call (`resolve_dense`): mosaic on Hopper
             for 16-bit prefill, cudnn on other GPUs, reference without a GPU
  reference  chunked plain-jnp spec (any backend, float32 softmax)
  xla        jax.nn.dot_product_attention(implementation="xla"): materialises T x S, small only
  cudnn      jax.nn.dot_product_attention(implementation="cudnn"): the dense flash baseline on
             NVIDIA GPUs. Never given a boolean mask (it would become a dense S x S bias).
  mosaic     the Mosaic GPU block-sparse kernel with every causal block kept (Hopper, prefill
             T == S, bf16/f16): 2-4% faster than cudnn on an H100 at 128K for Qwen3-0.6B
             and -8B prefill (results/prefill_baseline).

block_sparse_attention: impl in {"auto", "reference", "triton", "mosaic"}; auto as `resolve_sparse`.
  reference  dense attention with the block mask expanded to tokens (the spec)
  triton     Pallas/Triton kernel visiting only the kept blocks (sm_80+, or interpret=True on CPU)
  mosaic     Pallas/Mosaic GPU kernel (TMA + wgmma, Hopper only, block_size 128, bf16/f16), or
             interpret=True for the Mosaic GPU interpreter on CPU (its "smem" P@V variant)
A bool [B, N, M, M] mask is turned into a BlockMask first: the diagonal block is added and, when
causal, blocks above the diagonal are dropped, so both impls see the same pattern.

fp8 Q/K (`qk_fp8_scales=(a, b)`, `quantize_qk`): q and k are rounded to float8_e4m3fn as
q / a and k / b (a, b: float32 scales that keep |q| / a and |k| / b within e4m3's 448). The
mosaic kernel multiplies them as fp8 wgmma operands and dequantizes the logits by a * b; every
other impl runs on the rounded values dequantized back to q's dtype (an emulation of the same
rounding, not a faster path), so a CPU or non-Hopper run sees what fp8 Q/K does to the output.

fp8 P @ V (`v_fp8=True`, with qk_fp8_scales): V is rounded to e4m3 too, at one per-call scale
from its amax (`quantize_v`: V has no norm to bound it), and the mosaic kernel runs P @ V as
fp8 wgmma with P in e4m3. Other impls emulate V's rounding only: P stays at their precision,
so they bound from below what the kernel's P rounding (2^-4 relative) adds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pflash_jax.attention import reference
from pflash_jax.attention.blockmask import BlockMask

DENSE_IMPLS = ("auto", "reference", "xla", "cudnn", "mosaic")
SPARSE_IMPLS = ("reference", "triton", "mosaic")

# "auto" is one ordered list per kind: the first implementation that supports the call wins.
# Each `_supports_*` raises NotImplementedError saying why it does not (tokamax's pattern), so
# the decision lives here only and a user asking for one explicitly learns the reason.
AUTO_DENSE = ("mosaic", "cudnn", "reference")
AUTO_SPARSE = ("mosaic", "triton", "reference")
AUTO_MASS = ("triton", "xla")  # FlashPrefill's block mass (selection.block_mass)


def is_hopper() -> bool:
    """True when the default device is an sm_90 GPU (H100/H200): Mosaic GPU kernels run there."""
    dev = jax.devices()[0]
    return dev.platform == "gpu" and str(getattr(dev, "compute_capability", "")).startswith("9")


def _on_gpu() -> None:
    if jax.default_backend() != "gpu":
        raise NotImplementedError("needs a CUDA GPU")


def _hopper_16bit(dtype) -> None:
    if not is_hopper():
        raise NotImplementedError("needs a Hopper GPU (sm_90: TMA + wgmma)")
    if dtype is not None and jax.numpy.dtype(dtype).itemsize != 2:
        raise NotImplementedError(f"takes 16-bit inputs (wgmma operands), got {dtype}")


def _supports_dense(impl: str, dtype=None, T: int | None = None, S: int | None = None,
                    causal: bool = True) -> None:
    square = T is None or S is None or T == S
    if impl == "mosaic":
        _hopper_16bit(dtype)
        if not square:
            raise NotImplementedError(f"runs prefill shapes only (T == S), got T={T}, S={S}")
    elif impl in ("cudnn", "xla"):
        if impl == "cudnn":
            _on_gpu()
            if dtype is not None and jax.numpy.dtype(dtype).itemsize != 2:
                # cuDNN flash attention takes fp16/bf16 (and fp8) only; float32 raised inside
                # the traced call, so "auto" never fell back (seen on an H200)
                raise NotImplementedError(f"takes 16-bit inputs, got {dtype}")
        if causal and not square:
            # jax.nn's is_causal aligns top-left; we only call it for square prefill.
            raise NotImplementedError(f"causal needs T == S, got T={T}, S={S}")
    elif impl != "reference":
        raise ValueError(f"unknown dense attention impl {impl!r}; expected one of {DENSE_IMPLS}")


def _supports_sparse(impl: str, dtype=None) -> None:
    if impl == "mosaic":
        _hopper_16bit(dtype)
    elif impl == "triton":
        _on_gpu()
    elif impl != "reference":
        raise ValueError(f"unknown block-sparse impl {impl!r}; expected one of {SPARSE_IMPLS}")


def _supports_mass(impl: str, interpret: bool = False) -> None:
    if impl == "triton":
        if not interpret:
            _on_gpu()
    elif impl != "xla":
        raise ValueError(f"unknown block_mass impl {impl!r}; expected auto, xla or triton")


def _first_supported(order, check, *args, **kw) -> str:
    for impl in order:
        try:
            check(impl, *args, **kw)
            return impl
        except NotImplementedError:
            continue
    raise AssertionError(f"no implementation in {order} accepted the call")  # reference does


def resolve_dense(impl: str = "auto", dtype=None, T: int | None = None, S: int | None = None,
                  causal: bool = True) -> str:
    """The dense attention implementation `impl` means here: "auto" -> the first of AUTO_DENSE
    that supports the call (mosaic on Hopper for 16-bit prefill, cudnn for 16-bit inputs on
    other GPUs, the chunked jnp reference otherwise: float32, or no GPU); an explicit name is
    returned as given."""
    return impl if impl != "auto" else _first_supported(AUTO_DENSE, _supports_dense, dtype, T,
                                                        S, causal)


def resolve_mass(impl: str = "auto", interpret: bool = False) -> str:
    """The block-mass implementation of selection: "auto" -> the Triton kernel on a GPU (or
    in interpret mode), plain XLA otherwise."""
    return impl if impl != "auto" else _first_supported(AUTO_MASS, _supports_mass, interpret)


def resolve_sparse(impl: str = "auto", dtype=None) -> str:
    """The block-sparse kernel `impl` means here: "auto" -> the first of AUTO_SPARSE that
    supports it (mosaic on Hopper for 16-bit inputs, triton on other GPUs (sm_80+, e.g. an RTX
    3090) and for float32, the reference without a GPU); an explicit name as given."""
    return impl if impl != "auto" else _first_supported(AUTO_SPARSE, _supports_sparse, dtype)


def check_runs_here(kind: str, impl: str, dtype=None, option: str = "impl") -> None:
    """ValueError naming `option` when an explicitly chosen kernel (kind "sparse" or "dense";
    "auto" always resolves) cannot run on this machine, e.g. attention.impl=triton on a CPU:
    said before any model is loaded instead of failing inside the kernel's lowering."""
    if impl == "auto" or impl is None:
        return
    supports = {"sparse": _supports_sparse, "dense": _supports_dense}[kind]
    try:
        supports(impl, dtype)
    except NotImplementedError as e:
        raise ValueError(f"{option}={impl}: {e} (this machine's JAX backend: "
                         f"{jax.default_backend()})") from None


def dense_attention(q, k, v, *, impl: str = "reference", causal: bool = True):
    """Causal GQA attention. q [B,T,N,H], k/v [B,S,K,H] -> [B,T,N,H] in q's dtype.

    Causality is bottom-right aligned (query t sits at key position S - T + t).
    """
    impl = resolve_dense(impl, q.dtype, q.shape[1], k.shape[1], causal)
    if impl == "reference":
        return reference.dense_attention(q, k, v, causal=causal)
    if impl in ("xla", "cudnn"):
        if causal and q.shape[1] != k.shape[1]:
            raise ValueError(f"impl={impl!r} with causal=True needs T == S (jax.nn aligns "
                             f"causality top-left), got T={q.shape[1]}, S={k.shape[1]}")
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
    if impl == "mosaic":
        from pflash_jax.attention import mosaic

        return mosaic.dense_attention(q, k, v, causal=causal)
    raise ValueError(f"unknown dense attention impl {impl!r}; expected one of {DENSE_IMPLS}")


FP8_MAX = float(jnp.finfo(jnp.float8_e4m3fn).max)  # 448


def quantize_qk(q, k, scales):
    """(q8, k8, logit factor): q / a and k / b rounded to float8_e4m3fn, and a * b, for
    scales = (a, b) (float32 scalars, traced or not)."""
    a, b = (jnp.asarray(x, jnp.float32) for x in scales)
    q8 = (q.astype(jnp.float32) / a).astype(jnp.float8_e4m3fn)
    k8 = (k.astype(jnp.float32) / b).astype(jnp.float8_e4m3fn)
    return q8, k8, a * b


def quantize_v(v):
    """(v8, scale): v / scale rounded to float8_e4m3fn with scale = max|v| / 448 (one scalar per
    call; a zero v gets scale 1)."""
    amax = jnp.max(jnp.abs(v)).astype(jnp.float32)
    scale = jnp.where(amax > 0, amax / FP8_MAX, 1.0)
    return (v.astype(jnp.float32) / scale).astype(jnp.float8_e4m3fn), scale


def block_sparse_attention(q, k, v, block_mask, *, impl: str, block_size: int = 128,
                           causal: bool = True, interpret: bool = False, block_sizes=None,
                           qk_fp8_scales=None, v_fp8: bool = False):
    """Block-sparse GQA prefill attention. q [B,S,N,H], k/v [B,S,K,H] -> [B,S,N,H] in q.dtype.

    block_mask: a BlockMask (from select_blocks) or bool [B, N, ceil(S/bs), ceil(S/bs)] where
    [b, h, m, n] = query block m of head h reads key block n. Any S (padding handled inside).
    block_sizes: optional triton.BlockSizes (kernel tiles and launch knobs) for impl="triton",
    mosaic.BlockSizes (pipeline depth, P@V variant) for impl="mosaic".
    qk_fp8_scales: None (Q K^T in q's dtype) or (a, b): fp8 Q/K (module docstring).
    v_fp8: fp8 P @ V as well (needs qk_fp8_scales; module docstring).
    """
    if v_fp8 and qk_fp8_scales is None:
        raise ValueError("v_fp8=True (fp8 P @ V) runs with fp8 Q/K: pass qk_fp8_scales too")
    out_dtype = q.dtype
    S = q.shape[1]
    impl = resolve_sparse(impl, q.dtype)
    if not isinstance(block_mask, BlockMask):
        block_mask = BlockMask.from_dense(block_mask, block_size=block_size, seq_len=S,
                                          causal=causal)
    elif block_mask.block_size != block_size or block_mask.seq_len != S:
        raise ValueError(f"BlockMask has block_size={block_mask.block_size}, "
                         f"seq_len={block_mask.seq_len}; call has block_size={block_size}, S={S}")
    qk_scale = None  # the mosaic kernel's logit factor for fp8 Q/K
    if qk_fp8_scales is not None:
        q8, k8, qk_scale = quantize_qk(q, k, qk_fp8_scales)
        if impl == "mosaic":
            q, k = q8, k8
        else:  # the same rounding, dequantized
            a, b = (jnp.asarray(x, jnp.float32) for x in qk_fp8_scales)
            q = (q8.astype(jnp.float32) * a).astype(q.dtype)
            k = (k8.astype(jnp.float32) * b).astype(k.dtype)
    v_scale = None
    if v_fp8:
        v8, v_scale = quantize_v(v)
        v = v8 if impl == "mosaic" else (v8.astype(jnp.float32) * v_scale).astype(v.dtype)
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
        if v_fp8:
            kw.update(v_scale=v_scale, out_dtype=jnp.dtype(out_dtype).name)
        return mosaic.block_sparse_attention(q, k, v, block_mask, causal=causal,
                                             interpret=interpret, qk_scale=qk_scale, **kw)
    raise ValueError(f"unknown block-sparse impl {impl!r}; expected one of {SPARSE_IMPLS}")
