"""Token importance vs NumPy: tail softmax, moving average edges, fused == unfused, end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.pflash.config import ScoringConfig, preset
from pflash_jax.pflash.importance import (
    fold_layer,
    importance,
    importance_unfused,
    init_running_max,
    moving_average,
    tail_probs,
    trailing_max,
)
from pflash_jax.pflash.spans import select_tokens
from tests.pflash.test_spans import reference_kept
from tests.tolerances import assert_close

# One compile per config instead of op-by-op dispatch (keeps the suite fast on CPU).
unfused = jax.jit(importance_unfused, static_argnames=("cfg",))


def np_tail_probs(q, k, q_pos, k_pos):
    """float64 [N, T, S]: loop over heads, explicit GQA mapping."""
    T, N, H = q.shape
    G = N // k.shape[1]
    out = np.zeros((N, T, k.shape[0]))
    for n in range(N):
        logits = q[:, n, :].astype(np.float64) @ k[:, n // G, :].astype(np.float64).T
        logits /= np.sqrt(H)
        logits = np.where(k_pos[None, :] <= q_pos[:, None], logits, -np.inf)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        out[n] = e / e.sum(axis=-1, keepdims=True)
    return out


def np_moving_average(x, width, edges):
    """Last-axis centred window; 'zero' via np.convolve, 'truncate' by explicit loop."""
    r = width // 2
    S = x.shape[-1]
    if edges == "zero":
        pad = np.concatenate(
            [np.zeros(x.shape[:-1] + (r,)), x, np.zeros(x.shape[:-1] + (r,))], axis=-1
        )
        flat = pad.reshape(-1, S + 2 * r)
        out = np.stack([np.convolve(row, np.ones(width), mode="valid") for row in flat])
        return out.reshape(x.shape) / width
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(S):
        out[..., i] = x[..., max(0, i - r) : min(S, i + r + 1)].mean(axis=-1)
    return out


def np_importance(q_tails, ks, q_pos, k_pos, cfg):
    probs = np.stack([np_tail_probs(q, k, q_pos, k_pos) for q, k in zip(q_tails, ks, strict=True)])
    if cfg.pooling == "per_row" and cfg.pool_width > 1:
        probs = np_moving_average(probs, cfg.pool_width, "zero")
    imp = probs.max(axis=(0, 1)).mean(axis=0)
    if cfg.pooling == "after_mean" and cfg.pool_width > 1:
        imp = np_moving_average(imp, cfg.pool_width, "truncate")
    return imp


def random_layers(rng, L, T, N, K, H, S, scale=3.0):
    """q scaled up so softmax rows are peaked (realistic), not near-uniform."""
    q = rng.standard_normal((L, T, N, H)).astype(np.float32) * scale
    k = rng.standard_normal((L, S, K, H)).astype(np.float32)
    return q, k


@pytest.mark.parametrize("G", [1, 2, 4])
def test_tail_probs_matches_numpy(G):
    rng = np.random.default_rng(G)
    T, K, H, S = 5, 2, 16, 70
    N = K * G
    q, k = random_layers(rng, 1, T, N, K, H, S)
    # Non-contiguous key positions with gaps; tail rows straddle them, so rows see
    # different key prefixes (the first row sees only part of the keys).
    k_pos = np.sort(rng.choice(200, size=S, replace=False)).astype(np.int32)
    q_pos = np.sort(rng.choice(np.arange(k_pos[S // 2], 230), size=T, replace=False))
    q_pos = q_pos.astype(np.int32)
    got = tail_probs(jnp.asarray(q[0]), jnp.asarray(k[0]), jnp.asarray(q_pos), jnp.asarray(k_pos))
    want = np_tail_probs(q[0], k[0], q_pos, k_pos)
    assert got.dtype == jnp.float32 and got.shape == (N, T, S)
    assert_close(got, want, what=f"tail_probs G={G}")
    hidden = k_pos[None, :] > q_pos[:, None]
    assert hidden.any() and np.all(np.asarray(got)[:, hidden] == 0.0)


def test_tail_probs_bf16_inputs_accumulate_in_float32():
    rng = np.random.default_rng(7)
    q, k = random_layers(rng, 1, 4, 4, 2, 32, 64)
    qb, kb = jnp.asarray(q[0], jnp.bfloat16), jnp.asarray(k[0], jnp.bfloat16)
    pos = jnp.arange(64, dtype=jnp.int32)
    got = tail_probs(qb, kb, pos[-4:], pos)
    want = np_tail_probs(
        np.asarray(qb, np.float32), np.asarray(kb, np.float32), np.arange(60, 64), np.arange(64)
    )
    assert got.dtype == jnp.float32
    assert_close(got, want, what="bf16 inputs, f32 softmax")


@pytest.mark.parametrize("edges", ["zero", "truncate"])
@pytest.mark.parametrize("width, S", [(1, 9), (3, 20), (13, 100), (13, 5)])
def test_moving_average_matches_numpy(edges, width, S):
    rng = np.random.default_rng(width * 100 + S)
    x = rng.random((3, S)).astype(np.float32)
    got = moving_average(jnp.asarray(x), width, edges)
    assert_close(got, np_moving_average(x, width, edges), what=f"{edges} w={width} S={S}")


@pytest.mark.parametrize("edges", ["zero", "truncate"])
def test_moving_average_length_ignores_padding(edges):
    rng = np.random.default_rng(11)
    x = rng.random(40).astype(np.float32)
    got = np.asarray(moving_average(jnp.asarray(x), 13, edges, length=29))
    assert_close(got[:29], np_moving_average(x[:29], 13, edges), what="valid part")
    assert np.all(got[29:] == 0.0)


def test_moving_average_bad_args():
    with pytest.raises(ValueError, match="edges"):
        moving_average(jnp.ones(5), 3, "reflect")
    with pytest.raises(ValueError, match="width"):
        moving_average(jnp.ones(5), 4, "zero")


def _fold_all(q, k, q_pos, k_pos, cfg, kv_chunk=None):
    """The drafter's pattern: a jitted scan over layers carrying the running max."""

    @jax.jit
    def run(q, k):
        def body(acc, qk):
            return fold_layer(acc, qk[0], qk[1], q_pos, k_pos, cfg, kv_chunk), None

        acc, _ = jax.lax.scan(body, init_running_max(q.shape[1], k.shape[1]), (q, k))
        return importance(acc, cfg)

    return run(jnp.asarray(q), jnp.asarray(k))


