"""The fused scoring fold (pflash/fold_triton.py) against the XLA reference
jnp.maximum(running_max, importance._head_max(...)): interpreted here, compiled in test_gpu_*."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.pflash import fold_triton, importance
from pflash_jax.pflash.config import ScoringConfig
from pflash_jax.pflash.drafter import PAD_POSITION
from pflash_jax.pflash.fold_triton import fold_max_triton
from pflash_jax.pflash.importance import _head_max, fold_layer, init_running_max, resolve_fold
from tests.triton_lowering import lower_for_cuda, verify_triton_lowering

# Relative tolerance of the fold per input dtype. Both paths accumulate the H-term logit dot in
# float32 (bf16 x bf16 products are exact there), in different orders: the logits differ by a
# few float32 ulps of the dot's |terms|, ~1e-6 absolute for this file's logits (|logit| < 7),
# and exp() turns an absolute logit error into the same relative error of p. The normaliser's
# tile-wise sum adds ~1e-7. Measured in interpret mode: up to 2.7e-6 (CASES); allowed 1e-5.
RTOL = {"float32": 1e-5, "bfloat16": 1e-5}
# Compiled on a GPU the dots (XLA's cuBLAS vs Triton's mma), exp (XLA's vs __nv_expf) and
# division may each round differently again; not measured yet, allowed 10x the interpreter's.
GPU_RTOL = 1e-4
TINY = 1e-30  # below every probability here: no subnormal p


def assert_fold_close(got, want, rtol, what):
    """|got - want| <= rtol |want| everywhere; on failure print max abs and relative error."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    rel = err / np.maximum(np.abs(want), TINY)
    assert np.all(err <= rtol * np.abs(want) + TINY), (
        f"{what}: max abs err {err.max():.3e}, max rel err {rel.max():.3e}, mean abs err "
        f"{err.mean():.3e} (rtol {rtol})")


