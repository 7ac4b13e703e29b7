"""The pipeline end to end on tiny random models (CPU, reference attention)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.models import qwen3
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.loading import Model
from pflash_jax.models.params import init_params
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.drafter import drafter_scores
from pflash_jax.pflash.importance import importance, importance_unfused
from pflash_jax.pflash.pipeline import (
    bucket,
    check_inputs,
    full_prefill,
    prefill_at,
    speculative_prefill,
)
from tests.tolerances import assert_close

VOCAB = 97


def tiny(seed, layers=2, hidden=64, heads=4, kv=2, head_dim=32, max_pos=4096):
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=head_dim, tie_word_embeddings=True,
                      max_position_embeddings=max_pos)
    # std 0.2: larger than real init so the random model's attention is not uniform
    return Model(cfg, init_params(cfg, jax.random.key(seed), jnp.float32, std=0.2))


@pytest.fixture(scope="module")
def pair():
    return tiny(1, layers=3), tiny(2, layers=2, hidden=96, heads=4, kv=1)


def prompt(S, seed=0):
    return np.random.default_rng(seed).integers(1, VOCAB, S).astype(np.int32)


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_keep_all_equals_full_prefill(pair, name):
    drafter, target = pair
    ids = prompt(300)
    cfg = preset(name, keep_ratio=1.0, positions="original", attention_impl="reference",
                 block_size=64)
    r = speculative_prefill(drafter, target, ids, cfg, max_new_tokens=6)
    f = full_prefill(target, ids, max_new_tokens=6, attn="reference")
    np.testing.assert_array_equal(r.kept_positions, np.arange(300))
    np.testing.assert_array_equal(r.tokens, f.tokens)
    # and the logits themselves: the same prefill on the same tokens and positions
    ids_j = jnp.asarray(ids)[None]
    pos = jnp.arange(300, dtype=jnp.int32)[None]
    a, _ = prefill_at(target.params, target.config, ids_j, pos, jnp.int32(300), attn="reference")
    b = qwen3.forward(target.params, target.config, ids_j, pos, attn="reference")[:, -1]
    assert_close(a, b, "float32", what="keep-all prefill logits vs full forward")


def _unfused(drafter, ids, cfg):
    """Every layer's tail queries and keys from a plain layer-by-layer forward."""
    mcfg, params = drafter.config, drafter.params
    S = ids.shape[0]
    pos = jnp.arange(S, dtype=jnp.int32)[None]
    x = qwen3.embed(params, jnp.asarray(ids)[None])
    q_tails, ks = [], []
    from pflash_jax.attention import block_sparse_attention
    from pflash_jax.attention.selection import select_blocks

    for i in range(mcfg.num_hidden_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], params.layers)
        qkv = qwen3.layer_qkv(layer, x, pos, mcfg)
        qs, kk = (qkv.q_pre, qkv.k_pre) if cfg.scoring.rope == "nope" else (qkv.q, qkv.k)
        q_tails.append(qs[0, S - cfg.scoring.n_tail:])
        ks.append(kk[0])
        mask = select_blocks(qkv.q, qkv.k, alpha=cfg.alpha, block_size=cfg.block_size)
        o = block_sparse_attention(qkv.q, qkv.k, qkv.v, mask, impl="reference",
                                   block_size=cfg.block_size)
        x = qwen3.layer_finish(layer, x, o, mcfg)
    T = cfg.scoring.n_tail
    return importance_unfused(jnp.stack(q_tails), jnp.stack(ks), jnp.arange(S - T, S),
                              jnp.arange(S), cfg.scoring)


