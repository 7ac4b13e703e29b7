"""Qwen3 forward pass: pure functions of (params, static cfg), layers scanned.

Design choices:
- Prefill takes explicit positions [B, T]. The target prefills the kept tokens renumbered
  0..K-1 by default, or at their original (sorted, possibly gapped) positions
  (`selection.positions`, pflash/pipeline.py); either way causality between kept tokens is
  plain index causality, so attention is always a square causal call: `attn(q, k, v) -> o` with
  q [B,T,N,H], k/v [B,T,K,H]. `attn` is a name for `pflash_jax.attention.dense_attention`
  ("auto" | "reference" | "xla" | "cudnn" | "mosaic") or any callable with that signature
  (block-sparse kernels).
- q_norm / k_norm (RMSNorm over H) come before RoPE, as in transformers. RoPE tables are float32
  (positions near 128K times inv_freq lose all precision in bf16) and rotate in float32.
- `chunk` splits the per-token work (projections, norms, RoPE, MLP) into `lax.map` chunks along
  the sequence so the [T, F] MLP activations of a 128K-token prefill fit in memory; attention
  stays one call over the whole sequence.
- The KV cache holds post-RoPE keys, a fixed capacity S_max and one fill length shared by the
  batch. Decode attends to the filled part of the cache plus the new token with one float32
  softmax, then writes the new K/V for all layers at once (in place when the cache is donated).
- Quantization (models/quant.py): every projection goes through `quant.matmul`, which takes a
  plain [in, out] array (exactly `x @ w`) or a `QuantizedWeight`. `kv_cache` ("bf16": the
  compute dtype, "int8", "fp8") is static like fuse_qkv: a quantized cache stores K/V per token
  and kv head with float32 scales; prefill attention reads the layer's own full-precision K/V,
  decode dequantizes what it reads from the cache.

Building blocks (public, so the pipeline can run its own layer scan and read q/k per layer):
  embed(params, ids) -> x [B,T,D]
  rope_tables(cfg, positions) -> (cos, sin) float32 [B,T,H/2]
  layer_qkv(layer, x, positions, cfg, rope=None) -> QKV(q_pre, k_pre, q, k, v)
      q_pre/k_pre: after q_norm/k_norm, before RoPE; q/k: after RoPE; v. [B,T,N|K,H]
  layer_finish(layer, x, attn_out, cfg) -> x   (o_proj + residual + post-norm SwiGLU MLP + residual)
  layer_forward(layer, x, positions, cfg, attn, chunk, rope=None) -> (x, k, v)
  scan_layers(params, cfg, x, positions, attn, hook=..., per_layer=...) -> ScanOut
      the one layer scan: a per-layer hook reads q/k/v (the drafter's score fold is one)
  run_layers(...) -> (x, KVCache); cached_attention(q, k_cache, v_cache, k_new, v_new, length)
  final_logits(params, cfg, x) -> float32 [..., V]   (final norm + tied/untied head)
Modes: forward (all logits), prefill (last logits + cache), decode (one token), and the
user-facing `logits(model, ids)` and `greedy_generate(model, ids, n_new)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.attention import dense_attention
from pflash_jax.models import quant
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import LayerParams, Params
from pflash_jax.numerics import MASK_VALUE, SOFTMAX_DTYPE

AttnFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

class QKV(NamedTuple):
    q_pre: jax.Array  # [B,T,N,H] after q_norm, before RoPE
    k_pre: jax.Array  # [B,T,K,H]
    q: jax.Array  # [B,T,N,H] after RoPE
    k: jax.Array  # [B,T,K,H]
    v: jax.Array  # [B,T,K,H]


class KVCache(NamedTuple):  # a NamedTuple is already a pytree (None fields: empty subtrees)
    k: jax.Array  # [L,B,S_max,K,H] post-RoPE keys (int8 / e4m3 values when quantized)
    v: jax.Array  # [L,B,S_max,K,H]
    length: jax.Array  # int32 scalar: slots [0, length) are filled
    k_scale: jax.Array | None = None  # float32 [L,B,S_max,K]: k ~= k * k_scale[..., None]
    v_scale: jax.Array | None = None  # float32 [L,B,S_max,K]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def format(self) -> str:
        """The kv_cache format it was built with: "bf16" (unquantized), "int8" or "fp8"."""
        if self.k_scale is None:
            return "bf16"
        return "int8" if self.k.dtype == jnp.int8 else "fp8"


# ---------------------------------------------------------------- building blocks
def rms_norm(x, w, eps: float):
    """transformers' order: normalise in float32, cast back, then scale by the weight."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def embed(params: Params, ids) -> jax.Array:
    return jnp.take(params.embed_tokens, ids, axis=0)


