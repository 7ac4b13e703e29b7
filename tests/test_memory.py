"""The memory plan (pflash_jax/memory.py): its byte counts against what a run allocates, its
kept-token bound against real selections, and a budget that leaves one path out of a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.memory import (
    GIB,
    kept_tokens_upper_bound,
    kv_cache_bytes,
    plan_run,
    weights_bytes,
)
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import init_params
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.pipeline import bucket, prefill_at
from pflash_jax.pflash.spans import select_tokens

REPO = Path(__file__).resolve().parents[1]


def _cfg(layers=3, tied=True, vocab=300):
    # intermediate 256: a multiple of int4's 128-input groups (down_proj's input dim)
    return Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=256,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, tie_word_embeddings=tied, max_position_embeddings=8192)


def _nbytes(tree) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("tied", [True, False])
def test_weight_and_cache_bytes_equal_the_allocated_arrays(dtype, tied):
    cfg = _cfg(tied=tied)
    params = init_params(cfg, jax.random.key(0), dtype)
    assert weights_bytes(cfg, dtype) == _nbytes(params)
    T, new = 200, 5
    ids = jax.random.randint(jax.random.key(1), (1, bucket(T)), 0, cfg.vocab_size, jnp.int32)
    pos = jnp.arange(bucket(T), dtype=jnp.int32)[None]
    cache_len = bucket(T) + new - 1
    _, cache = prefill_at(params, cfg, ids, pos, jnp.int32(T), attn="reference",
                          cache_len=cache_len)
    assert kv_cache_bytes(cfg, cache_len, dtype) == _nbytes(cache)


def test_plan_stages_hold_their_weights_and_cache():
    d, t = _cfg(layers=2), _cfg(layers=3, tied=False)
    pc = preset("pflash", attention_impl="reference", block_size=64)
    S = 1000
    p = plan_run(d, jnp.float32, t, jnp.bfloat16, S, pc, max_new_tokens=4)
    assert p.stages["drafter"].weights == weights_bytes(d, jnp.float32)
    assert p.stages["full_prefill"].weights == weights_bytes(t, jnp.bfloat16)
    full_cache = kv_cache_bytes(t, bucket(S) + 3, jnp.bfloat16)
    assert p.stages["full_prefill"].kv_cache == full_cache
    # each PFlash stage pays for the other model's resident weights
    assert p.stages["drafter"].other >= weights_bytes(t, jnp.bfloat16)
    assert p.stages["target_prefill"].other >= weights_bytes(d, jnp.float32)
    assert p.paths["full"].needs == p.stages["full_prefill"].total
    assert p.paths["pflash"].needs == max(p.stages["drafter"].total,
                                          p.stages["target_prefill"].total)
    # activations grow with S: a longer prompt plans more temporaries
    p2 = plan_run(d, jnp.float32, t, jnp.bfloat16, 2 * S, pc, max_new_tokens=4)
    assert p2.stages["full_prefill"].activations > p.stages["full_prefill"].activations
    assert p.paths["full"].fits(None) and not p.paths["full"].fits(p.paths["full"].needs - 1)
    assert "does not fit: needs" in p.paths["full"].verdict(1024)


@pytest.mark.parametrize("forced", ["inside", "on_top"])
def test_kept_token_bound_holds_for_real_selections(forced):
    rng = np.random.default_rng(0)
    for _ in range(200):
        S = int(rng.integers(64, 6000))
        span = int(rng.choice([8, 16, 32, 64]))
        keep = float(rng.choice([0.02, 0.05, 0.1, 0.5, 1.0]))
        sel = preset("pflash", span_size=span, keep_ratio=keep, forced_spans=forced).selection
        if S < span:
            continue
        kept = select_tokens(rng.random(S) ** 3, sel)
        bound = kept_tokens_upper_bound(S, sel)
        assert kept.size <= bound, (S, span, keep, forced, kept.size, bound)
        if forced == "inside":  # and it is tight: the budget's spans + the last token
            assert bound - kept.size <= span, (S, span, keep, kept.size, bound)


def test_budget_leaves_the_path_that_does_not_fit(tmp_path):
    """memory_budget_gb between the two paths' needs: full prefill is recorded as not fitting,
    not run, and the job exits 0 with PFlash's results."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    args = ["task.seq_len=2048", "max_new_tokens=2", "repeats=0"]
    probe = subprocess.run([sys.executable, "-m", "pflash_jax.run", *args,
                            f"metrics_dir={tmp_path}/all"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    plan = json.loads((tmp_path / "all" / "metrics.json").read_text())["memory_plan"]
    pflash, full = (plan["paths"][k]["needs_bytes"] for k in ("pflash", "full"))
    assert pflash < full, plan
    budget_gb = (pflash + full) / 2 / GIB
    p = subprocess.run([sys.executable, "-m", "pflash_jax.run", *args,
                        f"memory_budget_gb={budget_gb}", f"metrics_dir={tmp_path}/cut"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["memory_plan"]["paths"]["full"]["fits"] is False
    assert m["memory_plan"]["paths"]["full"]["verdict"].startswith("does not fit: needs")
    case = m["cases"][0]
    assert "full" not in case and "pflash" in case and case["n_kept"] > 0
    assert case["full_skipped"].startswith("does not fit")
    assert "does not fit" in p.stdout


def test_rtx3090_profile_sets_budget_and_code_path():
    from hydra import compose, initialize_config_dir

    from pflash_jax import run_config
    from pflash_jax.run import pflash_config

    run_config.register()

    def composed(*overrides):
        with initialize_config_dir(str(REPO / "pflash_jax" / "configs"), version_base=None):
            return run_config.to_run_config(compose("config", overrides=list(overrides)))

    c = composed("device_profile=rtx3090")
    assert c.memory_budget_gb == 24.0 and c.attention.target == "cudnn"
    assert pflash_config(c).attention_impl == "triton"
    # the preset's dense drafter stays dense; explicit options win over the profile
    assert pflash_config(composed("device_profile=rtx3090", "selection=specprefill")
                         ).attention_impl == "dense"
    c = composed("device_profile=rtx3090", "memory_budget_gb=20", "attention=reference",
                 "attention.target=reference")
    assert (c.memory_budget_gb, c.attention.target) == (20, "reference")
    assert pflash_config(c).attention_impl == "reference"
    with pytest.raises(ValueError, match="device_profile"):
        composed("device_profile=rtx4090")


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_plan_counts_quantized_weights_and_cache(fmt):
    from pflash_jax.memory import tree_bytes
    from pflash_jax.models.quant import quantize_params

    d, t = _cfg(layers=2), _cfg(layers=3, tied=False)
    tp = quantize_params(init_params(t, jax.random.key(0), jnp.bfloat16), fmt)
    dp = init_params(d, jax.random.key(1), jnp.float32)
    pc = preset("pflash", attention_impl="reference", block_size=64)
    kv = "fp8" if fmt == "fp8" else "int8"
    plan = plan_run(d, jnp.float32, t, jnp.bfloat16, 600, pc, max_new_tokens=3, kv_cache=kv,
                    drafter_params=dp, target_params=tp)
    # what the device actually allocates for the weights (int4: packed uint8 pairs)
    on_device = sum(a.addressable_shards[0].data.on_device_size_in_bytes()
                    for a in jax.tree.leaves(tp))
    assert plan.stages["full_prefill"].weights == tree_bytes(tp) == on_device
    assert on_device < weights_bytes(t, jnp.bfloat16)
    ids = jnp.zeros((1, bucket(600)), jnp.int32)
    pos = jnp.arange(bucket(600), dtype=jnp.int32)[None]
    _, cache = prefill_at(tp, t, ids, pos, jnp.int32(600), attn="reference",
                          cache_len=bucket(600) + 2, kv_cache=kv)
    assert plan.stages["full_prefill"].kv_cache == _nbytes(cache) == kv_cache_bytes(
        t, bucket(600) + 2, jnp.bfloat16, kv)


def test_quantized_run_end_to_end(tmp_path):
    """pflash-run with an int8 target and an int8 KV cache: both paths run, metrics say so."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "pflash_jax.run", "task.seq_len=1024",
                        "max_new_tokens=3", "target.quantize=int8", "target.kv_cache=int8",
                        f"metrics_dir={tmp_path}/m"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert (m["models"]["target"]["quantize"], m["models"]["target"]["kv_cache"]) == ("int8",
                                                                                     "int8")
    case = m["cases"][0]
    assert len(case["pflash_tokens"]) >= 1 and len(case["full_tokens"]) >= 1
    assert case["speedup"] > 0
