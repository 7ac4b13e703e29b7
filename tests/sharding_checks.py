"""The sharded half of tests/test_sharding.py, run in its own process: XLA fixes the number of
CPU devices when jax initialises, and the pytest process has already initialised it with one.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m tests.sharding_checks      # from the repository root (imports this checkout)

Each check runs a sharded target against the unsharded one on the same fresh random inputs and
prints what it measured as one JSON object (the test asserts on it and prints it on failure).
The reference is the ordinary run: unsharded params, fused q/k/v, dense attention "reference".
"""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import sharding
from pflash_jax.memory import plan_run, tree_bytes
from pflash_jax.models import qwen3
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import init_params
from pflash_jax.models.quant import quantize_params
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.pipeline import bucket, prefill_at

# 8 kv heads (N in {2, 4, 8} divide them), G = 2; F = 256 gives int4's down_proj 2 groups of
# 128 inputs (o_proj: 16 x 16 = 256 inputs, 2 groups too); untied, so the head is split too.
CFG = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=16,
                  tie_word_embeddings=False)
T, LENGTH, NEW = 48, 45, 4  # rows after LENGTH are padding, as in the pipeline's buckets


def _collectives(compiled) -> dict:
    text = compiled.as_text()
    return {op: len(re.findall(rf"\b{op}(?:-start)?\(", text))
            for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute")}


def _generate(params, ids, pos, attn, fuse_qkv):
    """Prefill then NEW - 1 greedy decode steps -> (logits per step [NEW, V], tokens, cache
    after prefill, compiled prefill, compiled decode)."""
    kw = dict(attn=attn, cache_len=T + NEW, fuse_qkv=fuse_qkv)
    prefill = prefill_at.lower(params, CFG, ids, pos, jnp.int32(LENGTH), **kw).compile()
    lg, cache = prefill(params, ids, pos, jnp.int32(LENGTH))
    kept = jax.tree.map(lambda a: np.asarray(a), cache)  # decode donates the cache
    logits, tokens = [np.asarray(lg[0])], [int(np.argmax(lg[0]))]
    p = LENGTH
    decode = None
    for _ in range(NEW - 1):
        tok, at = jnp.asarray([tokens[-1]], jnp.int32), jnp.asarray([p], jnp.int32)
        if decode is None:
            decode = qwen3.decode_jit.lower(params, CFG, tok, at, cache,
                                            fuse_qkv=fuse_qkv).compile()
        lg, cache = decode(params, tok, at, cache)
        logits.append(np.asarray(lg[0]))
        tokens.append(int(np.argmax(lg[0])))
        p += 1
    return np.stack(logits), tokens, (kept, cache), prefill, decode


def _max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def check_tensor_parallel(params, ids, pos) -> dict:
    """N in {2, 4, 8}: logits, cache and greedy tokens against the unsharded run; where the
    cache and the weights live; which collectives XLA inserted."""
    ref_lg, ref_tok, (ref_cache, _), _, _ = _generate(params, ids, pos, "reference", True)
    out = {"reference_tokens": ref_tok, "logit_scale": float(np.abs(ref_lg).max())}
    for n in (2, 4, 8):
        mesh = sharding.make_mesh(n)
        sp = sharding.shard_params(params, CFG, mesh)
        lg, tok, (cache, after), prefill, decode = _generate(
            sp, ids, pos, sharding.ShardedAttention(mesh, "reference"), False)
        kv = jax.sharding.NamedSharding(mesh, sharding.kv_cache_specs().k)
        out[str(n)] = {
            "logits_max_abs_err": _max_err(lg, ref_lg),
            "logits": lg.tolist(), "reference_logits": ref_lg.tolist(),
            "cache_k_max_abs_err": _max_err(cache.k[:, :, :LENGTH], ref_cache.k[:, :, :LENGTH]),
            "cache_v_max_abs_err": _max_err(cache.v[:, :, :LENGTH], ref_cache.v[:, :, :LENGTH]),
            "cache_scale": float(max(np.abs(ref_cache.k).max(), np.abs(ref_cache.v).max())),
            "tokens": tok,
            "cache_sharded_by_kv_heads": bool(after.k.sharding.is_equivalent_to(kv, 5)
                                              and after.v.sharding.is_equivalent_to(kv, 5)),
            "q_proj_shard": list(sp.layers.q_proj.sharding.shard_shape(sp.layers.q_proj.shape)),
            "o_proj_shard": list(sp.layers.o_proj.sharding.shard_shape(sp.layers.o_proj.shape)),
            "norm_replicated": sp.layers.q_norm.sharding.is_fully_replicated,
            "prefill_collectives": _collectives(prefill),
            "decode_collectives": _collectives(decode)}
    return out


def check_xla_impl(params, ids, pos) -> dict:
    """impl="xla" (jax.nn.dot_product_attention, the cuDNN call's XLA twin) under shard_map."""
    ref = prefill_at(params, CFG, ids, pos, jnp.int32(LENGTH), attn="reference")[0]
    mesh = sharding.make_mesh(2)
    sp = sharding.shard_params(params, CFG, mesh)
    lg = prefill_at(sp, CFG, ids, pos, jnp.int32(LENGTH), fuse_qkv=False,
                    attn=sharding.ShardedAttention(mesh, "xla"))[0]
    return {"logits_max_abs_err": _max_err(lg, ref), "logit_scale": float(jnp.abs(ref).max())}


def check_quantized(params, ids, pos) -> dict:
    """int8 / int4 / fp8 weights at N = 2 against the same quantized weights unsharded; N = 4
    splits int4's 2 input groups of o_proj and down_proj and must be refused."""
    out = {}
    mesh = sharding.make_mesh(2)
    for fmt in ("int8", "int4", "fp8"):
        q = quantize_params(params, fmt)
        ref = prefill_at(q, CFG, ids, pos, jnp.int32(LENGTH), attn="reference")[0]
        sq = sharding.shard_params(q, CFG, mesh)
        lg = prefill_at(sq, CFG, ids, pos, jnp.int32(LENGTH), fuse_qkv=False,
                        attn=sharding.ShardedAttention(mesh, "reference"))[0]
        shard = sq.layers.down_proj.scale.sharding.shard_shape(sq.layers.down_proj.scale.shape)
        out[fmt] = {"logits_max_abs_err": _max_err(lg, ref),
                    "logit_scale": float(jnp.abs(ref).max()),
                    "down_proj_scale_shard": list(shard)}
        if fmt == "int4":
            try:
                sharding.shard_params(q, CFG, sharding.make_mesh(4))
                out["int4_n4_error"] = None
            except ValueError as e:
                out["int4_n4_error"] = str(e)
    return out


def check_memory_plan(params) -> dict:
    """The per-device plan at N = 2 against the bytes one device holds of the sharded weights
    and of a cache the sharded prefill returns."""
    mesh = sharding.make_mesh(2)
    sp = sharding.shard_params(params, CFG, mesh)
    attn = sharding.ShardedAttention(mesh, "reference")
    pc = preset("pflash", attention_impl="reference", block_size=64)
    S, new = 300, 3
    plan = plan_run(CFG, jnp.float32, CFG, jnp.float32, S, pc, max_new_tokens=new,
                    target_attn=attn, drafter_params=params, target_params=sp, fuse_qkv=False)
    one = plan_run(CFG, jnp.float32, CFG, jnp.float32, S, pc, max_new_tokens=new,
                   drafter_params=params, target_params=params)
    Sb = bucket(S)  # the pipeline's padded length
    ids = jnp.asarray(np.random.default_rng(3).integers(0, CFG.vocab_size, (1, Sb)), jnp.int32)
    _, cache = prefill_at(sp, CFG, ids, jnp.arange(Sb, dtype=jnp.int32)[None], jnp.int32(S),
                          attn=attn, cache_len=Sb + new - 1, fuse_qkv=False)
    on_one_device = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(sp))
    cache_one = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(cache))
    full, full1 = plan.stages["full_prefill"], one.stages["full_prefill"]
    return {"tensor_parallel": plan.tensor_parallel, "plan_weights": full.weights,
            "device_weights": on_one_device, "bytes_of": tree_bytes(sp),
            "plan_kv": full.kv_cache, "device_kv": cache_one,
            "unsharded_weights": full1.weights, "unsharded_kv": full1.kv_cache,
            "activations": full.activations, "unsharded_activations": full1.activations,
            "summary": plan.summary()}


def main() -> None:
    assert jax.device_count() >= 8, f"needs 8 devices (XLA_FLAGS), got {jax.device_count()}"
    params = init_params(CFG, jax.random.key(0), jnp.float32, std=0.2)  # peaky attention
    ids = jax.random.randint(jax.random.key(1), (1, T), 0, CFG.vocab_size, jnp.int32)
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    print(json.dumps({"tensor_parallel": check_tensor_parallel(params, ids, pos),
                      "xla_impl": check_xla_impl(params, ids, pos),
                      "quantized": check_quantized(params, ids, pos),
                      "memory_plan": check_memory_plan(params)}))


if __name__ == "__main__":
    main()
