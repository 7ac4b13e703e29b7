"""act_quant.silu_mul_quant (the fp8 MLP's fused down-projection input) against quant.py's own
expression, quantize_rows(silu(dequantized g) * dequantized u), on fresh random inputs.

Tolerance: the kernel and XLA compute the sigmoid with different float32 roundings, so a
product that lands within a hair of an e4m3 rounding boundary may round the other way: values
may differ by one e4m3 step (at most 2^-3 of the value, 32 at the top of the range) on a few
percent of the entries (seen: 3.0-4.3%), never more. The row scales (amax / 448) carry the
same effect on the row's largest product, which is rounded to bf16 twice (silu's output, then
the product): within two bf16 steps, 2^-6 relative (seen: up to 0.98%)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.models import act_quant, quant


def _inputs(seed, R, F):
    ks = jax.random.split(jax.random.key(seed), 5)
    g = (30 * jax.random.normal(ks[0], (R, F))).astype(jnp.bfloat16)
    u = (30 * jax.random.normal(ks[1], (R, F))).astype(jnp.bfloat16)
    xs = jax.random.uniform(ks[2], (R, 1), minval=0.01, maxval=0.05)
    wg, wu = (jax.random.uniform(k, (F,), minval=0.001, maxval=0.01) for k in ks[3:])
    g = g.at[3].set(0)  # an all-zero gate row: its product row is 0, scale 1
    return g, u, xs, wg, wu


def _expected(g, u, xs, wg, wu):
    gd = (g.astype(jnp.float32) * xs * wg).astype(jnp.bfloat16)
    ud = (u.astype(jnp.float32) * xs * wu).astype(jnp.bfloat16)
    return quant.quantize_rows(jnp, jax.nn.silu(gd) * ud, "fp8")


def _check(out, scale, exp, exp_scale, what):
    o = np.asarray(out.astype(jnp.float32))
    e = np.asarray(exp.astype(jnp.float32))
    s, es = np.asarray(scale), np.asarray(exp_scale)
    rel = np.abs(s - es) / es
    assert rel.max() <= 2.0 ** -6, f"{what}: row scales off by {rel.max():.3g} (relative)"
    step = np.maximum(2.0 ** (np.floor(np.log2(np.maximum(np.abs(e), 2.0 ** -6))) - 3),
                      2.0 ** -9)  # one e4m3 step at |e| (subnormal step 2^-9)
    err = np.abs(o - e)
    assert (err <= step * 1.0001).all(), (
        f"{what}: {int((err > step * 1.0001).sum())} values off by more than one e4m3 step "
        f"(max {err.max():.3g})")
    assert (err > 0).mean() <= 0.1, f"{what}: {(err > 0).mean():.1%} of the values differ"
    assert (o[3] == 0).all() and s[3, 0] == 1.0, f"{what}: an all-zero row"


@pytest.mark.parametrize("R,F", [(64, 3072), (32, 384)])
def test_matches_quantize_rows_interpret(R, F):
    args = _inputs(R + F, R, F)
    out, scale = act_quant.silu_mul_quant(*args, interpret=True)
    assert out.dtype == jnp.float8_e4m3fn and scale.shape == (R, 1)
    _check(out, scale, *_expected(*args), f"interpret [{R}, {F}]")


def test_supports_and_refusal():
    assert act_quant.supports(16, 3072) and act_quant.chunk_of(3072) == 1024
    assert act_quant.chunk_of(384) == 128 and act_quant.chunk_of(100) is None
    assert not act_quant.supports(10, 3072)
    with pytest.raises(ValueError, match="multiple of 16"):
        act_quant.silu_mul_quant(*_inputs(0, 10, 128), interpret=True)


def test_swiglu_off_gpu_is_the_matmul_expression():
    """Where the kernel does not run (here: no sm_89+ GPU) swiglu is exactly quant.matmul's
    expression, fp8 weights or not."""
    if act_quant.runs_here():
        pytest.skip("the fused path runs on this device (TestFusedGPU)")
    ks = jax.random.split(jax.random.key(5), 4)
    h = jax.random.normal(ks[0], (2, 16, 64), jnp.float32)
    ws = [jax.tree.map(jnp.asarray, quant.quantize_array(
        np.asarray(0.1 * jax.random.normal(k, s)), "fp8"))
        for k, s in zip(ks[1:], [(64, 128), (64, 128), (128, 64)], strict=True)]
    got = quant.swiglu(h, *ws)
    exp = quant.matmul(jax.nn.silu(quant.matmul(h, ws[0])) * quant.matmul(h, ws[1]), ws[2])
    np.testing.assert_array_equal(np.asarray(got), np.asarray(exp))


@pytest.mark.gpu
class TestFusedGPU:
    def test_kernel_matches_quantize_rows(self):
        args = _inputs(7, 4096, 3072)
        out, scale = act_quant.silu_mul_quant(*args)
        _check(out, scale, *jax.jit(_expected)(*args), "compiled [4096, 3072]")

    def test_swiglu_takes_the_kernel_and_stays_close(self):
        """quant.swiglu with fp8 weights on this GPU runs the kernel (its name is in the
        compiled HLO) and stays within the one-step e4m3 flips above of the matmul
        expression: the down projection averages them out (tolerance: 2% of the largest
        output; seen on the CPU-free path only here)."""
        ks = jax.random.split(jax.random.key(9), 4)
        h = jax.random.normal(ks[0], (1, 4096, 1024), jnp.bfloat16)
        ws = [jax.tree.map(jnp.asarray, quant.quantize_array(
            np.asarray(0.05 * jax.random.normal(k, s)), "fp8"))
            for k, s in zip(ks[1:], [(1024, 3072), (1024, 3072), (3072, 1024)], strict=True)]
        f = jax.jit(quant.swiglu)
        assert "fp8_silu_mul_quant" in f.lower(h, *ws).compile().as_text()
        got = np.asarray(f(h, *ws), np.float32)
        exp = np.asarray(jax.jit(lambda h, g, u, d: quant.matmul(
            jax.nn.silu(quant.matmul(h, g)) * quant.matmul(h, u), d))(h, *ws), np.float32)
        err = np.abs(got - exp)
        assert err.max() <= 0.02 * np.abs(exp).max(), (
            f"swiglu fused vs unfused: max {err.max():.3g}, max|out| {np.abs(exp).max():.3g}")