@pytest.mark.parametrize("pooling", ["per_row", "after_mean"])
@pytest.mark.parametrize("kv_chunk", [None, 1])
def test_fused_fold_equals_unfused_reference(pooling, kv_chunk):
    rng = np.random.default_rng([pooling == "per_row", kv_chunk or 0])
    L, T, N, K, H, S = 4, 6, 8, 2, 16, 97
    cfg = ScoringConfig(n_tail=T, pooling=pooling, pool_width=13)
    q, k = random_layers(rng, L, T, N, K, H, S)
    pos = jnp.arange(S, dtype=jnp.int32)
    q_pos = pos[-T:]
    fused = _fold_all(q, k, q_pos, pos, cfg, kv_chunk)
    ref = unfused(jnp.asarray(q), jnp.asarray(k), q_pos, pos, cfg=cfg)
    want = np_importance(q, k, np.arange(S - T, S), np.arange(S), cfg)
    assert_close(fused, ref, what=f"fused vs unfused ({pooling}, kv_chunk={kv_chunk})")
    assert_close(fused, want, what=f"fused vs numpy ({pooling})")


def test_bucket_padding_with_masked_keys_and_length():
    """Pad S=53 keys to 64 with positions past every query: same importance on the real part."""
    rng = np.random.default_rng(5)
    L, T, N, K, H, S, P = 2, 4, 4, 2, 8, 53, 64
    q, k = random_layers(rng, L, T, N, K, H, P)
    k_pos = np.arange(P, dtype=np.int32)
    k_pos[S:] = np.iinfo(np.int32).max
    q_pos = jnp.arange(S - T, S, dtype=jnp.int32)
    for pooling in ["per_row", "after_mean"]:
        cfg = ScoringConfig(n_tail=T, pooling=pooling)
        padded = unfused(
            jnp.asarray(q), jnp.asarray(k), q_pos, jnp.asarray(k_pos), cfg=cfg, length=S
        )
        exact = unfused(
            jnp.asarray(q), jnp.asarray(k[:, :S]), q_pos, jnp.arange(S, dtype=jnp.int32), cfg=cfg
        )
        assert_close(np.asarray(padded)[:S], exact, what=f"padded vs exact ({pooling})")
        assert np.all(np.asarray(padded)[S:] == 0.0)


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_preset_end_to_end_matches_numpy(name):
    """q/k -> importance (pooling edges of the preset) -> kept tokens, against NumPy."""
    rng = np.random.default_rng(17 if name == "pflash" else 71)
    L, T, N, K, H, S = 3, 8, 4, 2, 16, 700
    cfg = preset(name, span_size=8, keep_ratio=0.1)
    if name == "pflash":  # keep the forced spans from covering this short prompt
        cfg = preset(name, span_size=8, keep_ratio=0.1, forced_head_spans=2, forced_tail_spans=3)
    q, k = random_layers(rng, L, T, N, K, H, S)
    pos = jnp.arange(S, dtype=jnp.int32)
    imp = _fold_all(q, k, pos[-T:], pos, cfg.scoring)
    imp_ref = np_importance(q, k, np.arange(S - T, S), np.arange(S), cfg.scoring)
    assert_close(imp, imp_ref, what=f"{name} importance")
    _, tokens_ref = reference_kept(imp_ref, cfg.selection)
    tokens = select_tokens(imp, cfg.selection).tolist()
    assert tokens == tokens_ref, f"{name}: {len(set(tokens) ^ set(tokens_ref))} tokens differ"


@pytest.mark.parametrize("width", [0, 1, 5, 40])
def test_trailing_max_matches_numpy(width):
    S, length = 37, 30
    x = np.random.default_rng(width).random((2, S)).astype(np.float32)
    want = np.zeros_like(x)
    for i in range(length):  # the window [i - width, i], cut at 0; padding (>= length) is 0
        want[:, i] = x[:, max(0, i - width):i + 1].max(axis=1)
    got = np.asarray(trailing_max(jnp.asarray(x), width, length))
    assert np.array_equal(got, want), f"width {width}: max |diff| {np.abs(got - want).max()}"
    with pytest.raises(ValueError, match="trail width"):
        trailing_max(jnp.asarray(x), -1)


def test_trail_width_raises_what_follows_a_peak():
    """importance with trail_width: the tokens after a peak (a needle's key) inherit it, the
    tokens before it do not, and the option is checked by ScoringConfig."""
    rmax = np.zeros((8, 64), np.float32)
    rmax[:, 20] = 1.0
    cfg = ScoringConfig(pool_width=1, trail_width=6)
    imp = np.asarray(importance(jnp.asarray(rmax), cfg))
    assert np.all(imp[20:27] == 1.0) and np.all(imp[:20] == 0.0) and np.all(imp[27:] == 0.0)
    with pytest.raises(ValueError, match="trail_width"):
        ScoringConfig(trail_width=-2)
