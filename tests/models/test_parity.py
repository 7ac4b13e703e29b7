"""Logits parity with transformers' Qwen3ForCausalLM through committed fixtures (float32).

Each fixture case is converted with our converter, loaded with our loader, and compared with
the outputs transformers produced when the fixture was made (scripts/make_fixtures.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pflash_jax
from pflash_jax.models import qwen3
from pflash_jax.models.loading import load_model

from ..tolerances import rel_err
from .conftest import CASES, reference

TOL = 1e-4  # max|a - e| / max|e|


def _check(actual, expected, what):
    err = rel_err(actual, expected)
    assert err <= TOL, f"{what}: relative error {err:.2e} > {TOL:.0e}"


@pytest.mark.parametrize("case", CASES)
def test_full_logits(case, converted):
    ref = reference(case)
    model = pflash_jax.load_model(converted[case])
    out = pflash_jax.logits(model, ref["full_ids"])
    assert out.dtype == jnp.float32 and out.shape == ref["full_logits"].shape
    _check(out, ref["full_logits"], f"{case} full logits")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("chunk", [None, 8])
def test_scattered_prefill_then_decode(case, chunk, converted):
    ref = reference(case)
    m = load_model(converted[case])
    ids, pos = jnp.asarray(ref["pf_ids"])[None], jnp.asarray(ref["pf_pos"])[None]
    all_logits = qwen3.forward_jit(m.params, m.config, ids, pos, chunk=chunk)[0]
    _check(all_logits, ref["pf_logits"], f"{case} scattered-position logits")
    n_dec = len(ref["dec_ids"])
    last, cache = qwen3.prefill_jit(m.params, m.config, ids, pos, chunk=chunk,
                                    cache_len=ids.shape[1] + n_dec)
    _check(last[0], ref["pf_logits"][-1], f"{case} prefill last logits")
    for t, (tok, p) in enumerate(zip(ref["dec_ids"], ref["dec_pos"], strict=True)):
        lg, cache = qwen3.decode_jit(m.params, m.config, jnp.asarray([tok]), jnp.asarray([p]),
                                     cache)
        _check(lg[0], ref["dec_logits"][t], f"{case} decode step {t}")
    assert int(cache.length) == cache.capacity


@pytest.mark.parametrize("case", CASES)
def test_greedy_generation_matches(case, converted):
    ref = reference(case)
    m = load_model(converted[case])
    tokens = qwen3.greedy_generate(m, ref["gen_prompt"], len(ref["gen_tokens"]))
    np.testing.assert_array_equal(tokens, ref["gen_tokens"])


def test_bf16_conversion_close(converted, tmp_path):
    from pflash_jax.convert import convert

    from .conftest import FIXTURES

    case = "gqa2_untied_hd32"
    ref = reference(case)
    m = load_model(convert(FIXTURES / case, tmp_path / "bf16", dtype="bf16"))
    assert m.params.layers.q_proj.dtype == jnp.bfloat16
    assert m.params.layers.q_proj.shape == (2, 64, 4 * 32)  # stacked [L, in, out]
    err = rel_err(pflash_jax.logits(m, ref["full_ids"]), ref["full_logits"])
    assert err < 3e-2, f"bf16 logits relative error {err:.2e}"


def test_tokenizer_wrapper(converted):
    m = load_model(converted["gqa1_tied"])
    assert m.tokenizer is not None and m.tokenizer.eos_token_id == 1
    ids = m.tokenizer.encode("w5 w7 w511")
    np.testing.assert_array_equal(ids, [5, 7, 511])
    assert m.tokenizer.decode(ids) == "w5 w7 w511"
    assert load_model(converted["yarn"]).tokenizer is None


def test_callable_attention_and_building_blocks(converted):
    """A callable attn is used as-is; the public blocks recompose into forward()."""
    m = load_model(converted["gqa2_untied_hd32"])
    cfg, p = m.config, m.params
    ref = reference("gqa2_untied_hd32")
    ids, pos = jnp.asarray(ref["pf_ids"])[None], jnp.asarray(ref["pf_pos"])[None]
    calls = []

    def attn(q, k, v):
        calls.append(q.shape)
        return pflash_jax.attention.dense_attention(q, k, v, impl="xla")

    out = qwen3.forward(p, cfg, ids, pos, attn=attn)
    assert calls, "the callable attention was not used"
    x = qwen3.embed(p, ids)
    for i in range(cfg.num_hidden_layers):
        layer = jax.tree.map(lambda a, i=i: a[i], p.layers)
        qkv = qwen3.layer_qkv(layer, x, pos, cfg)
        assert qkv.q_pre.shape == qkv.q.shape == (1, ids.shape[1], 4, 32)
        o = pflash_jax.attention.dense_attention(qkv.q, qkv.k, qkv.v)
        x = qwen3.layer_finish(layer, x, o, cfg)
    manual = qwen3.final_logits(p, cfg, x)
    _check(manual, out, "building blocks vs forward")
    _check(out[0], ref["pf_logits"], "callable attention")


def test_batch_rows_are_independent(converted):
    """Two prompts in one batch give each row's single-prompt prefill and decode logits."""
    m = load_model(converted["gqa4_sharded"])
    cfg, p = m.config, m.params
    ref = reference("gqa4_sharded")
    ids = jnp.stack([jnp.asarray(ref["pf_ids"]), jnp.asarray(ref["full_ids"][:20])])
    pos = jnp.stack([jnp.asarray(ref["pf_pos"]), jnp.arange(20, dtype=jnp.int32)])
    last, cache = qwen3.prefill_jit(p, cfg, ids, pos, cache_len=21)
    tok = jnp.asarray([7, 9], jnp.int32)
    step, _ = qwen3.decode_jit(p, cfg, tok, pos[:, -1] + 1, cache)
    for b in range(2):
        one, c1 = qwen3.prefill_jit(p, cfg, ids[b:b + 1], pos[b:b + 1], cache_len=21)
        _check(last[b], one[0], f"row {b} prefill")
        s1, _ = qwen3.decode_jit(p, cfg, tok[b:b + 1], pos[b:b + 1, -1] + 1, c1)
        _check(step[b], s1[0], f"row {b} decode")
    _check(last[0], ref["pf_logits"][-1], "batched row 0 vs transformers")