def rope_tables(cfg: Qwen3Config, positions):
    """cos, sin float32 [..., H/2], already multiplied by YaRN's attention factor."""
    inv_freq, attention_factor = cfg.rope_inv_freq()
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles) * attention_factor, jnp.sin(angles) * attention_factor


def apply_rope(x, cos, sin):
    """Rotate-half RoPE (transformers' layout) in float32. x [B,T,n,H], cos/sin [B,T,H/2]."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def layer_qkv(layer: LayerParams, x, positions, cfg: Qwen3Config, rope=None, *,
              fuse_qkv: bool | str = True) -> QKV:
    """Input norm, q/k/v projections, q_norm/k_norm, RoPE. x [B,T,D] residual stream.

    fuse_qkv: True runs the three projections as one GEMM over [Wq|Wk|Wv] (11.4 vs 12.3 ms per
    8B layer at 128K); False runs three (benchmarks A/B it); "qk" runs [Wq|Wk] as one GEMM and
    Wv as its own, so v is a GEMM output instead of a slice that XLA copies out of the fused
    one for an attention kernel that needs it contiguous (the drafter at 128K: 4.0 ms less,
    results/bench_layers_h200). A static argument, not a global, so a jit traced with one
    value is never silently reused for another.

    rope: optional precomputed `rope_tables(cfg, positions)` (then positions is unused). Layer
    scans pass them in, computed once per forward: built inside, XLA fuses sin/cos into the
    per-head RoPE fusion and re-evaluates them for every head (q_norm + RoPE of one 8B layer at
    128K: 3.99 ms with tables built inside, 1.15 ms with tables given; H200).
    """
    eps = cfg.rms_norm_eps
    q, k, v = qkv_projections(layer, rms_norm(x, layer.input_layernorm, eps), cfg, fuse_qkv)
    q_pre, k_pre = rms_norm(q, layer.q_norm, eps), rms_norm(k, layer.k_norm, eps)
    cos, sin = rope_tables(cfg, positions) if rope is None else rope
    return QKV(q_pre, k_pre, apply_rope(q_pre, cos, sin), apply_rope(k_pre, cos, sin), v)


def qkv_projections(layer: LayerParams, h, cfg: Qwen3Config, fuse_qkv: bool | str = True):
    """The q/k/v projections of the normed input h [B,T,D] as `layer_qkv`'s fuse_qkv says ->
    (q [B,T,N,H], k [B,T,K,H], v [B,T,K,H]), before q_norm / k_norm."""
    B, T, _ = h.shape
    H, N, K = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    if fuse_qkv == "qk":
        qk = quant.matmul(h, quant.concat_out([layer.q_proj, layer.k_proj]))
        q, k = jnp.split(qk, [N * H], axis=-1)
        v = quant.matmul(h, layer.v_proj)
    elif fuse_qkv is True:
        qkv = quant.matmul(h, quant.concat_out([layer.q_proj, layer.k_proj, layer.v_proj]))
        q, k, v = jnp.split(qkv, [N * H, (N + K) * H], axis=-1)
    elif fuse_qkv is False:
        q, k, v = (quant.matmul(h, w) for w in (layer.q_proj, layer.k_proj, layer.v_proj))
    else:
        raise ValueError(f"fuse_qkv must be True, False or 'qk', got {fuse_qkv!r}")
    return q.reshape(B, T, N, H), k.reshape(B, T, K, H), v.reshape(B, T, K, H)


def layer_finish(layer: LayerParams, x, attn_out, cfg: Qwen3Config):
    """o_proj + residual, then post-attention norm + SwiGLU MLP + residual. attn_out [B,T,N,H]."""
    B, T, _ = x.shape
    mm = quant.matmul
    x = x + mm(attn_out.reshape(B, T, -1), layer.o_proj)
    h = rms_norm(x, layer.post_attention_layernorm, cfg.rms_norm_eps)
    # gate/up stay two GEMMs: fusing them measured no faster (69.1 vs 68.2 ms, 8B, 128K).
    return x + quant.swiglu(h, layer.gate_proj, layer.up_proj, layer.down_proj)


def final_logits(params: Params, cfg: Qwen3Config, x):
    """Final norm and LM head (tied: embed_tokens^T), float32 accumulation and output."""
    h = rms_norm(x, params.norm, cfg.rms_norm_eps)
    if params.lm_head is None:
        return jnp.einsum("...d,vd->...v", h, params.embed_tokens,
                          preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", h, params.lm_head, preferred_element_type=jnp.float32)


def resolve_attn(attn: str | AttnFn) -> AttnFn:
    if callable(attn):
        return attn
    return partial(dense_attention, impl=attn)


def check_count(value, what: str, why: str = "") -> None:
    """value must be an int >= 1 (a bool is refused: True is a typo, not 1); a ValueError
    naming `what` otherwise. The one check behind chunk, max_new_tokens and n_new."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1{why}, got {value!r}")


