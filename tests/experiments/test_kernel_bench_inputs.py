"""kernel_bench inputs=drafter: the q, k, v a random-init drafter layer hands the kernel, taken
through the layer scan's hook, equal the layer computed on its own (qwen3.layer_forward)."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("kernel_bench",
                                                  REPO / "experiments/kernel_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg(**kw):
    base = {"inputs": "drafter", "inputs_model": "qwen3-0.6b", "inputs_layer": 0,
            "num_heads": 16, "num_kv_heads": 8, "head_dim": 128, "batch": 1,
            "dtype": "float32", "inputs_vocab": 512}  # a small embedding: CPU time
    return OmegaConf.create({**base, **kw})


def test_drafter_inputs_are_the_layers_qkv():
    import dataclasses

    from pflash_jax.models import qwen3
    from pflash_jax.models.config import model_preset
    from pflash_jax.models.params import init_params

    S = 96
    q, k, v = _bench().inputs(S, _cfg())
    assert q.shape == (1, S, 16, 128) and k.shape == v.shape == (1, S, 8, 128)
    mcfg = dataclasses.replace(model_preset("qwen3-0.6b").with_yarn(), num_hidden_layers=1,
                               vocab_size=512)
    params = init_params(mcfg, jax.random.key(1), jnp.float32)
    ids = jax.random.randint(jax.random.key(S), (1, S), 0, mcfg.vocab_size)
    layer = jax.tree.map(lambda t: t[0], params.layers)
    _, k_ref, v_ref = qwen3.layer_forward(layer, qwen3.embed(params, ids),
                                          jnp.arange(S, dtype=jnp.int32)[None], mcfg)
    for name, got, want in (("k", k, k_ref), ("v", v, v_ref)):
        err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
        assert err < 1e-5, f"{name}: relative error {err:.2e} against layer_forward"
    assert np.isfinite(np.asarray(q)).all()


def test_drafter_inputs_refuse_other_head_shapes():
    with pytest.raises(ValueError, match="num_heads"):
        _bench().inputs(64, _cfg(num_heads=32))


def test_rotated_lists_keep_the_blocks_and_the_output():
    """mask_probe's rotated lists: each row keeps the same blocks, the diagonal still last, and
    the Triton kernel (interpret mode) computes the same attention from them."""
    from pflash_jax.attention import select_blocks_fixed_density
    from pflash_jax.attention import triton as tr

    bench = _bench()
    S, N, K, H, b = 512, 4, 2, 32, 32
    ks = jax.random.split(jax.random.key(5), 3)
    q = jax.random.normal(ks[0], (1, S, N, H))
    k = jax.random.normal(ks[1], (1, S, K, H))
    v = jax.random.normal(ks[2], (1, S, K, H))
    bm = select_blocks_fixed_density(q, k, density=0.4, block_size=b, sink=1, window=1,
                                     last_full=1, impl="xla")
    rot = bench.rotated_lists(bm)
    idx, new, counts = map(np.asarray, (bm.indices, rot.indices, bm.counts))
    assert (new != idx).any(), "no row was rotated: the probe would time the same order"
    for row in np.ndindex(counts.shape):
        c = counts[row]
        assert sorted(new[row][:c]) == sorted(idx[row][:c]), f"row {row}: other blocks"
        assert new[row][c - 1] == idx[row][c - 1], f"row {row}: the diagonal moved"
        assert (new[row][c:] == idx[row][c:]).all(), f"row {row}: padding changed"
    sizes = tr.BlockSizes(block_q=b, block_k=b, num_warps=4, num_stages=1)
    want = tr.block_sparse_attention(q, k, v, bm, block_sizes=sizes, interpret=True)
    got = tr.block_sparse_attention(q, k, v, rot, block_sizes=sizes, interpret=True)
    err = float(jnp.max(jnp.abs(got - want)))
    assert err < 1e-5, f"rotated lists change the output by {err:.2e}"
