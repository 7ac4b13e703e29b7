"""GPU checks (PFLASH_TEST_GPU=1): cuDNN prefill equals the reference path; chunking is exact."""

import jax
import jax.numpy as jnp
import pytest

from pflash_jax.models import Qwen3Config, init_params, qwen3

from ..tolerances import rel_err

pytestmark = pytest.mark.gpu

# Qwen3-0.6B attention shapes (16/8 heads, H=128), 2 layers, small vocab.
CFG = Qwen3Config(vocab_size=4096, hidden_size=1024, intermediate_size=3072,
                  num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=8)


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_cudnn_prefill_matches_reference(dtype):
    p = init_params(CFG, jax.random.key(0), dtype)
    T = 2048
    ids = jax.random.randint(jax.random.key(1), (1, T), 0, CFG.vocab_size)
    # Gapped increasing positions, as the target prefill of kept spans uses them.
    pos = jnp.cumsum(jax.random.randint(jax.random.key(2), (1, T), 1, 4), axis=1)
    ref, cache_r = qwen3.prefill_jit(p, CFG, ids, pos, attn="reference")
    out, cache_c = qwen3.prefill_jit(p, CFG, ids, pos, attn="cudnn")
    chunked, cache_k = qwen3.prefill_jit(p, CFG, ids, pos, attn="cudnn", chunk=512)
    errs = {"cudnn vs reference logits": rel_err(out, ref),
            "cudnn vs reference cache v": rel_err(cache_c.v, cache_r.v),
            "chunked vs unchunked logits": rel_err(chunked, out),
            "chunked vs unchunked cache k": rel_err(cache_k.k, cache_c.k)}
    limits = [3e-2, 3e-2, 3e-2, 3e-2]  # bf16: GEMM tiling changes rounding
    assert all(e < lim for e, lim in zip(errs.values(), limits, strict=True)), errs


def test_decode_after_cudnn_prefill():
    p = init_params(CFG, jax.random.key(3), jnp.bfloat16)  # cuDNN attention: bf16/fp16 only
    T = 256
    ids = jax.random.randint(jax.random.key(4), (1, T + 1), 0, CFG.vocab_size)
    pos = jnp.arange(T + 1)[None]
    full = qwen3.forward_jit(p, CFG, ids, pos, attn="reference")
    _, cache = qwen3.prefill_jit(p, CFG, ids[:, :T], pos[:, :T], attn="cudnn", cache_len=T + 1)
    lg, _ = qwen3.decode_jit(p, CFG, ids[:, T], pos[:, T], cache)
    assert rel_err(lg, full[:, T]) < 3e-2, rel_err(lg, full[:, T])