def check_chunk(chunk) -> None:
    """chunk: None (whole sequence) or a positive int of tokens."""
    if chunk is not None:
        check_count(chunk, "chunk", " (tokens per chunk; None: no chunking)")


def check_ids(ids, vocab_size: int, who: str = "ids") -> np.ndarray:
    """A prompt as int32 numpy ids, refusing what would silently go wrong: non-integer dtypes,
    empty prompts and ids outside [0, vocab_size). The range is checked on the caller's own
    dtype, before the int32 cast (an int64 id >= 2^31 would otherwise wrap into range);
    an out-of-range id would read past the embedding table (NaN rows on some backends)."""
    a = np.asarray(ids)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{who} must be integer token ids, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{who} is empty: a prompt needs at least one token")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= vocab_size:
        bad = np.flatnonzero((a.reshape(-1) < 0) | (a.reshape(-1) >= vocab_size))
        raise ValueError(f"{who} out of range [0, {vocab_size}): min {lo}, max {hi} "
                         f"({bad.size} bad id(s), first at flat index {int(bad[0])})")
    return a.astype(np.int32)


def sequence_chunks(fn, chunk: int | None, *xs):
    """Apply fn to sequence chunks of arrays [B,T,...] with lax.map; pads T to a multiple.
    chunk None (or >= T): one call on the whole sequence."""
    check_chunk(chunk)
    T = xs[0].shape[1]
    if chunk is None or chunk >= T:
        return fn(*xs)
    n = -(-T // chunk)
    pad = n * chunk - T

    def split(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0)

    def merge(a):
        a = jnp.moveaxis(a, 0, 1)
        return a.reshape(a.shape[0], n * chunk, *a.shape[3:])[:, :T]

    out = jax.lax.map(lambda args: fn(*args), tuple(split(a) for a in xs))
    return jax.tree.map(merge, out)


def layer_qkv_chunked(layer: LayerParams, x, rope, cfg: Qwen3Config, chunk: int | None, *,
                      fuse_qkv: bool | str = True, pre_rope: bool = True) -> QKV:
    """layer_qkv over sequence chunks, RoPE tables (cos, sin) built once by the caller.
    pre_rope=False leaves q_pre/k_pre out (None): chunked, every output of the map is
    materialised, and full prefill needs only the post-RoPE q/k."""
    cos, sin = rope

    def one(xc, cc, sc):
        qkv = layer_qkv(layer, xc, None, cfg, rope=(cc, sc), fuse_qkv=fuse_qkv)
        return qkv if pre_rope else qkv._replace(q_pre=None, k_pre=None)

    return sequence_chunks(one, chunk, x, cos, sin)


def layer_finish_chunked(layer: LayerParams, x, attn_out, cfg: Qwen3Config, chunk: int | None):
    return sequence_chunks(lambda xc, oc: layer_finish(layer, xc, oc, cfg), chunk, x, attn_out)


def layer_forward(layer: LayerParams, x, positions, cfg: Qwen3Config,
                  attn: str | AttnFn = "reference", chunk: int | None = None, rope=None):
    """One decoder layer over the whole sequence -> (x, k, v); k is post-RoPE."""
    rope = rope_tables(cfg, positions) if rope is None else rope
    qkv = layer_qkv_chunked(layer, x, rope, cfg, chunk, pre_rope=False)
    o = resolve_attn(attn)(qkv.q, qkv.k, qkv.v)
    return layer_finish_chunked(layer, x, o, cfg, chunk), qkv.k, qkv.v


class ScanOut(NamedTuple):
    x: jax.Array  # [B,T,D] residual stream after the last layer run in full
    state: object  # the hook's carried state after every layer
    hook_out: object  # the hook's per-layer outputs, stacked on a leading L axis (or None)
    attn_out: object  # the attention function's per-layer outputs, stacked (or None)


def scan_layers(params: Params, cfg: Qwen3Config, x, positions, attn, *,
                chunk: int | None = None, hook=None, state=None, per_layer=None,
                last_qkv_only: bool = False, fuse_qkv: bool | str = True, rope=None,
                unroll: bool = False) -> ScanOut:
    """The one decoder-layer scan (lax.scan: one layer compiles once) every mode builds on.

    Per layer: qkv = layer_qkv (chunked), then `hook(state, qkv, extra) -> (state, out)` (a
    reader of q/k/v: the drafter folds its tail-query scores here, prefill keeps K/V), then
    `attn(qkv, extra) -> (o, out)`, then o_proj + MLP. `extra` is the layer's slice of
    `per_layer` (a pytree with a leading L axis, e.g. a KV cache; None if not given).
    last_qkv_only: the last layer stops after its hook (scores need only its q/k, so its
    attention and MLP would be wasted); its hook must then return no output.
    unroll: the layers as straight-line code (lax.scan(unroll=True)), no device loop, so each
    layer's weights are a static slice of the stacked tensors instead of a dynamic slice the
    loop copies out (8 device copies a layer of the 8B target). Measured no faster (8B target,
    6,528 tokens, H200: within the noise, results/bench_layers_h200); off everywhere, kept
    for that A/B.
    """
    rope = rope_tables(cfg, positions) if rope is None else rope  # once, outside the scan
    pre_rope = hook is not None  # only a hook can want the pre-RoPE q/k

    def qkv_of(layer, x):
        return layer_qkv_chunked(layer, x, rope, cfg, chunk, fuse_qkv=fuse_qkv,
                                 pre_rope=pre_rope)

    def body(carry, xs):
        x, st = carry
        layer, extra = xs
        qkv = qkv_of(layer, x)
        st, h_out = hook(st, qkv, extra) if hook is not None else (st, None)
        o, a_out = attn(qkv, extra)
        return (layer_finish_chunked(layer, x, o, cfg, chunk), st), (h_out, a_out)

    layers = params.layers
    if not last_qkv_only:
        (x, state), (h, a) = jax.lax.scan(body, (x, state), (layers, per_layer), unroll=unroll)
        return ScanOut(x, state, h, a)
    if hook is None:
        raise ValueError("scan_layers: last_qkv_only needs a hook (nothing reads the q/k)")
    head, last = (jax.tree.map(lambda t: t[:-1], layers), jax.tree.map(lambda t: t[-1], layers))
    extra_head = jax.tree.map(lambda t: t[:-1], per_layer)
    extra_last = jax.tree.map(lambda t: t[-1], per_layer)
    (x, state), (h, a) = jax.lax.scan(body, (x, state), (head, extra_head), unroll=unroll)
    state, h_last = hook(state, qkv_of(last, x), extra_last)
    if h_last is not None:
        raise ValueError("scan_layers: with last_qkv_only the hook must return no output")
    return ScanOut(x, state, h, a)


def store_kv(k, v, kv_cache: str):
    """One layer's (k, v) [B,T,K,H] as the cache stores them -> (k, v, k_scale, v_scale); the
    scales are None for "bf16" (kept in the compute dtype)."""
    quant.check_format(kv_cache, quant.KV_CACHE_FORMATS, "kv_cache")
    if kv_cache == "bf16":
        return k, v, None, None
    (kq, ks), (vq, vs) = quant.quantize_kv(k, kv_cache), quant.quantize_kv(v, kv_cache)
    return kq, vq, ks, vs


def run_layers(params: Params, cfg: Qwen3Config, x, positions, attn: str | AttnFn, *,
               chunk: int | None = None, cache_len: int | None = None,
               fuse_qkv: bool | str = True, kv_cache: str = "bf16",
               unroll: bool = False) -> tuple[jax.Array, KVCache]:
    """Every layer over x [B,T,D] at positions [B,T] -> (x, KVCache with capacity cache_len
    or T, filled T). attn: a dense_attention name or a callable (q, k, v) -> o.
    kv_cache: "bf16" (the compute dtype), "int8" or "fp8" (quantized as stored; attention here
    still reads the full-precision K/V)."""
    T = x.shape[1]
    pad = (cache_len or T) - T
    if pad < 0:
        raise ValueError(f"cache_len={cache_len} is shorter than the prompt ({T} tokens)")
    quant.check_format(kv_cache, quant.KV_CACHE_FORMATS, "kv_cache")
    attn_fn = resolve_attn(attn)

    def keep_kv(state, qkv, _):
        stored = store_kv(qkv.k, qkv.v, kv_cache)
        if pad:  # values [B,T,K,H] and scales [B,T,K]: pad the T axis
            stored = jax.tree.map(
                lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)), stored)
        return state, stored

    def dense(qkv, _):
        return attn_fn(qkv.q, qkv.k, qkv.v), None

    out = scan_layers(params, cfg, x, positions, dense, chunk=chunk, hook=keep_kv,
                      fuse_qkv=fuse_qkv, unroll=unroll)
    k, v, ks, vs = out.hook_out
    return out.x, KVCache(k, v, jnp.asarray(T, jnp.int32), ks, vs)