@pytest.mark.parametrize("rope,pooling", [("nope", "after_mean"), ("post", "per_row")])
def test_fused_scoring_equals_unfused(pair, rope, pooling):
    drafter, _ = pair
    S = 200  # not a multiple of the block: exercises the padded drafter input
    ids = prompt(S, seed=3)
    cfg = preset("pflash", rope=rope, pooling=pooling, attention_impl="reference", block_size=64)
    Sb = 256
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = ids
    rmax, _ = drafter_scores(drafter.params, drafter.config, jnp.asarray(ids_p)[None],
                             jnp.int32(S), cfg)
    fused = importance(rmax, cfg.scoring, length=jnp.int32(S))[:S]
    ref = _unfused(drafter, ids, cfg)
    assert_close(fused, ref, "float32", what=f"fused vs unfused importance ({rope}, {pooling})")


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_kept_positions_sorted_unique_and_budgeted(pair, name):
    drafter, target = pair
    S = 1000
    cfg = preset(name, keep_ratio=0.1, span_size=16, forced_head_spans=0, forced_tail_spans=0,
                 attention_impl="reference", block_size=64)
    r = speculative_prefill(drafter, target, prompt(S, seed=5), cfg, max_new_tokens=3)
    k = r.kept_positions
    assert np.all(np.diff(k) > 0) and k[0] >= 0 and k[-1] == S - 1
    n_spans = -(-S // 16)
    budget = int(np.ceil(n_spans * 0.1)) if name == "specprefill" else int(n_spans * 0.1)
    assert budget * 16 - 16 <= r.n_kept <= budget * 16 + 1, (r.n_kept, budget)
    assert r.tokens.shape == (3,)
    assert set(r.timings) >= {"drafter_forward", "scoring", "selection", "target_prefill",
                              "first_token", "ttft"}
    assert r.importance.shape == (S,) and np.isfinite(r.importance).all()


def test_bucket():
    assert bucket(1) == 256 and bucket(256) == 256
    for n in (257, 1000, 5000, 7296, 131072, 100_000, 77_777):
        b = bucket(n)
        assert b >= n and b % 128 == 0 and (b - n) < max(128, b // 32), (n, b)
    assert bucket(131072) == 131072 and bucket(7296) == 7296  # 7,296 = 57 x 128


@pytest.mark.parametrize("kw,needle", [
    (dict(ids=prompt(10)), "span"),
    (dict(ids=prompt(5000)), "max_position_embeddings"),
    (dict(ids=np.array([1, 2, VOCAB + 5] * 40, np.int32)), "out of range"),
])
def test_bad_inputs(pair, kw, needle):
    drafter, target = pair
    with pytest.raises(ValueError, match=needle):
        speculative_prefill(drafter, target, kw["ids"], preset("pflash", span_size=32))


def test_vocab_mismatch(pair):
    drafter, _ = pair
    other = tiny(3)
    other = Model(Qwen3Config(**{**other.config.__dict__, "vocab_size": VOCAB + 1}),
                  init_params(Qwen3Config(**{**other.config.__dict__, "vocab_size": VOCAB + 1}),
                              jax.random.key(0), jnp.float32))
    with pytest.raises(ValueError, match="vocabularies differ"):
        speculative_prefill(drafter, other, prompt(300), preset("pflash"))


def test_bad_options():
    with pytest.raises(ValueError, match="keep_ratio"):
        preset("pflash", keep_ratio=1.5)
    with pytest.raises(ValueError, match="span_size"):
        preset("pflash", span_size=0)


def test_auto_attention_picks_kernel_per_device_and_dtype(monkeypatch):
    """"auto": the reference without a GPU; on Hopper the Mosaic kernel for 16-bit inputs only
    (wgmma operands), Triton for float32 there and on every other GPU. Dense attention: Mosaic
    on Hopper for 16-bit prefill shapes, cuDNN on other GPUs, the reference for T != S."""
    from pflash_jax.attention import api
    from pflash_jax.pflash import drafter

    if jax.default_backend() != "gpu":
        assert drafter.resolve_impl("auto", jnp.bfloat16) == "reference"
        assert api.resolve_dense("auto", jnp.bfloat16, 64, 64) == "reference"
        assert api.resolve_mass("auto") == "xla" and api.resolve_mass("auto", True) == "triton"
    monkeypatch.setattr(api.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(api, "is_hopper", lambda: True)
    assert drafter.resolve_impl("auto", jnp.bfloat16) == "mosaic"
    assert drafter.resolve_impl("auto", jnp.float16) == "mosaic"
    assert drafter.resolve_impl("auto", jnp.float32) == "triton"
    assert drafter.resolve_impl("triton", jnp.bfloat16) == "triton"  # explicit choices stay
    assert drafter.resolve_impl("dense", jnp.bfloat16) == "dense"
    assert api.resolve_dense("auto", jnp.bfloat16, 64, 64) == "mosaic"
    assert api.resolve_dense("auto", jnp.float32, 64, 64) == "reference"  # cuDNN: 16-bit only
    assert api.resolve_dense("auto", jnp.float16, 64, 64) == "mosaic"
    assert api.resolve_dense("auto", jnp.bfloat16, 1, 64) == "reference"  # not prefill-shaped
    assert api.resolve_mass("auto") == "triton"
    monkeypatch.setattr(api, "is_hopper", lambda: False)
    assert drafter.resolve_impl("auto", jnp.bfloat16) == "triton"
    assert api.resolve_dense("auto", jnp.bfloat16, 64, 64) == "cudnn"
    assert api.resolve_dense("auto", jnp.float32, 64, 64) == "reference"
    with pytest.raises(NotImplementedError, match="Hopper"):
        api._supports_sparse("mosaic", jnp.bfloat16)


def test_early_exit_scores_equal_a_drafter_cut_to_its_first_layers():
    """scoring.score_layers=k gives the importance of the same drafter truncated to k layers
    (the later layers never run), on fresh random weights and ids; k > L and look-ahead
    mode are refused by name."""
    import dataclasses

    from pflash_jax.pflash.drafter import drafter_pass

    drafter = tiny(3, layers=3)
    cfg = preset("pflash", attention_impl="reference", block_size=64)
    ids = prompt(300, seed=7)
    k = 2
    early = drafter_pass(drafter, ids, dataclasses.replace(
        cfg, scoring=dataclasses.replace(cfg.scoring, score_layers=k)))
    cut = Model(dataclasses.replace(drafter.config, num_hidden_layers=k),
                dataclasses.replace(drafter.params, layers=jax.tree.map(
                    lambda a: a[:k], drafter.params.layers)))
    ref = drafter_pass(cut, ids, cfg)
    err = np.abs(early.importance - ref.importance).max()
    assert err <= 1e-6 * max(np.abs(ref.importance).max(), 1e-30), f"max abs error {err:.3g}"
    assert early.block_density == pytest.approx(ref.block_density)
    full = drafter_pass(drafter, ids, cfg)
    assert not np.allclose(full.importance, early.importance)  # the third layer did count
    with pytest.raises(ValueError, match="score_layers=4 but the drafter has 3 layers"):
        drafter_pass(drafter, ids, dataclasses.replace(
            cfg, scoring=dataclasses.replace(cfg.scoring, score_layers=4)))
    with pytest.raises(ValueError, match="needs tail_mode='tail'"):
        preset("specprefill", score_layers=2)


@pytest.mark.parametrize("positions,chunk", [("renumbered", None), ("renumbered", 64),
                                             ("original", None)])
def test_target_prefill_and_decode_follow_the_positions_mode(pair, positions, chunk):
    """PFlash's tokens are greedy decoding of the kept ids alone at 0..K-1 (renumbered: the
    default) or at their prompt positions (original), decode continuing after the last one;
    chunked per-token work changes nothing. The two modes' references differ here, so a
    pipeline that ignored the mode would fail one of them."""
    from pflash_jax.pflash.spans import target_positions

    drafter, target = pair
    ids = prompt(400, seed=3)
    cfg = preset("pflash", attention_impl="reference", block_size=64, keep_ratio=0.2,
                 positions=positions)
    r = speculative_prefill(drafter, target, ids, cfg, max_new_tokens=6, chunk=chunk)
    kept = r.kept_positions
    assert kept[-1] == 399 and kept.size < 400  # gapped: the modes' positions differ

    def greedy(mode):
        return qwen3.greedy_generate(target, ids[kept], 6, target_positions(kept, mode)[None])

    want = greedy(positions)
    np.testing.assert_array_equal(r.tokens, want)
    other = greedy("original" if positions == "renumbered" else "renumbered")
    assert not np.array_equal(want, other), (want, other)


def test_prefill_kept_is_the_target_stage_of_both_paths(pair):
    """prefill_kept on every position gives full prefill's tokens; on PFlash's selection it
    gives PFlash's; a selection not ending at the last token is refused by name."""
    from pflash_jax.pflash.drafter import drafter_pass
    from pflash_jax.pflash.pipeline import prefill_kept, prefill_selected

    drafter, target = pair
    ids = prompt(400, seed=11)
    cfg = preset("pflash", attention_impl="reference", block_size=64, keep_ratio=0.2)
    full = full_prefill(target, ids, max_new_tokens=4)
    np.testing.assert_array_equal(prefill_kept(target, ids, np.arange(400), max_new_tokens=4),
                                  full.tokens)
    r = prefill_selected(target, ids, drafter_pass(drafter, ids, cfg), cfg, max_new_tokens=4)
    np.testing.assert_array_equal(
        prefill_kept(target, ids, r.kept_positions, cfg.selection.positions, max_new_tokens=4),
        r.tokens)
    with pytest.raises(ValueError, match="end with the last prompt position 399"):
        prefill_kept(target, ids, np.arange(10))


def test_scoring_variants_change_importance_as_documented(pair):
    """skip_layers, tail_weights=linear and pooling=max_after_mean against their definitions
    on fresh random weights: skipping every layer but the last equals scoring from a drafter
    whose fold saw only it; linear weights and max pooling recomputed from the running max."""
    import dataclasses

    from pflash_jax.pflash import importance as imp_mod

    drafter, _ = pair  # 3 layers
    cfg = preset("pflash", attention_impl="reference", block_size=64)
    ids = prompt(320, seed=5)
    Sb = 320
    length = jnp.int32(320)

    def rmax_of(c):
        return drafter_scores(drafter.params, drafter.config, jnp.asarray(ids)[None], length, c)[0]

    def with_(**kw):
        return dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, **kw))

    base = np.asarray(rmax_of(cfg))
    skip2 = np.asarray(rmax_of(with_(skip_layers=2)))
    assert not np.allclose(base, skip2) and np.all(skip2 <= base + 1e-7)  # a max over fewer
    # linear tail weights: sum_t (t + 1) rmax[t] / sum_t (t + 1)
    T = base.shape[0]
    w = np.arange(1, T + 1, dtype=np.float64)
    got = np.asarray(imp_mod.importance(jnp.asarray(base), with_(tail_weights="linear",
                                                                 pooling="per_row").scoring))
    np.testing.assert_allclose(got, (w[:, None] * base).sum(0) / w.sum(), rtol=1e-5)
    # max pooling of the mean: a centred max over pool_width (edges: in-range neighbours)
    got = np.asarray(imp_mod.importance(jnp.asarray(base), with_(pooling="max_after_mean",
                                                                 pool_width=5).scoring))
    m = base.mean(0)
    ref = np.array([m[max(0, i - 2): i + 3].max() for i in range(Sb)])
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="skip_layers=3 leaves no drafter layer"):
        check_inputs(drafter, drafter, ids, with_(skip_layers=3))


