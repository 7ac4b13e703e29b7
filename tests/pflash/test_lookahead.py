"""SpecPrefill look-ahead scoring (pflash/drafter.py, tail_mode="lookahead") against an unfused
reference written here (docs/design.md 1.2).

The spec, as docs/design.md 1.2 and pflash_jax/pflash/importance.py state it for
tail_mode="lookahead":
- tail queries: the last prompt token (position S-1) and the n_tail - 1 tokens the drafter
  generates greedily after the prompt, fed at positions S, S+1, ...; the last generated token is
  fed too (its query counts), its successor is never needed;
- keys: the S prompt keys of each layer only, so every tail row is a distribution over prompt
  tokens (the generated tokens' own keys are left out of the normalisation);
- q/k post-RoPE ("post") or pre-RoPE after q_norm/k_norm ("nope");
- importance[j] = mean_t max_{l, n} pool(softmax_j(q[l, t, n] . k[l, j, n // G] / sqrt(H))),
  per-row pooling zero-padded at both prompt edges, or after-mean pooling truncated at them.

The reference shares only the model's building blocks (embed, layer_qkv, layer_finish,
final_logits; checked against transformers in tests/models). Everything the look-ahead path
adds is re-done without it: no KV cache (greedy decoding re-runs the whole sequence through
dense causal attention in float64 NumPy), one forward over prompt + generated tokens for the
queries, softmax, pooling and the aggregate in float64 NumPy.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.models import qwen3
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.loading import Model
from pflash_jax.models.params import init_params
from pflash_jax.pflash import drafter as drafter_stage
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.drafter import drafter_pass
from tests.tolerances import TOL, assert_close

VOCAB = 89
Q_NORM_SCALE = 2.5


def random_drafter(seed, layers, heads, kv, head_dim=32, hidden=64):
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=head_dim, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    params = init_params(cfg, jax.random.key(seed), jnp.float32, std=0.2)
    # q_norm fixes the scale of q, so logits q.k / sqrt(H) have std ~1 whatever the init std:
    # nearly flat attention. Scaled q_norm weights make it peaked, as in a trained model.
    layers = dataclasses.replace(params.layers, q_norm=Q_NORM_SCALE * params.layers.q_norm)
    return Model(cfg, dataclasses.replace(params, layers=layers))


def np_causal_attention(q, k, v):
    """float64 dense causal attention, explicit GQA. q [T, N, H], k/v [T, K, H] -> [T, N, H]."""
    T, N, H = q.shape
    G = N // k.shape[1]
    out = np.empty((T, N, H))
    future = np.triu(np.ones((T, T), bool), 1)
    for n in range(N):
        s = q[:, n] @ k[:, n // G].T / np.sqrt(H)
        s = np.where(future, -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, n] = (p / p.sum(-1, keepdims=True)) @ v[:, n // G]
    return out


# The model's building blocks, jitted so the reference compiles once per shape.
_embed = jax.jit(qwen3.embed)
_layer_qkv = jax.jit(qwen3.layer_qkv, static_argnames=("cfg",))
_layer_finish = jax.jit(qwen3.layer_finish, static_argnames=("cfg",))
_final_logits = jax.jit(qwen3.final_logits, static_argnames=("cfg",))


def reference_forward(model, ids, rope):
    """Forward at positions 0..T-1 -> (logits float64 [T, V], scoring q [L, T, N, H],
    scoring k [L, T, K, H]) with float64 attention between the model's building blocks."""
    cfg, params = model.config, model.params
    T = len(ids)
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    x = _embed(params, jnp.asarray(ids, jnp.int32)[None])
    qs, ks = [], []
    for i in range(cfg.num_hidden_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], params.layers)
        qkv = _layer_qkv(layer, x, pos, cfg=cfg)
        q, k = (qkv.q_pre, qkv.k_pre) if rope == "nope" else (qkv.q, qkv.k)
        qs.append(np.asarray(q[0], np.float64))
        ks.append(np.asarray(k[0], np.float64))
        o = np_causal_attention(*(np.asarray(a[0], np.float64) for a in (qkv.q, qkv.k, qkv.v)))
        x = _layer_finish(layer, x, jnp.asarray(o, jnp.float32)[None], cfg=cfg)
    logits = np.asarray(_final_logits(params, cfg=cfg, x=x[0]), np.float64)
    return logits, np.stack(qs), np.stack(ks)


def np_pool(x, width, edges):
    """Centred moving average on the last axis; 'zero': zeros outside, divided by width;
    'truncate': mean of the in-range part of the window."""
    r = width // 2
    S = x.shape[-1]
    out = np.zeros_like(x)
    for j in range(S):
        window = x[..., max(0, j - r):min(S, j + r + 1)]
        out[..., j] = window.sum(-1) / (width if edges == "zero" else window.shape[-1])
    return out


