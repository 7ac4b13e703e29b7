"""SpecPrefill look-ahead scoring: tail queries = the last prompt token + n_tail - 1 drafter tokens.

Three steps, all on the drafter:
1. prefill over the prompt that keeps a KV cache and every layer's scoring keys (post- or
   pre-RoPE) and folds in the last prompt token's query;
2. greedy decode of n_tail - 2 more tokens (the first generated token comes from step 1);
3. one "extend" pass feeding the n_tail - 1 generated tokens at positions S, S+1, ... against the
   prompt cache, folding each layer's new queries over the prompt keys only.
Unlike tail mode this keeps O(L * S) memory (SpecPrefill's own design); it exists to reproduce
that system, not as our default.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.models import qwen3
from pflash_jax.models.qwen3 import KVCache, embed, final_logits, layer_finish, layer_qkv
from pflash_jax.numerics import MASK_VALUE, SOFTMAX_DTYPE
from pflash_jax.pflash.config import PFlashConfig
from pflash_jax.pflash.pipeline import (
    _PAD_POS,
    _scoring_qk,
    drafter_attention,
    layer_finish_chunked,
    layer_qkv_chunked,
)
from pflash_jax.pflash.scoring import fold_layer, init_running_max

# Not donating: the prompt cache is read again by the extend pass after decoding.
_decode = jax.jit(qwen3.decode, static_argnames=("cfg",))


@partial(jax.jit, static_argnames=("mcfg", "pcfg", "chunk", "cache_len"))
def _prefill_keep(params, mcfg, ids, length, pcfg: PFlashConfig, chunk, cache_len):
    scfg = pcfg.scoring
    Sb = ids.shape[1]
    positions = jnp.arange(Sb, dtype=jnp.int32)[None]
    k_pos = jnp.where(positions[0] < length, positions[0], _PAD_POS)
    q_pos = (length - 1)[None]
    attn = drafter_attention(pcfg)
    rope = qwen3.rope_tables(mcfg, positions)  # once, outside the layer scan

    def body(carry, layer):
        x, rmax, dens = carry
        qkv = layer_qkv_chunked(layer, x, rope, mcfg, chunk)
        qs, ks = _scoring_qk(qkv, scfg.rope)
        q_last = jax.lax.dynamic_slice_in_dim(qs[0], length - 1, 1, axis=0)
        rmax = fold_layer(rmax, q_last, ks[0], q_pos, k_pos, scfg)
        o, d = attn(qkv.q, qkv.k, qkv.v)
        x = layer_finish_chunked(layer, x, o, mcfg, chunk)
        pad = [(0, 0), (0, cache_len - Sb), (0, 0), (0, 0)]
        return (x, rmax, dens + d), (jnp.pad(qkv.k, pad), jnp.pad(qkv.v, pad), ks[0])

    init = (embed(params, ids), init_running_max(1, Sb), jnp.float32(0))
    (x, rmax, dens), (k, v, ks) = jax.lax.scan(body, init, params.layers)
    last = jax.lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)
    cache = KVCache(k, v, length.astype(jnp.int32))
    return final_logits(params, mcfg, last), cache, ks, rmax, dens / mcfg.num_hidden_layers


def _extend_attention(q, k_cache, v_cache, k_new, v_new, length):
    """q [1,T,N,H] at slots length.. against cache slots [0, length) and causally the new keys."""
    _, T, N, H = q.shape
    K = k_cache.shape[2]
    qg = q.reshape(1, T, K, N // K, H).astype(SOFTMAX_DTYPE) / math.sqrt(H)
    s_c = jnp.einsum("btkgh,bskh->bkgts", qg, k_cache.astype(SOFTMAX_DTYPE))
    s_c = jnp.where(jnp.arange(k_cache.shape[1]) < length, s_c, MASK_VALUE)
    s_n = jnp.einsum("btkgh,bskh->bkgts", qg, k_new.astype(SOFTMAX_DTYPE))
    s_n = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s_n, MASK_VALUE)
    p = jax.nn.softmax(jnp.concatenate([s_c, s_n], axis=-1), axis=-1)
    S_c = k_cache.shape[1]
    o = (jnp.einsum("bkgts,bskh->btkgh", p[..., :S_c], v_cache.astype(SOFTMAX_DTYPE))
         + jnp.einsum("bkgts,bskh->btkgh", p[..., S_c:], v_new.astype(SOFTMAX_DTYPE)))
    return o.reshape(1, T, N, H).astype(q.dtype)


@partial(jax.jit, static_argnames=("mcfg", "pcfg"))
def _extend_scores(params, mcfg, new_ids, cache: KVCache, ks, length, rmax, pcfg: PFlashConfig):
    """Fold the generated tokens' queries (positions length, length+1, ...) into rmax."""
    scfg = pcfg.scoring
    T = new_ids.shape[1]
    Sb = ks.shape[1]
    positions = (length + jnp.arange(T, dtype=jnp.int32))[None]
    k_pos = jnp.where(jnp.arange(Sb) < length, jnp.arange(Sb, dtype=jnp.int32), _PAD_POS)

    def body(carry, xs):
        x, r = carry
        layer, kc, vc, k_s = xs
        qkv = layer_qkv(layer, x, positions, mcfg)
        qs, _ = _scoring_qk(qkv, scfg.rope)
        r = fold_layer(r, qs[0], k_s, positions[0], k_pos, scfg)
        o = _extend_attention(qkv.q, kc[:, :Sb], vc[:, :Sb], qkv.k, qkv.v, length)
        return (layer_finish(layer, x, o, mcfg), r), None

    xs = (params.layers, cache.k, cache.v, ks)
    (_, rmax), _ = jax.lax.scan(body, (embed(params, new_ids), rmax), xs)
    return rmax


def lookahead_running_max(drafter, ids: np.ndarray, cfg: PFlashConfig, *, chunk=None):
    """-> (running max [n_tail, Sb], mean block density, Sb) for the pipeline."""
    S = ids.shape[0]
    n_gen = cfg.scoring.n_tail - 1
    Sb = -(-S // cfg.block_size) * cfg.block_size
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = ids
    mcfg, params = drafter.config, drafter.params
    length = jnp.int32(S)
    lg, cache, ks, rmax_last, dens = _prefill_keep(params, mcfg, jnp.asarray(ids_p)[None], length,
                                                   cfg, chunk, Sb + max(n_gen, 1))
    if n_gen == 0:
        return rmax_last, dens, Sb
    gen = [int(jnp.argmax(lg[0]))]
    dec_cache = cache
    for i in range(n_gen - 1):
        lg, dec_cache = _decode(params, mcfg, jnp.asarray(gen[-1:], jnp.int32),
                                jnp.asarray([S + i], jnp.int32), dec_cache)
        gen.append(int(jnp.argmax(lg[0])))
    rmax_gen = _extend_scores(params, mcfg, jnp.asarray(gen, jnp.int32)[None], cache, ks, length,
                              init_running_max(n_gen, Sb), cfg)
    return jnp.concatenate([rmax_gen, rmax_last], axis=0), dens, Sb