def test_fp8_drafter_gets_its_compiler_options_and_the_same_scores(pair):
    """An fp8 drafter's scoring jit carries FP8_COMPILER_OPTIONS (XLA's fp8 GEMM autotuning
    stall, LOG session 18); the options change compilation only, so both jits agree exactly."""
    from pflash_jax.models import quant
    from pflash_jax.pflash import drafter as drafter_mod

    drafter, _ = pair
    assert drafter_mod.scores_jit(drafter.params) is drafter_scores
    qparams = quant.quantize_params(drafter.params, "fp8")
    assert drafter_mod.scores_jit(qparams) is drafter_mod._drafter_scores.fp8
    S, Sb = 200, 256
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = prompt(S, seed=11)
    cfg = preset("pflash", attention_impl="reference", block_size=64)
    args = (qparams, drafter.config, jnp.asarray(ids_p)[None], jnp.int32(S), cfg)
    got, _ = drafter_mod.scores_jit(qparams)(*args)
    ref, _ = drafter_scores(*args)
    err = float(jnp.max(jnp.abs(got - ref)))
    assert err == 0.0, f"fp8 drafter scores differ between the two jits by {err}"


def test_fp8_drafter_lookahead_runs_its_fp8_jits(pair):
    """Look-ahead mode's three drafter jits (prefill, decode, extend) each pick the fp8 twin
    for an fp8 drafter, and the drafter pass agrees exactly with the default-option jits."""
    from pflash_jax.models import quant
    from pflash_jax.pflash import drafter as drafter_mod

    drafter, _ = pair
    qd = dataclasses.replace(drafter, params=quant.quantize_params(drafter.params, "fp8"))
    for jits in (drafter_mod._prefill_keep, drafter_mod._extend_scores, drafter_mod._decode):
        assert jits.of(qd.params) is jits.fp8 and jits.of(drafter.params) is jits.plain
        assert jits.fp8 is not jits.plain
    cfg = preset("pflash", tail_mode="lookahead", n_tail=4, attention_impl="reference",
                 block_size=64)
    ids = prompt(200, seed=12)
    got = drafter_mod.lookahead_running_max(qd, ids, cfg)[0]
    plain = {n: getattr(drafter_mod, n) for n in ("_prefill_keep", "_extend_scores", "_decode")}
    try:  # both members the default-option jit: the reference
        for n, p in plain.items():
            setattr(drafter_mod, n, quant.FormatJits(p.plain, p.plain))
        ref = drafter_mod.lookahead_running_max(qd, ids, cfg)[0]
    finally:
        for n, p in plain.items():
            setattr(drafter_mod, n, p)
    err = float(jnp.max(jnp.abs(got - ref)))
    assert err == 0.0, f"look-ahead fp8 running max differs between the jits by {err}"


