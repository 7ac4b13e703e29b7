"""The fused q_norm / k_norm + RoPE kernel (models/norm_rope_triton.py) against qwen3.rms_norm
then qwen3.apply_rope on fresh random inputs: in the Pallas interpreter on the CPU, compiled on
the GPU (`gpu` marker), and through layer_qkv / the drafter pass (norm_rope="triton").

Tolerance: one rounding step of the output dtype, elementwise (|diff| <= 2^-mantissa of the
larger magnitude, plus a float32-sized floor). The kernel sums the squares in another order
and, in the interpreter, XLA's default excess precision may skip the bf16 rounding of the
normalised rows before the rotation (the reference rounds them, as the separate XLA fusions of
the real drafter do), so about a third of bf16 outputs differ by that one step; any indexing,
head-offset or table error is many steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.models import qwen3
from pflash_jax.models.norm_rope_triton import norm_rope_triton

ULP = {"float32": 2.0**-23, "bfloat16": 2.0**-8}  # half an epsilon: one rounding step


def assert_one_rounding(got, want, what, inputs=None):
    """|got - want| within one rounding step of the output, plus, where `inputs` (the
    magnitude the value was rotated from) is given, one rounding step of those inputs carried
    through the rotation (a rounded input moves a cancelling f1 c - f2 s by more than an
    output step)."""
    g, w = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    step = 2 * ULP[str(want.dtype)] * np.maximum(np.abs(w), np.abs(g)) + 1e-6
    if inputs is not None:
        step = step + ULP[str(want.dtype)] * np.asarray(inputs, np.float32)
    err = np.abs(g - w)
    bad = err > step
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} values off by more than one "
                           f"rounding step; max abs err {err.max():.3e}, at value "
                           f"{w.flat[np.argmax(err)]:.3e}")


def _inputs(B, T, C, H, dtype, seed):
    ks = jax.random.split(jax.random.key(seed), 3)
    x = (3 * jax.random.normal(ks[0], (B, T, C, H))).astype(dtype)
    w = (1 + 0.2 * jax.random.normal(ks[1], (H,))).astype(dtype)
    # YaRN-like tables: angles of positions up to ~T, a factor != 1 (cos^2 + sin^2 != 1)
    pos = jnp.sort(jax.random.randint(ks[2], (B, T), 0, 4 * T), axis=1).astype(jnp.float32)
    inv = 1.0 / (10000.0 ** (jnp.arange(H // 2) / (H // 2)))
    ang = pos[..., None] * inv
    return x, w, 1.1 * jnp.cos(ang), 1.1 * jnp.sin(ang)


def _check(B, T, C, H, first, n, dtype, seed, interpret):
    x, w, cos, sin = _inputs(B, T, C, H, dtype, seed)
    rope, pre = norm_rope_triton(x, w, cos, sin, first_head=first, n_heads=n, eps=1e-6,
                                 with_pre=True, interpret=interpret)
    pre_ref = qwen3.rms_norm(x[:, :, first:first + n], w, 1e-6)
    rope_ref = qwen3.apply_rope(pre_ref, cos, sin)
    name = jnp.dtype(dtype).name
    assert rope.dtype == rope_ref.dtype and pre.dtype == pre_ref.dtype
    assert_one_rounding(pre, pre_ref, f"pre-RoPE rows, {name}, heads [{first}, {first + n})")
    # a rotated pair's inputs: |f1| + |f2| times the tables' factor (1.1)
    f = np.abs(np.asarray(pre_ref, np.float32))
    pair = 1.1 * np.concatenate([f[..., :H // 2] + f[..., H // 2:]] * 2, axis=-1)
    assert_one_rounding(rope, rope_ref, f"RoPE rows, {name}, heads [{first}, {first + n})",
                        inputs=pair)
    only, none = norm_rope_triton(x, w, cos, sin, first_head=first, n_heads=n, eps=1e-6,
                                  interpret=interpret)
    assert none is None
    np.testing.assert_array_equal(np.asarray(only, np.float32), np.asarray(rope, np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("first,n", [(0, 4), (4, 2)])  # q heads, then k heads after them
def test_kernel_matches_norm_then_rope_interpret(dtype, first, n):
    _check(2, 128, 8, 64, first, n, dtype, seed=first + n, interpret=True)


def test_kernel_rejects_what_it_cannot_take():
    x, w, cos, sin = _inputs(1, 96, 4, 64, jnp.float32, 0)
    with pytest.raises(NotImplementedError, match="multiple of the token tile"):
        norm_rope_triton(x, w, cos, sin, first_head=0, n_heads=2, eps=1e-6, interpret=True)
    x, w, cos, sin = _inputs(1, 64, 4, 64, jnp.float32, 0)
    with pytest.raises(ValueError, match="outside the input"):
        norm_rope_triton(x, w, cos, sin, first_head=3, n_heads=2, eps=1e-6, interpret=True)


def test_layer_qkv_triton_matches_xla():
    """layer_qkv(norm_rope="triton") against "xla" on a random layer: same q/k/v up to one
    rounding, and pre_rows gives q_pre of those rows only, in both implementations."""
    cfg = qwen3.Qwen3Config(vocab_size=64, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=1, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64)
    from pflash_jax.models import init_params

    p = init_params(cfg, jax.random.key(3), jnp.float32)
    layer = jax.tree.map(lambda t: t[0], p.layers)
    T = 128
    x = jax.random.normal(jax.random.key(4), (1, T, cfg.hidden_size))
    rope = qwen3.rope_tables(cfg, jnp.arange(T, dtype=jnp.int32)[None])
    start = jnp.int32(T - 9)
    ref = qwen3.layer_qkv(layer, x, None, cfg, rope=rope)
    for impl in ("xla", "triton"):
        got = qwen3.layer_qkv(layer, x, None, cfg, rope=rope, norm_rope=impl,
                              pre_rows=(start, 8))
        for name in ("k_pre", "q", "k", "v"):
            assert_one_rounding(getattr(got, name), getattr(ref, name), f"{impl} {name}")
        assert got.q_pre.shape == (1, 8, 4, 64)
        assert_one_rounding(got.q_pre, ref.q_pre[:, T - 9:T - 1], f"{impl} q_pre rows")
    with pytest.raises(ValueError, match="fuse_qkv"):
        qwen3.layer_qkv(layer, x, None, cfg, rope=rope, norm_rope="triton", fuse_qkv=False)
    with pytest.raises(ValueError, match="norm_rope="):
        qwen3.layer_qkv(layer, x, None, cfg, rope=rope, norm_rope="cuda")


def test_drafter_scores_same_with_triton_norm_rope():
    """The drafter pass's importance with norm_rope_impl="triton" equals "xla" to float32
    rounding (tiny random drafter, reference attention, 256 tokens, tail mode)."""
    from pflash_jax.models import init_params
    from pflash_jax.models.loading import Model
    from pflash_jax.pflash.config import preset
    from pflash_jax.pflash.drafter import drafter_pass

    cfg = qwen3.Qwen3Config(vocab_size=128, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64)
    m = Model(cfg, init_params(cfg, jax.random.key(5), jnp.float32))
    ids = np.random.default_rng(6).integers(0, 128, 250).astype(np.int32)
    out = {impl: drafter_pass(m, ids, preset("pflash", attention_impl="reference",
                                             norm_rope_impl=impl)).importance
           for impl in ("xla", "triton")}
    err = float(np.max(np.abs(out["triton"] - out["xla"])) / np.max(np.abs(out["xla"])))
    assert err < 1e-4, f"importance with the triton norm+RoPE: relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_norm_then_rope_gpu(dtype):
    """Compiled, at Qwen3-0.6B's head shape: q heads 0-15 and k heads 16-23 of the fused
    projection (32 heads of 128)."""
    _check(1, 1024, 32, 128, 0, 16, dtype, seed=7, interpret=False)
    _check(1, 1024, 32, 128, 16, 8, dtype, seed=8, interpret=False)