# ---------------------------------------------------------------- modes
def forward(params: Params, cfg: Qwen3Config, ids, positions, *,
            attn: str | AttnFn = "reference", chunk: int | None = None, fuse_qkv: bool = True):
    """All-token logits float32 [B,T,V] (no cache kept). ids/positions [B,T]."""
    x, _ = run_layers(params, cfg, embed(params, ids), positions, attn, chunk=chunk,
                      fuse_qkv=fuse_qkv)
    return final_logits(params, cfg, x)


def prefill(params: Params, cfg: Qwen3Config, ids, positions, *,
            attn: str | AttnFn = "reference", chunk: int | None = None,
            cache_len: int | None = None, fuse_qkv: bool = True, kv_cache: str = "bf16"):
    """Prefill ids [B,T] at positions [B,T] (increasing, gaps allowed).

    Returns (last-token logits float32 [B,V], KVCache with capacity cache_len or T, filled T,
    stored as kv_cache says).
    """
    x, cache = run_layers(params, cfg, embed(params, ids), positions, attn, chunk=chunk,
                          cache_len=cache_len, fuse_qkv=fuse_qkv, kv_cache=kv_cache)
    return final_logits(params, cfg, x[:, -1]), cache


def cached_attention(q, k_cache, v_cache, k_new, v_new, length, *, k_scale=None,
                     v_scale=None):
    """Queries of T new tokens against a KV cache and, causally, each other.

    q [B,T,N,H] at cache slots length, length+1, ...; k_cache/v_cache [B,S_max,K,H] of which
    slots [0, length) are filled; k_new/v_new [B,T,K,H]. One float32 softmax over the filled
    cache and the new keys up to each query's own. Decode is T = 1; the look-ahead scorer
    feeds its generated tokens with T = n_tail - 1. A quantized cache passes its float32
    scales k_scale/v_scale [B,S_max,K]: it is dequantized here, into the float32 it is read in.
    """
    B, T, N, H = q.shape
    K = k_cache.shape[2]
    if k_scale is not None:
        k_cache = quant.dequantize_kv(k_cache, k_scale, SOFTMAX_DTYPE)
        v_cache = quant.dequantize_kv(v_cache, v_scale, SOFTMAX_DTYPE)
    qg = q.reshape(B, T, K, N // K, H).astype(SOFTMAX_DTYPE) / math.sqrt(H)
    s_c = jnp.einsum("btkgh,bskh->bkgts", qg, k_cache.astype(SOFTMAX_DTYPE))
    s_c = jnp.where(jnp.arange(k_cache.shape[1]) < length, s_c, MASK_VALUE)
    s_n = jnp.einsum("btkgh,bskh->bkgts", qg, k_new.astype(SOFTMAX_DTYPE))
    s_n = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s_n, MASK_VALUE)
    p = jax.nn.softmax(jnp.concatenate([s_c, s_n], axis=-1), axis=-1)
    S_c = k_cache.shape[1]
    o = (jnp.einsum("bkgts,bskh->btkgh", p[..., :S_c], v_cache.astype(SOFTMAX_DTYPE))
         + jnp.einsum("bkgts,bskh->btkgh", p[..., S_c:], v_new.astype(SOFTMAX_DTYPE)))
    return o.reshape(B, T, N, H).astype(q.dtype)