def reference_lookahead(model, ids, scfg):
    """-> (generated tokens [n_tail - 1], importance float64 [S], smallest top-2 logit gap)."""
    S, n_gen = len(ids), scfg.n_tail - 1
    # One length for every step (one compile): slots after the current one hold placeholders
    # that causal attention keeps out of the logits being read.
    seq, gaps = np.concatenate([ids, np.zeros(n_gen, np.int32)]), []
    for i in range(n_gen):  # greedy, no cache: the whole sequence every step
        last = reference_forward(model, seq, scfg.rope)[0][S - 1 + i]
        top2 = np.sort(last)[-2:]
        gaps.append(top2[1] - top2[0])
        seq[S + i] = np.argmax(last)
    _, q, k = reference_forward(model, seq, scfg.rope)
    q_tail, k_prompt = q[:, S - 1:], k[:, :S]  # [L, n_tail, N, H], [L, S, K, H]
    L, T, N, H = q_tail.shape
    G = N // k_prompt.shape[2]
    probs = np.empty((L, N, T, S))
    for layer in range(L):
        for n in range(N):
            s = q_tail[layer, :, n] @ k_prompt[layer, :, n // G].T / np.sqrt(H)  # [T, S]
            e = np.exp(s - s.max(-1, keepdims=True))
            probs[layer, n] = e / e.sum(-1, keepdims=True)
    if scfg.pooling == "per_row":
        probs = np_pool(probs, scfg.pool_width, "zero")
    imp = probs.max(axis=(0, 1)).mean(0)
    if scfg.pooling == "after_mean":
        imp = np_pool(imp, scfg.pool_width, "truncate")
    return seq[S:], imp, min(gaps, default=np.inf)


@pytest.fixture(autouse=True)
def _float32_matmuls():
    # GPUs run float32 matmuls in TF32 by default (PFLASH_TEST_GPU=1 runs this file there too);
    # the float32 tolerance needs full float32 products in both the library and the reference.
    with jax.default_matmul_precision("highest"):
        yield


# seed, (layers, heads, kv heads), S, block size, n_tail, rope, pooling, chunk
CASES = [
    (0, (3, 4, 2), 200, 64, 8, "post", "per_row", None),  # the specprefill preset, G=2
    (1, (2, 8, 2), 300, 128, 8, "post", "after_mean", None),  # G=4
    (2, (2, 4, 2), 200, 64, 8, "nope", "per_row", 64),  # chunked per-token work
    (3, (2, 2, 2), 150, 64, 6, "nope", "after_mean", None),  # G=1
    (4, (2, 4, 1), 129, 128, 2, "post", "per_row", None),  # one generated token, no decode step
    (5, (2, 4, 2), 100, 64, 1, "nope", "per_row", None),  # no look-ahead: the last token only
]


@pytest.mark.parametrize("seed,shape,S,block,n_tail,rope,pooling,chunk", CASES)
def test_lookahead_matches_unfused_reference(monkeypatch, seed, shape, S, block, n_tail, rope,
                                             pooling, chunk):
    assert S % block, "the prompt must not fill its last block (exercises the padding)"
    drafter = random_drafter(seed, *shape)
    ids = np.random.default_rng(seed).integers(1, VOCAB, S).astype(np.int32)
    cfg = preset("specprefill", n_tail=n_tail, rope=rope, pooling=pooling, block_size=block)
    assert cfg.scoring.tail_mode == "lookahead" and cfg.attention_impl == "dense"

    seen = []  # the tokens the library generated: the input of its extend pass

    def spy(params, mcfg, new_ids, *args, **kwargs):
        seen.append(np.asarray(new_ids)[0])
        return extend(params, mcfg, new_ids, *args, **kwargs)

    jits = drafter_stage._extend_scores
    extend = jits.of(drafter.params)
    monkeypatch.setattr(drafter_stage, "_extend_scores", type(jits)(spy, spy))
    got = drafter_pass(drafter, ids, cfg, chunk=chunk)

    tokens, want, gap = reference_lookahead(drafter, ids, cfg.scoring)
    lib_tokens = seen[0] if seen else np.zeros(0, np.int32)
    assert len(seen) == (n_tail > 1), f"extend pass ran {len(seen)} times"
    assert np.array_equal(lib_tokens, tokens), (
        f"generated tokens {lib_tokens.tolist()} != reference {tokens.tolist()} "
        f"(smallest top-2 logit gap of the reference {gap:.2e})")
    assert got.importance.shape == (S,) and got.block_density is None
    what = f"look-ahead importance (seed {seed}, {rope}, {pooling}, n_tail {n_tail})"
    assert_close(got.importance, want, "float32", what=what)
    # The same drafter in tail mode reads the last n_tail prompt tokens instead: identical with
    # no look-ahead (n_tail = 1), far outside the tolerance otherwise, so the check above can
    # tell the generated tokens' rows from prompt rows.
    tail = drafter_pass(drafter, ids, dataclasses.replace(
        cfg, scoring=dataclasses.replace(cfg.scoring, tail_mode="tail")), chunk=chunk)
    gap_to_tail = np.abs(tail.importance - want).max()
    if n_tail == 1:
        assert_close(tail.importance, want, "float32", what=f"{what}: tail mode")
    else:
        limit = 100 * TOL["float32"]["atol"]
        assert gap_to_tail > limit, f"{what}: tail mode within {gap_to_tail:.1e} (< {limit})"
