"""act_quant.silu_mul_quant (the fp8 MLP's fused down-projection input) against
quantize_rows(act_reference(...)), its float32 definition, on fresh random inputs; and
quant.swiglu's fused path against the float32 MLP, beside the unfused matmul expression.

Tolerances: in interpret mode the kernel body runs the reference's own jax ops, so values and
scales must be equal. Compiled, Triton's exp and division round differently from XLA's, so a
product within a hair of an e4m3 rounding boundary may round the other way: values may differ
by one e4m3 step (2^-3 of the value's binade; 2^-9 among subnormals) on a few percent of the
entries, never more, and the row scales by a few float32 ulps."""

from functools import partial

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
    return quant.quantize_rows(jnp, act_quant.act_reference(g, u, xs, wg, wu), "fp8")


def _check(out, scale, exp, exp_scale, what, exact):
    o = np.asarray(out.astype(jnp.float32))
    e = np.asarray(exp.astype(jnp.float32))
    s, es = np.asarray(scale), np.asarray(exp_scale)
    assert (o[3] == 0).all() and s[3, 0] == 1.0, f"{what}: an all-zero row"
    if exact:
        np.testing.assert_array_equal(s, es, err_msg=f"{what}: row scales")
        np.testing.assert_array_equal(o, e, err_msg=f"{what}: e4m3 values")
        return
    rel = np.abs(s - es) / es
    assert rel.max() <= 1e-6, f"{what}: row scales off by {rel.max():.3g} (relative)"
    step = np.maximum(2.0 ** (np.floor(np.log2(np.maximum(np.abs(e), 2.0 ** -6))) - 3),
                      2.0 ** -9)  # one e4m3 step at |e|
    err = np.abs(o - e)
    assert (err <= step * 1.0001).all(), (
        f"{what}: {int((err > step * 1.0001).sum())} values off by more than one e4m3 step "
        f"(max {err.max():.3g})")
    assert (err > 0).mean() <= 0.05, f"{what}: {(err > 0).mean():.1%} of the values differ"


@pytest.mark.parametrize("R,F,rows", [(16, 3072, 1), (16, 384, 2)])
def test_matches_quantize_rows_interpret(R, F, rows):
    args = _inputs(R + F, R, F)
    out, scale = act_quant.silu_mul_quant(*args, rows=rows, interpret=True)
    assert out.dtype == jnp.float8_e4m3fn and scale.shape == (R, 1)
    _check(out, scale, *_expected(*args), f"interpret [{R}, {F}] rows={rows}", exact=True)


def test_supports_and_refusals():
    assert act_quant.chunk_of(3072) == 1024 and act_quant.chunk_of(384) == 128
    assert act_quant.chunk_of(100) is None and not act_quant.supports(10, 3072, rows=4)
    with pytest.raises(ValueError, match="multiple of 4"):
        act_quant.silu_mul_quant(*_inputs(0, 10, 128), rows=4, interpret=True)
    g, u, xs, wg, wu = _inputs(0, 8, 128)
    with pytest.raises(ValueError, match=r"xs \(8, 2\)"):
        act_quant.silu_mul_quant(g, u, jnp.ones((8, 2)), wg, wu, interpret=True)


def _mlp_case(seed, T=64, D=256, F=1024, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(seed), 4)
    h = jax.random.normal(ks[0], (2, T, D), dtype)
    ws = [jax.tree.map(jnp.asarray, quant.quantize_array(
        np.asarray(0.05 * jax.random.normal(k, s)), "fp8"))
        for k, s in zip(ks[1:], [(D, F), (D, F), (F, D)], strict=True)]
    return h, ws


def _float32_mlp(h, g, u, d):
    h = h.astype(jnp.float32)
    a = jax.nn.silu(h @ g.dequantize()) * (h @ u.dequantize())
    return np.asarray(a @ d.dequantize())


def _unfused(h, g, u, d):
    return quant.matmul(jax.nn.silu(quant.matmul(h, g)) * quant.matmul(h, u), d)


def _errors(got, exp, ref):
    e_got, e_exp = (np.sqrt(np.mean((np.asarray(x, np.float32) - ref) ** 2)) for x in (got, exp))
    return e_got, e_exp


def test_swiglu_off_gpu_is_the_matmul_expression():
    """Where the kernel does not run (no sm_89+ GPU) swiglu is exactly quant.matmul's
    expression, fp8 weights or not."""
    if act_quant.runs_here():
        pytest.skip("the fused path runs on this device (TestFusedGPU)")
    h, ws = _mlp_case(5)
    np.testing.assert_array_equal(np.asarray(quant.swiglu(h, *ws)), np.asarray(_unfused(h, *ws)))


def test_swiglu_fused_path_interpret(monkeypatch):
    """The fused path's wiring (reshapes, the three scales) on the CPU, the kernel in interpret
    mode: as close to the float32 MLP as the unfused expression (both round h and the product
    to e4m3; rms error within 5% of the unfused one's), and nowhere far from it."""
    monkeypatch.setattr(act_quant, "runs_here", lambda: True)
    monkeypatch.setattr(act_quant, "silu_mul_quant",
                        partial(act_quant.silu_mul_quant, interpret=True))
    h, ws = _mlp_case(6, T=8)
    got, exp, ref = quant.swiglu(h, *ws), _unfused(h, *ws), _float32_mlp(h, *ws)
    e_got, e_exp = _errors(got, exp, ref)
    assert e_got <= 1.05 * e_exp, f"fused rms error {e_got:.3g} against unfused {e_exp:.3g}"
    assert np.abs(np.asarray(got) - np.asarray(exp)).max() <= 0.1 * np.abs(ref).max()


@pytest.mark.gpu
class TestFusedGPU:
    @pytest.mark.parametrize("rows,num_warps", [(1, 4), (2, 8), (4, 8)])
    def test_kernel_matches_quantize_rows(self, rows, num_warps):
        args = _inputs(7 + rows, 4096, 3072)
        out, scale = act_quant.silu_mul_quant(*args, rows=rows, num_warps=num_warps)
        _check(out, scale, *jax.jit(_expected)(*args), f"compiled rows={rows}", exact=False)

    def test_swiglu_takes_the_kernel_and_stays_close(self):
        """quant.swiglu with fp8 weights on this GPU runs the kernel (its name is in the
        compiled HLO) and is as close to the float32 MLP as the unfused expression (rms error
        within 5% of the unfused one's; the fused path skips four bf16 roundings)."""
        h, ws = _mlp_case(9, T=2048, D=1024, F=3072, dtype=jnp.bfloat16)
        f = jax.jit(quant.swiglu)
        assert "fp8_silu_mul_quant" in f.lower(h, *ws).compile().as_text()
        got, exp, ref = f(h, *ws), jax.jit(_unfused)(h, *ws), _float32_mlp(h, *ws)
        e_got, e_exp = _errors(got, exp, ref)
        assert e_got <= 1.05 * e_exp, f"fused rms error {e_got:.3g} against unfused {e_exp:.3g}"


def test_env_switch(monkeypatch):
    monkeypatch.setenv(act_quant.ENV, "xla")
    assert not act_quant.runs_here()
    monkeypatch.setenv(act_quant.ENV, "triton")
    with pytest.raises(ValueError, match="PFLASH_ACT_QUANT must be"):
        act_quant.runs_here()