def decode(params: Params, cfg: Qwen3Config, token, position, cache: KVCache, *,
           kv_cache: str | None = None, fuse_qkv: bool = True):
    """One token per batch row: token [B], position [B] -> (logits float32 [B,V], cache).

    The cache must have a free slot (length < capacity): under jit an overflow cannot raise, and
    dynamic_update_slice would clamp and overwrite the last slot. kv_cache: the cache's format
    (None: read from the cache, which knows it; a value that disagrees is an error). The new
    token attends to its own K/V in full precision and is stored quantized like the rest.
    fuse_qkv: as in layer_qkv (off for a tensor-parallel target, pflash_jax/sharding.py).
    """
    fmt = cache.format
    if kv_cache is not None and kv_cache != fmt:
        raise ValueError(f"decode: kv_cache={kv_cache!r} but the cache is stored as {fmt!r}")
    positions = position[:, None]

    def new_kv(state, qkv, _):
        return state, (qkv.k, qkv.v)

    def attend(qkv, kv):
        kc, vc, ks, vs = kv
        return cached_attention(qkv.q, kc, vc, qkv.k, qkv.v, cache.length, k_scale=ks,
                                v_scale=vs), None

    out = scan_layers(params, cfg, embed(params, token[:, None]), positions, attend,
                      hook=new_kv, per_layer=(cache.k, cache.v, cache.k_scale, cache.v_scale),
                      fuse_qkv=fuse_qkv)
    x, (k_new, v_new) = out.x, out.hook_out
    k_new, v_new, ks_new, vs_new = store_kv(k_new, v_new, fmt)  # [L,B,1,K,H], scales [L,B,1,K]

    def write(buf, new):
        at = (0, 0, cache.length) + (0,) * (buf.ndim - 3)
        return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), at)

    scales = ((None, None) if fmt == "bf16"
              else (write(cache.k_scale, ks_new), write(cache.v_scale, vs_new)))
    cache = KVCache(write(cache.k, k_new), write(cache.v, v_new), cache.length + 1, *scales)
    return final_logits(params, cfg, x[:, 0]), cache