def make_inputs(seed, T, N, K, H, S, dtype, *, n_pad=0, q_pos=None, shuffle=False, scale=1.5):
    """Fresh random q_tail [T, N, H], k [S, K, H], positions and a nonzero running max.
    n_pad: the last keys are bucket padding (PAD_POSITION); q_pos default: the last T real
    positions; shuffle: key positions a permutation of 0..S-1 (visibility follows positions,
    not indices)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(T, N, H)) * scale, dtype)
    k = jnp.asarray(rng.normal(size=(S, K, H)), dtype)
    real = S - n_pad
    k_pos = rng.permutation(S) if shuffle else np.arange(S)
    k_pos = np.where(k_pos < real, k_pos, PAD_POSITION).astype(np.int32)
    if q_pos is None:
        q_pos = np.arange(real - T, real)
    # Around the typical probability 1 / S: the max with the running max keeps both sides.
    rmax = rng.uniform(0.0, 2.0 / S, size=(T, S)).astype(np.float32)
    return q, k, jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos), jnp.asarray(rmax)


reference = jax.jit(lambda r, q, k, qp, kp: jnp.maximum(r, _head_max(q, k, qp, kp,
                                                                     ScoringConfig())))

# (T, N, K, H, S, dtype, options): G = N // K in {1, 2, 4}; S ragged against the 128-key tile
# or below one tile; T = 1 (look-ahead's first fold), 6 (pad rows), 8, 64 (R = G * Tp up to
# 256 rows: the tile shrinks to 64 keys); padded keys; rows that see 1..T keys; shuffled keys.
CASES = {
    "qwen_g2_ragged_f32": (8, 16, 8, 128, 1000, jnp.float32, dict(n_pad=24)),
    "qwen_g2_bf16": (8, 16, 8, 128, 777, jnp.bfloat16, dict(n_pad=9)),
    "g1_t64_f32": (64, 4, 4, 32, 300, jnp.float32, dict(n_pad=5)),
    "g4_t8_bf16": (8, 8, 2, 64, 513, jnp.bfloat16, dict(n_pad=13)),
    "g4_t64_small_tile": (64, 8, 2, 16, 200, jnp.float32, {}),
    "t6_one_tile": (6, 4, 2, 16, 97, jnp.float32, dict(n_pad=11)),
    "t1_lookahead": (1, 8, 4, 64, 300, jnp.float32, dict(n_pad=44)),
    "few_visible": (8, 4, 2, 32, 640, jnp.float32, dict(q_pos=np.arange(8))),
    "shuffled_positions": (8, 8, 4, 32, 450, jnp.bfloat16, dict(n_pad=50, shuffle=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fused_fold_matches_xla(case):
    T, N, K, H, S, dtype, opts = CASES[case]
    q, k, q_pos, k_pos, rmax = make_inputs(len(case), T, N, K, H, S, dtype, **opts)
    got = fold_max_triton(rmax, q, k, q_pos, k_pos, interpret=True)
    want = reference(rmax, q, k, q_pos, k_pos)
    assert_fold_close(got, want, RTOL[jnp.dtype(dtype).name], case)
    got, want, r = np.asarray(got), np.asarray(want), np.asarray(rmax)
    # Masked keys (padding, later positions) get probability exactly 0: the running max stays.
    hidden = np.asarray(k_pos)[None, :] > np.asarray(q_pos)[:, None]
    assert np.array_equal(got[hidden], r[hidden]), f"{case}: a masked key changed the max"
    assert hidden.any() or case == "shuffled_positions", f"{case}: no masked key"
    # Both sides of the max were exercised (few_visible's rows see <= 8 keys: p always wins).
    won = got > r
    assert won.any(), f"{case}: the running max always won"
    assert (~won & ~hidden).any() or case == "few_visible", f"{case}: p always won"


def test_fused_fold_rows_that_see_one_key():
    """Row 0 of few_visible sees key 0 only: its probability there is exactly 1 in both."""
    T, N, K, H, S, dtype, opts = CASES["few_visible"]
    q, k, q_pos, k_pos, rmax = make_inputs(3, T, N, K, H, S, dtype, **opts)
    got = np.asarray(fold_max_triton(rmax, q, k, q_pos, k_pos, interpret=True))
    assert got[0, 0] == 1.0 and np.array_equal(got[0, 1:], np.asarray(rmax)[0, 1:])


def test_fold_layer_dispatches_to_the_kernel_in_a_scan():
    """fold_layer(fold_impl="triton") inside a jitted layer scan, as the drafter runs it, equals
    the XLA path; after_mean pooling (max_after_mean shares the fold)."""
    L, T, N, K, H, S = 3, 8, 8, 4, 32, 260
    rng = np.random.default_rng(7)
    q = jnp.asarray(rng.normal(size=(L, T, N, H)) * 1.5, jnp.float32)
    k = jnp.asarray(rng.normal(size=(L, S, K, H)), jnp.float32)
    pos = jnp.arange(S, dtype=jnp.int32)
    q_pos = pos[-T:]

    def run(impl):
        cfg = ScoringConfig(n_tail=T, fold_impl=impl)
        assert resolve_fold(cfg, q[0], k[0]) == impl

        @jax.jit
        def scan(q, k):
            def body(acc, qk):
                return fold_layer(acc, qk[0], qk[1], q_pos, pos, cfg), None

            return jax.lax.scan(body, init_running_max(T, S), (q, k))[0]

        return scan(q, k)

    assert_fold_close(run("triton"), run("xla"), RTOL["float32"], "fold_layer scan")


def test_resolve_fold(monkeypatch):
    q = jnp.zeros((8, 16, 128), jnp.bfloat16)
    k = jnp.zeros((64, 8, 128), jnp.bfloat16)
    k8 = jnp.zeros((64, 2, 128), jnp.bfloat16)  # G = 8: supported
    assert resolve_fold(ScoringConfig(), q, k) == "xla"  # the default until measured on a GPU
    auto = ScoringConfig(fold_impl="auto")
    assert resolve_fold(auto, q, k) == "xla"  # no GPU here
    monkeypatch.setattr(importance.jax, "default_backend", lambda: "gpu")
    assert resolve_fold(auto, q, k) == "triton"
    assert resolve_fold(auto, q, k8) == "triton"
    assert resolve_fold(ScoringConfig(pooling="per_row"), q, k) == "xla"
    assert resolve_fold(ScoringConfig(fold_impl="xla"), q, k) == "xla"
    q12 = jnp.zeros((8, 12, 128), jnp.bfloat16)
    k4 = jnp.zeros((64, 4, 128), jnp.bfloat16)  # G = 3: not a power of two
    assert resolve_fold(auto, q12, k4) == "xla"
    with pytest.raises(ValueError, match="fold_impl.*power of two"):
        resolve_fold(ScoringConfig(fold_impl="triton"), q12, k4)
    with pytest.raises(ValueError, match="fold_impl.*head dim"):
        resolve_fold(ScoringConfig(fold_impl="triton"), q[..., :8], k[..., :8])


def test_fold_kernels_lower_for_cuda(monkeypatch):
    """The Triton lowering of both kernels runs here for an abstract H100 and every module it
    builds verifies: lowering errors show up on the CPU, PTX compilation only on a GPU.
    Qwen3-0.6B shapes with a ragged S, and G = 4, T = 64 (the 3D max over a group's heads)."""
    names, mesh = verify_triton_lowering(monkeypatch)
    f = jax.jit(lambda r, q, k, qp, kp: fold_max_triton(r, q, k, qp, kp))
    shapes = [(8, 16, 8, 128, 131072 - 5), (64, 16, 4, 128, 4096)]
    with jax.sharding.use_abstract_mesh(mesh):
        for T, N, K, H, S in shapes:
            args = (jax.ShapeDtypeStruct((T, S), jnp.float32),
                    jax.ShapeDtypeStruct((T, N, H), jnp.bfloat16),
                    jax.ShapeDtypeStruct((S, K, H), jnp.bfloat16),
                    jax.ShapeDtypeStruct((T,), jnp.int32), jax.ShapeDtypeStruct((S,), jnp.int32))
            text = lower_for_cuda(f, *args)
            assert text.count("__gpu$xla.gpu.triton") == 2
    assert names == ["pflash_fold_stats", "pflash_fold_max"] * len(shapes)


def _time_ms(f, *args, reps=20):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


@pytest.mark.gpu
@pytest.mark.parametrize("T", [8, 64])  # the pflash preset's tail rows, pflash_qa's
def test_gpu_fused_fold_matches_xla(T):
    """Compiled kernels against the XLA path at Qwen3-0.6B's scoring shapes and S = 128K, bf16
    (the last 1000 keys bucket padding); prints a rough per-layer timing of both."""
    N, K, H, S = 16, 8, 128, 131072
    q, k, q_pos, k_pos, rmax = make_inputs(21, T, N, K, H, S, jnp.bfloat16, n_pad=1000)
    fused = jax.jit(lambda r, q, k, qp, kp: fold_max_triton(r, q, k, qp, kp))
    got, want = fused(rmax, q, k, q_pos, k_pos), reference(rmax, q, k, q_pos, k_pos)
    assert_fold_close(got, want, GPU_RTOL, "compiled fold vs xla, S=128K")
    hidden = np.asarray(k_pos)[None, :] > np.asarray(q_pos)[:, None]
    assert np.array_equal(np.asarray(got)[hidden], np.asarray(rmax)[hidden])
    args = (rmax, q, k, q_pos, k_pos)
    t_fused, t_xla = _time_ms(fused, *args), _time_ms(reference, *args)
    print(f"\nfold one layer, S={S}, N={N}, K={K}, H={H}, T={T}, bf16 ({jax.devices()[0]}): "
          f"triton {t_fused:.3f} ms, xla {t_xla:.3f} ms, x{t_xla / t_fused:.2f}; tiles "
          f"{fold_triton.FOLD_TILES}")