def test_qk_fp8_scales_bound_every_q_and_k(pair):
    """attention_qk="fp8": each layer's scales come from its q_norm / k_norm weights (no amax
    pass), and no post-RoPE q or k of any token exceeds e4m3's 448 once divided by them, even
    with large, uneven norm weights; the bound is not vacuous (the range is used)."""
    from pflash_jax.attention.api import FP8_MAX
    from pflash_jax.pflash import drafter as drafter_mod

    drafter, _ = pair
    rng = np.random.default_rng(21)
    layers = drafter.params.layers
    layers = dataclasses.replace(
        layers, q_norm=jnp.asarray(rng.uniform(-6, 6, layers.q_norm.shape), jnp.float32),
        k_norm=jnp.asarray(rng.uniform(-3, 3, layers.k_norm.shape), jnp.float32))
    params = dataclasses.replace(drafter.params, layers=layers)
    scales = np.asarray(drafter_mod.qk_fp8_scales(params, drafter.config))
    assert scales.shape == (drafter.config.num_hidden_layers, 2)
    pos = jnp.arange(256, dtype=jnp.int32)[None]
    x = 5.0 * jnp.asarray(rng.standard_normal((1, 256, drafter.config.hidden_size)), jnp.float32)
    for li in range(drafter.config.num_hidden_layers):
        layer = jax.tree.map(lambda a, i=li: a[i], params.layers)
        qkv = qwen3.layer_qkv(layer, x, pos, drafter.config)
        for t, s, what in ((qkv.q, scales[li, 0], "q"), (qkv.k, scales[li, 1], "k")):
            top = float(jnp.max(jnp.abs(t))) / s
            assert top <= FP8_MAX, f"layer {li} {what}: max |x| / scale = {top:.1f} > 448"
            assert top > FP8_MAX / 16, f"layer {li} {what}: range unused ({top:.1f})"