# ---------------------------------------------------------------- user-facing entry points
forward_jit = jax.jit(forward, static_argnames=("cfg", "attn", "chunk", "fuse_qkv"))
prefill_jit = jax.jit(prefill, static_argnames=("cfg", "attn", "chunk", "cache_len", "fuse_qkv",
                                                "kv_cache"))
decode_jit = jax.jit(decode, static_argnames=("cfg", "kv_cache", "fuse_qkv"),
                     donate_argnames=("cache",))


def logits(model, ids, *, attn: str | AttnFn = "reference") -> jax.Array:
    """float32 [T, V] logits of a 1-D id array at positions 0..T-1 (docs/design.md section 3)."""
    ids = check_ids(ids, model.config.vocab_size, "logits: ids")
    if ids.ndim != 1:
        raise ValueError(f"logits expects a 1-D id array, got shape {ids.shape}")
    ids = jnp.asarray(ids)
    pos = jnp.arange(ids.shape[0], dtype=jnp.int32)
    return forward_jit(model.params, model.config, ids[None], pos[None], attn=attn)[0]


def greedy_generate(model, ids, n_new: int, positions=None, *,
                    attn: str | AttnFn = "reference", chunk: int | None = None,
                    kv_cache: str = "bf16") -> np.ndarray:
    """Greedy tokens [n_new] (or [B, n_new] for 2-D ids): prefill, then decode.

    positions default to 0..T-1; decoding continues at positions[-1] + 1, + 2, ...
    """
    check_count(n_new, "greedy_generate: n_new")
    check_chunk(chunk)
    ids = jnp.asarray(check_ids(ids, model.config.vocab_size, "greedy_generate: ids"))
    squeeze = ids.ndim == 1
    ids = ids[None] if squeeze else ids
    B, T = ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    positions = jnp.asarray(positions, jnp.int32).reshape(B, T)
    cfg, params = model.config, model.params
    lg, cache = prefill_jit(params, cfg, ids, positions, attn=attn, chunk=chunk,
                            cache_len=T + max(n_new - 1, 0), kv_cache=kv_cache)
    tok = jnp.argmax(lg, axis=-1).astype(jnp.int32)
    out, pos = [tok], positions[:, -1]
    for _ in range(n_new - 1):
        pos = pos + 1
        lg, cache = decode_jit(params, cfg, tok, pos, cache)
        tok = jnp.argmax(lg, axis=-1).astype(jnp.int32)
        out.append(tok)
    tokens = np.stack([np.asarray(t) for t in out], axis=-1)
    return tokens[0] if squeeze else tokens
