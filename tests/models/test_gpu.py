"""GPU checks (PFLASH_TEST_GPU=1): cuDNN prefill and decode match the reference attention path,
and chunked prefill matches unchunked prefill, each to the rounding of its dtype.

Nothing here is bitwise, chunking included. On the GPU, XLA compiles the chunked prefill (the
per-token work as a lax.map body over 512- or 1000-row chunks) and the unchunked one (2048 rows)
into different fusions and GEMM kernels, and those sum the hidden- and MLP-long products in
different orders: on an H200 (jax 0.11.2) every logit of the two differs. So bf16 runs are
compared in units of bf16's epsilon (tests/tolerances.py: EPS, assert_rel_close), and the
chunking logic itself is checked tightly in float32 at full matmul precision, where a
difference in summation order alone stays far inside the float32 tolerance.
"""

import jax
import jax.numpy as jnp
import pytest

from pflash_jax.models import Qwen3Config, init_params, qwen3

from ..tolerances import assert_close, assert_rel_close

pytestmark = pytest.mark.gpu

# Qwen3-0.6B attention shapes (16/8 heads, H=128), 2 layers, small vocab.
CFG = Qwen3Config(vocab_size=4096, hidden_size=1024, intermediate_size=3072,
                  num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=8)
T = 2048

# Two bf16 runs that round their intermediates (hidden states, q/k/v, MLP activations, all bf16)
# at different places: each stored value may differ by an ulp, and two layers' residual stream
# and the final norm carry that into the outputs. Measured on an H200 (jax 0.11.2), as a share of
# the largest |value|: cuDNN vs reference 1.0 eps (logits) / 0.9 (cache v); chunked vs
# unchunked 1.2 / 1.4 (cache k) / 1.2 (cache v); decode after a cuDNN prefill 1.3. Allowed: 3.
BF16_ULPS = 3


def _inputs():
    ids = jax.random.randint(jax.random.key(1), (1, T), 0, CFG.vocab_size)
    # Gapped increasing positions, as the target prefill of kept spans uses them.
    pos = jnp.cumsum(jax.random.randint(jax.random.key(2), (1, T), 1, 4), axis=1)
    return ids, pos


def test_cudnn_prefill_matches_reference():
    p = init_params(CFG, jax.random.key(0), jnp.bfloat16)  # cuDNN attention: bf16/fp16 only
    ids, pos = _inputs()
    ref, cache_r = qwen3.prefill_jit(p, CFG, ids, pos, attn="reference")
    out, cache_c = qwen3.prefill_jit(p, CFG, ids, pos, attn="cudnn")
    assert_rel_close(out, ref, "bfloat16", BF16_ULPS, what="cudnn vs reference logits")
    assert_rel_close(cache_c.v, cache_r.v, "bfloat16", BF16_ULPS,
                     what="cudnn vs reference cache v")


@pytest.mark.parametrize("chunk", [512, 1000])  # 1000: the last chunk is padded
def test_chunked_cudnn_prefill_matches_unchunked_to_bf16_rounding(chunk):
    p = init_params(CFG, jax.random.key(0), jnp.bfloat16)
    ids, pos = _inputs()
    out, cache = qwen3.prefill_jit(p, CFG, ids, pos, attn="cudnn")
    chunked, cache_k = qwen3.prefill_jit(p, CFG, ids, pos, attn="cudnn", chunk=chunk)
    for what, a, b in [("logits", chunked, out), ("cache k", cache_k.k, cache.k),
                       ("cache v", cache_k.v, cache.v)]:
        assert_rel_close(a, b, "bfloat16", BF16_ULPS, what=f"chunk={chunk} vs unchunked {what}")


@pytest.mark.parametrize("chunk", [512, 1000])
def test_chunked_prefill_matches_unchunked_float32(chunk):
    """float32 at "highest" matmul precision (the GPU default for float32 is TF32, whose 10-bit
    inputs would hide a small chunking error): only the summation order differs, so the outputs
    agree to float32's own tolerance (measured on an H200: 2e-6 of the largest value, 1e-5
    absolute at most). Any slicing, padding or RoPE-table error is far larger."""
    ids, pos = _inputs()
    with jax.default_matmul_precision("highest"):
        p = init_params(CFG, jax.random.key(0), jnp.float32)
        out, cache = qwen3.prefill_jit(p, CFG, ids, pos, attn="reference")
        chunked, cache_k = qwen3.prefill_jit(p, CFG, ids, pos, attn="reference", chunk=chunk)
    for what, a, b in [("logits", chunked, out), ("cache k", cache_k.k, cache.k),
                       ("cache v", cache_k.v, cache.v)]:
        assert_close(a, b, "float32", what=f"float32 chunk={chunk} vs unchunked {what}")


def test_decode_after_cudnn_prefill():
    p = init_params(CFG, jax.random.key(3), jnp.bfloat16)  # cuDNN attention: bf16/fp16 only
    n = 256
    ids = jax.random.randint(jax.random.key(4), (1, n + 1), 0, CFG.vocab_size)
    pos = jnp.arange(n + 1)[None]
    full = qwen3.forward_jit(p, CFG, ids, pos, attn="reference")
    _, cache = qwen3.prefill_jit(p, CFG, ids[:, :n], pos[:, :n], attn="cudnn", cache_len=n + 1)
    lg, _ = qwen3.decode_jit(p, CFG, ids[:, n], pos[:, n], cache)
    assert_rel_close(lg, full[:, n], "bfloat16", BF16_ULPS,
                     what="decode after cudnn prefill vs full forward")