def _reference_scores(drafter, seed, **options):
    """The drafter's running max (tail mode) on a 300-token prompt padded to 384, the pflash
    preset on the reference impl with 64-token blocks and `options` over it."""
    S, Sb = 300, 384
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = prompt(S, seed=seed)
    cfg = preset("pflash", attention_impl="reference", block_size=64, **options)
    return np.asarray(drafter_scores(drafter.params, drafter.config,
                                     jnp.asarray(ids_p)[None], jnp.int32(S), cfg)[0])


def test_fp8_qk_option_changes_scores_a_little(pair):
    """attention_qk="fp8" reaches the drafter's attention (the scores move: the kernels'
    e4m3 rounding of Q/K, emulated on the reference impl here) and stays an approximation of
    the model-dtype drafter: e4m3 keeps 3 mantissa bits (~6% per element), so the running max
    of a float32 drafter moves by at most 20% of its largest value (measured ~9% here)."""
    out = {qk: _reference_scores(pair[0], 3, attention_qk=qk) for qk in ("model", "fp8")}
    err = float(np.abs(out["fp8"] - out["model"]).max())
    top = float(np.abs(out["model"]).max())
    assert 0.0 < err <= 0.2 * top, f"fp8 Q/K moved the running max by {err:.3e} (max {top:.3e})"
    with pytest.raises(ValueError, match="attention_qk='fp8'.*dense"):
        preset("pflash", attention_impl="dense", attention_qk="fp8")
    with pytest.raises(ValueError, match="attention_qk"):
        preset("pflash", attention_qk="int8")


def test_fp8_pv_option_changes_scores_a_little(pair):
    """attention_pv="fp8" reaches the drafter's attention: V's e4m3 rounding (emulated on the
    reference impl, which keeps P in float32) moves the next layers' q/k and so the scores,
    by at most 20% of the largest, as fp8 Q/K's; without fp8 Q/K it is refused."""
    out = {pv: _reference_scores(pair[0], 4, attention_qk="fp8", attention_pv=pv)
           for pv in ("model", "fp8")}
    err = float(np.abs(out["fp8"] - out["model"]).max())
    top = float(np.abs(out["model"]).max())
    assert 0.0 < err <= 0.2 * top, f"fp8 P @ V moved the running max by {err:.3e} (max {top:.3e})"
    with pytest.raises(ValueError, match="attention_pv='fp8' needs attention_qk='fp8'"):
        preset("pflash", attention_pv="fp8")
    with pytest.raises(ValueError, match="attention_pv"):
        preset("pflash", attention_qk="fp8", attention_pv="fp4")

