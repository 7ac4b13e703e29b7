"""Quantized weights and KV cache (models/quant.py; docs/design.md section 8), float32 on CPU.

Element and matmul bounds are derived (each test says from what); model-level bounds are
measured on the random model below (10 seeds, 32 tokens; numbers in MEASURED) and set with
about 2x margin. Random Qwen3 weights are Gaussian, whose per-channel maxima (~3 sigma) set
the scales: int8 rounds each weight by up to amax/254 (~0.6% rms), int4 by up to amax/14 per
group of 128 (~11% rms), fp8 weights and activations by up to 2^-4 relative each.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.convert import convert, main
from pflash_jax.models import quant, qwen3
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.loading import Model, load_model
from pflash_jax.models.params import PROJECTIONS, init_params
from pflash_jax.models.weights import CheckpointError, read_checkpoint, write_safetensors

from ..tolerances import assert_close, rel_err
from .conftest import FIXTURES

# D = 256 and F = 512: int4 has 2 and 4 groups of 128 along the inputs.
CFG = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64)
T = 32
# rel_err (max |a - e| / max |e|, max |e| ~1.2) of the logits: the largest over seeds 0-9 of
# these tests' inputs, CPU, jax 0.11.2 (means: int8 0.017, int4 0.28, fp8 0.090):
MEASURED = {"int8": 0.021, "int4": 0.34, "fp8": 0.124,  # vs the float32 model
            "fp8_activations": 0.071,  # vs float32 on fp8's dequantized weights
            "kv_int8": 0.0095, "kv_fp8": 0.041}  # 8 decode steps vs the unquantized cache
BOUND = {"int8": 0.05, "int4": 0.7, "fp8": 0.25, "fp8_activations": 0.15,
         "kv_int8": 0.02, "kv_fp8": 0.08}
F32_ROUND = 2.0**-24  # float32's half ulp, relative


def _model(seed, dtype=jnp.float32):
    return init_params(CFG, jax.random.key(seed), dtype)


def _ids(seed, n=T):
    return jax.random.randint(jax.random.key(1000 + seed), (1, n), 0, CFG.vocab_size)


def _logits(params, ids):
    return np.asarray(qwen3.forward_jit(params, CFG, ids, jnp.arange(ids.shape[1])[None]))


def _weights(rng, n_in=256, n_out=96):
    """Gaussian weights with a few outliers, one all-zero output column (scale 1, values 0)
    and a few tiny values beside their column's max (fp8 subnormals)."""
    w = rng.standard_normal((n_in, n_out)).astype(np.float32) * 0.02
    w[rng.integers(0, n_in, 5), rng.integers(0, n_out, 5)] *= 30
    w[:, 3] = 0
    w[:8, 4] = 1e-7 * rng.standard_normal(8)
    return w


def _scale_per_element(q: quant.QuantizedWeight, n_in: int) -> np.ndarray:
    s = np.asarray(q.scale, np.float64)
    return np.repeat(s, q.group, axis=-2) if q.format == "int4" else np.broadcast_to(
        s[..., None, :], (*s.shape[:-1], n_in, s.shape[-1]))


# ---------------------------------------------------------------- quantize / dequantize
@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_quantize_dequantize_error(fmt):
    rng = np.random.default_rng(0)
    w = _weights(rng)
    q = quant.quantize_array(w, fmt)
    deq = np.asarray(q.dequantize(jnp.float32), np.float64)
    s = _scale_per_element(q, w.shape[0])
    err = np.abs(deq - w)
    if fmt == "fp8":
        # e4m3: 3 mantissa bits, so a normal value rounds by at most half an ulp, 2^-4 of itself;
        # below 2^-6 (subnormal) the spacing is 2^-9, half of it 2^-10, in units of the scale.
        limit = (2.0**-4 * np.abs(w) + 2.0**-10 * s) * (1 + 4 * F32_ROUND)
        assert np.isfinite(deq).all()
    else:
        # Round to nearest: |w - q s| <= s / 2, plus float32 rounding of w / s and of q s
        # (each at most qmax s 2^-24).
        assert np.abs(_ints(q)).max() <= quant.QMAX[fmt]
        limit = s * (0.5 + 2 * quant.QMAX[fmt] * F32_ROUND)
    bad = err > limit
    assert not bad.any(), (f"{fmt}: {bad.sum()} elements over the bound; max err "
                           f"{err.max():.3e}, max err / bound {(err / limit).max():.4f}")
    assert np.array_equal(deq[:, 3], np.zeros(w.shape[0]))  # the zero column stays zero
    # Each scale is its channel's (group's) max over qmax: the max maps to +-qmax exactly.
    top = np.abs(_ints(q) if fmt != "fp8" else np.asarray(q.values, np.float32)).max()
    assert top == quant.QMAX[fmt]


def _ints(q: quant.QuantizedWeight) -> np.ndarray:
    """The integer values of an int8 / int4 weight (int4 unpacked)."""
    v = np.asarray(q.values)
    return quant.unpack_int4(np, v) if q.format == "int4" else v.astype(np.int8)


def test_int4_layout():
    w = _weights(np.random.default_rng(1), n_in=384, n_out=64)
    q = quant.quantize_array(w[None], "int4")  # stacked [L=1, in, out]
    assert q.values.dtype == np.uint8 and q.values.shape == (1, 384, 32) and q.group == 128
    assert q.shape == (1, 384, 64)
    assert q.scale.shape == (1, 3, 64) and q.scale.dtype == np.float32
    assert quant.quantize_array(w[:64], "int4").group == 64  # fewer inputs than a group
    with pytest.raises(ValueError, match="not a multiple of the group size 128"):
        quant.quantize_array(w[:200], "int4")
    with pytest.raises(ValueError, match="odd"):
        quant.quantize_array(w[:, :63], "int4")
    every = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    for xp in (np, jnp):  # host (loading) and device (random init) pack alike
        packed = np.asarray(quant.pack_int4(xp, every))
        assert packed.dtype == np.uint8 and packed.shape == (2, 4)
        assert packed[0, 0] == 0x9 << 4 | 0x8  # -8 low nibble, -7 high nibble
        np.testing.assert_array_equal(np.asarray(quant.unpack_int4(xp, packed)), every)


def test_int4_device_storage_is_packed():
    """An int4 weight takes half a byte per value on the device: the packed uint8 values."""
    q = quant.to_device(quant.quantize_array(_weights(np.random.default_rng(4)), "int4"))
    n_in, n_out = q.shape
    assert q.values.addressable_shards[0].data.on_device_size_in_bytes() == n_in * n_out // 2


# ---------------------------------------------------------------- matmul
@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_matmul(fmt):
    rng = np.random.default_rng(2)
    w = _weights(rng)
    x = rng.standard_normal((2, 5, w.shape[0])).astype(np.float32)
    x[0, 1] = 0  # an all-zero token (fp8 activation scale 1)
    q = quant.to_device(quant.quantize_array(w, fmt))
    out = np.asarray(jax.jit(quant.matmul)(jnp.asarray(x), q), np.float64)
    assert out.shape == (2, 5, w.shape[1])
    deq = np.asarray(q.dequantize(jnp.float32), np.float64)
    if fmt == "fp8":  # the activations as quantized at the matmul (per token)
        xq, xs = quant.quantize_rows(jnp, jnp.asarray(x), "fp8")
        x_used = np.asarray(xq, np.float64) * np.asarray(xs, np.float64)
    else:
        x_used = x.astype(np.float64)
    # Tight: the same product in float64: float32 accumulation over 256 terms.
    assert_close(out, x_used @ deq, "float32", what=f"{fmt} matmul vs dequantized product")
    # Against the original weights: |x (W - W_q)| <= |x| |W - W_q| elementwise, with the
    # per-element bounds of test_quantize_dequantize_error (fp8: both operands rounded).
    s = _scale_per_element(quant.quantize_array(w, fmt), w.shape[0])
    ax, aw = np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))
    if fmt == "fp8":
        ex = 2.0**-4 * ax + 2.0**-10 * np.abs(np.asarray(xs, np.float64))
        ew = 2.0**-4 * aw + 2.0**-10 * s
        bound = ex @ aw + ax @ ew + ex @ ew
    else:
        bound = ax @ (s / 2)
    bound = bound * (1 + 1e-3) + 1e-6  # float32 accumulation on top of the rounding bound
    err = np.abs(out - x.astype(np.float64) @ w.astype(np.float64))
    assert (err <= bound).all(), (f"{fmt}: max err {err.max():.3e}, max err / bound "
                                  f"{(err / bound).max():.3f}")


def test_matmul_keeps_dtype_and_plain_arrays():
    rng = np.random.default_rng(3)
    w = _weights(rng, 128, 32)
    x = jnp.asarray(rng.standard_normal((3, 128)), jnp.bfloat16)
    for fmt in quant.FORMATS:
        assert quant.matmul(x, quant.to_device(quant.quantize_array(w, fmt))).dtype == x.dtype
    wj = jnp.asarray(w, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(quant.matmul(x, wj)), np.asarray(x @ wj))


# ---------------------------------------------------------------- a quantized Qwen3
def _dequantized(params):
    layers = {n: getattr(params.layers, n).dequantize(jnp.float32) for n in PROJECTIONS}
    return dataclasses.replace(params, layers=dataclasses.replace(params.layers, **layers))


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_logits(fmt, seed):
    p = _model(seed)
    q = quant.quantize_params(p, fmt)
    assert quant.quantized_format(q) == fmt and q.embed_tokens is p.embed_tokens
    ids = _ids(seed)
    ref, out = _logits(p, ids), _logits(q, ids)
    err = rel_err(out, ref)
    assert err <= BOUND[fmt], f"{fmt} seed {seed}: logits rel err {err:.3e} > {BOUND[fmt]}"
    on_deq = _logits(_dequantized(q), ids)
    if fmt == "fp8":  # only the per-token activation rounding differs
        err = rel_err(out, on_deq)
        assert err <= BOUND["fp8_activations"], f"fp8 seed {seed}: vs dequantized {err:.3e}"
    else:  # the same float32 arithmetic: the weight is dequantized, then multiplied
        np.testing.assert_array_equal(out, on_deq)


@pytest.mark.parametrize("fuse_qkv", [True, False, "qk"])
def test_fused_and_unfused_qkv_agree(fuse_qkv):
    q = quant.quantize_params(_model(3), "int4")
    ids, pos = _ids(3), jnp.arange(T)[None]
    a = qwen3.forward_jit(q, CFG, ids, pos, fuse_qkv=fuse_qkv)
    b = qwen3.forward_jit(q, CFG, ids, pos, chunk=8)
    assert_close(a, b, "float32", what=f"int4 fuse_qkv={fuse_qkv} vs chunked")


def test_int8_greedy_tokens_match_where_the_gap_allows():
    """Greedy int8 tokens equal float32's at every step whose top-2 logit gap exceeds twice the
    int8 logit error measured at that step (then no rounding can swap the argmax): the
    quantized prefill + decode path must then follow float32's. Random models are flat
    (errors ~0.02 against gaps from 0.001 up), so seeds are scanned for the first three whose
    4 greedy steps all qualify (seeds 1, 2, 7 on CPU; 16 of 40 qualify)."""
    n_new, found = 4, []
    for seed in range(40):
        p = _model(seed)
        q = quant.quantize_params(p, "int8")
        ids = np.asarray(_ids(seed, 16)[0])
        tokens = qwen3.greedy_generate(Model(CFG, p), ids, n_new)
        full = jnp.asarray(np.concatenate([ids, tokens]))[None]
        ref, out = (_logits(m, full)[0, len(ids) - 1:-1] for m in (p, q))
        top2 = np.sort(ref, axis=-1)[:, -2:]
        if not (top2[:, 1] - top2[:, 0] > 2 * np.abs(out - ref).max(axis=-1)).all():
            continue
        got = qwen3.greedy_generate(Model(CFG, q), ids, n_new)
        np.testing.assert_array_equal(got, tokens, err_msg=f"int8 greedy, seed {seed}")
        found.append(seed)
        if len(found) == 3:
            return
    pytest.fail(f"only seeds {found} of 40 have gaps above the int8 error")


# ---------------------------------------------------------------- KV cache
@pytest.mark.parametrize("kv", ["int8", "fp8"])
@pytest.mark.parametrize("weights", [None, "int8"])
def test_kv_cache_decode(kv, weights):
    seed, n_dec = 4, 8
    p = _model(seed)
    p = p if weights is None else quant.quantize_params(p, weights)
    ids = _ids(seed, T + n_dec)
    pos = jnp.arange(T + n_dec)[None]
    args = (p, CFG, ids[:, :T], pos[:, :T])
    lg0, c0 = qwen3.prefill_jit(*args, cache_len=T + n_dec)
    lg1, c1 = qwen3.prefill_jit(*args, cache_len=T + n_dec, kv_cache=kv)
    # Prefill attention reads the layer's own full-precision K/V: identical logits.
    np.testing.assert_array_equal(np.asarray(lg0), np.asarray(lg1))
    assert c1.format == kv and c0.format == "bf16" and c0.k_scale is None
    errs = []
    for t in range(n_dec):
        a, c0 = qwen3.decode_jit(p, CFG, ids[:, T + t], pos[:, T + t], c0)
        b, c1 = qwen3.decode_jit(p, CFG, ids[:, T + t], pos[:, T + t], c1, kv_cache=kv)
        errs.append(rel_err(b, a))
    assert int(c1.length) == T + n_dec and c1.format == kv
    err = max(errs)
    assert err <= BOUND[f"kv_{kv}"], f"{kv} cache: decode logits rel err {err:.3e} (per step " \
                                     f"{np.round(errs, 4).tolist()})"
    # The prompt's stored K is its full-precision K quantized per token and head, so within
    # the format's rounding: int8 s / 2; e4m3 2^-4 of the value, at most 2^-4 amax = 2^-4 448 s.
    k_deq = np.asarray(quant.dequantize_kv(c1.k, c1.k_scale), np.float64)[:, :, :T]
    k_ref = np.asarray(c0.k, np.float64)[:, :, :T]
    rounding = ((0.5 if kv == "int8" else 2.0**-4 * 448)
                * np.asarray(c1.k_scale, np.float64)[:, :, :T, :, None])
    assert (np.abs(k_deq - k_ref) <= rounding * 1.001 + 1e-7).all()


def test_kv_cache_bytes():
    """A quantized cache is half the bf16 one plus one float32 scale per token and kv head."""
    p = _model(5, jnp.bfloat16)
    ids, pos = _ids(5), jnp.arange(T)[None]
    L, B, S, K, H = CFG.num_hidden_layers, 1, T + 3, CFG.num_key_value_heads, CFG.head_dim
    _, c16 = qwen3.prefill_jit(p, CFG, ids, pos, cache_len=S)
    assert c16.k.dtype == jnp.bfloat16 and c16.k.nbytes == 2 * L * B * S * K * H
    for kv in ("int8", "fp8"):
        _, c = qwen3.prefill_jit(p, CFG, ids, pos, cache_len=S, kv_cache=kv)
        assert c.k.shape == c16.k.shape and c.k_scale.shape == (L, B, S, K)
        total = sum(a.nbytes for a in (c.k, c.v, c.k_scale, c.v_scale))
        assert total == (c16.k.nbytes + c16.v.nbytes) // 2 + 2 * 4 * L * B * S * K


def test_kv_cache_errors():
    p = _model(6)
    ids, pos = _ids(6), jnp.arange(T)[None]
    with pytest.raises(ValueError, match="kv_cache must be one of"):
        qwen3.prefill(p, CFG, ids, pos, kv_cache="int4")
    _, c = qwen3.prefill_jit(p, CFG, ids, pos, cache_len=T + 1, kv_cache="int8")
    with pytest.raises(ValueError, match="the cache is stored as 'int8'"):
        qwen3.decode(p, CFG, ids[:, 0], pos[:, 0], c, kv_cache="bf16")


# ---------------------------------------------------------------- checkpoints
CASE = "gqa2_untied_hd32"


def _same_params(a, b, what):
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert np.array_equal(np.asarray(x), np.asarray(y)), what


@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("case,dtype", [(CASE, "source"), ("gqa1_tied", "source"),
                                        (CASE, "bf16")])
def test_convert_quantized_round_trip(fmt, case, dtype, tmp_path):
    """pflash-convert --quantize == a plain conversion quantized at load, bit for bit."""
    plain = convert(FIXTURES / case, tmp_path / "plain", dtype=dtype)
    out = tmp_path / "q"
    assert main([str(FIXTURES / case), str(out), "--dtype", dtype, "--quantize", fmt]) == 0
    info = json.loads((out / quant.SIDE_FILE).read_text())
    assert info["format"] == fmt
    refs = read_checkpoint(out, [])
    assert refs["layers.q_proj.qvalues"].dtype == quant.DISK_CODES[fmt]
    assert refs["layers.q_proj.scale"].dtype == "F32" and "layers.q_proj" not in refs
    stored = load_model(out)
    assert stored.quantization == fmt
    _same_params(stored.params, load_model(plain, quantize=fmt).params, f"{case} {fmt}")
    _same_params(load_model(out, quantize=fmt).params, stored.params, "quantize=its format")
    # The projections hold 1 byte (int4: half) per weight instead of 4 or 2.
    assert (out / "model.safetensors").stat().st_size < (plain / "model.safetensors").stat().st_size


def _quantized_copy(tmp_path, fmt="int8"):
    return convert(FIXTURES / CASE, tmp_path / f"q_{fmt}", quantize=fmt)


def test_quantized_checkpoint_errors_reported_together(tmp_path):
    d = _quantized_copy(tmp_path)
    refs = read_checkpoint(d, [])
    t = {k: np.array(r.array()) for k, r in refs.items()}
    del t["layers.k_proj.scale"]
    t["layers.q_proj.qvalues"] = t["layers.q_proj.qvalues"].astype(np.float32)
    t["layers.o_proj.scale"] = t["layers.o_proj.scale"][:, :8]
    t["layers.stray"] = np.ones(3, np.float32)
    write_safetensors(d / "model.safetensors", t)
    with pytest.raises(CheckpointError) as e:
        load_model(d, quantize="int4")
    msg = str(e.value)
    f = d / "model.safetensors"
    for want in (f"{d}: stored quantized as int8; it cannot be loaded as int4",
                 f"{d}: missing tensor 'layers.k_proj.scale'",
                 f"{f}: tensor 'layers.q_proj.qvalues' has dtype F32, expected I8",
                 f"{f}: tensor 'layers.o_proj.scale' has shape (2, 8), expected (2, 64)",
                 f"{f}: unexpected tensor 'layers.stray'"):
        assert want in msg, f"{want!r} not in:\n{msg}"


def test_side_file_problems(tmp_path):
    d = _quantized_copy(tmp_path)
    (d / quant.SIDE_FILE).write_text(json.dumps({"version": 1, "format": "int3", "x": 1}))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert "format 'int3' is not one of" in str(e.value) and "unknown key 'x'" in str(e.value)
    (d / quant.SIDE_FILE).unlink()  # quantized tensors, nothing saying how to read them
    with pytest.raises(CheckpointError, match="no quantization.json says how to read them"):
        load_model(d)


def test_cli_quantize_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--quantize {int8,int4,fp8}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_model(tmp_path, quantize="int2")
    with pytest.raises(ValueError, match="quantize must be one of"):
        convert(FIXTURES / CASE, tmp_path / "x", quantize="nf4")


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_random_quantized_init_equals_quantizing_the_random_model(fmt):
    """init_quantized_params (one layer at a time on the device, for models that do not fit in
    bf16) makes the same weights as quantizing init_params' model on the host: dequantized,
    every element within one quantization step of the host's (device and numpy division may
    round the last float32 bit differently, which can move a value across a rounding edge).
    float32: in bf16, XLA's excess precision (bf16 elementwise math kept in float32 inside a
    fusion) rounds `std * normal` differently in the two jits, one bf16 ulp on a few values."""
    host = quant.quantize_params(init_params(CFG, jax.random.key(5), jnp.float32), fmt)
    dev = quant.init_quantized_params(CFG, jax.random.key(5), fmt, jnp.float32)
    for name in PROJECTIONS:
        h, d = getattr(host.layers, name), getattr(dev.layers, name)
        assert (d.format, d.group, d.shape) == (h.format, h.group, h.shape), name
        np.testing.assert_allclose(np.asarray(d.scale), np.asarray(h.scale), rtol=1e-6)
        step = np.asarray(h.scale)
        step = np.repeat(step, h.group, axis=-2) if fmt == "int4" else step[..., None, :]
        diff = np.abs(np.asarray(d.dequantize()) - np.asarray(h.dequantize()))
        # fp8's step is relative (2^-3 of the value at e4m3's 3 mantissa bits), not scale
        bound = (np.abs(np.asarray(h.dequantize())) * 2.0**-3 + 1e-12 if fmt == "fp8"
                 else step * 1.0001)
        assert (diff <= bound).all(), f"{name}: max excess {(diff - bound).max():.3g}"
        dv, hv = ((_ints(d), _ints(h)) if fmt != "fp8" else
                  (np.asarray(d.values, np.float32), np.asarray(h.values, np.float32)))
        moved = (dv != hv).mean()
        assert moved < 1e-3, f"{name}: {moved:.4%} of the values differ"
    for name in ("embed_tokens", "norm", "lm_head"):
        a, b = getattr(host, name), getattr(dev, name)
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    np.testing.assert_array_equal(np.asarray(host.layers.q_norm), np.asarray(dev.layers.q_norm))


def test_row_blocks_divide_the_rows_and_bound_the_block():
    """Random matrices are drawn in blocks of rows: the block count divides the rows, a block
    holds at most RANDOM_BLOCK elements unless one row alone is larger (then a row a block)."""
    from pflash_jax.models.params import RANDOM_BLOCK, row_blocks

    for shape in [(151936, 4096), (4096, 151936), (151936, 1024), (512, 256), (2, 2**26),
                  (7, 3 * RANDOM_BLOCK)]:
        n = row_blocks(shape)
        assert shape[0] % n == 0, shape
        per_block = shape[0] // n * shape[1]
        assert per_block <= RANDOM_BLOCK or n == shape[0], (shape, n)


def test_fuse_qkv_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="fuse_qkv must be True, False or 'qk'"):
        qwen3.forward_jit(_model(3), CFG, _ids(3), jnp.arange(T)[None], fuse_qkv="qkv")


def test_fp8_matmul_bf16_output_is_one_rounding_from_float32_output():
    """bf16 activations: the fp8 GEMM writes bf16 before the rescale (quant.matmul fp8_out
    default). Against writing float32, each output differs by at most the extra bf16
    rounding: half a bf16 ulp of the unscaled sum, i.e. 2^-8 relative, plus the final one."""
    rng = np.random.default_rng(7)
    w = _weights(rng, 256, 96)
    x = jnp.asarray(rng.standard_normal((33, 256)), jnp.bfloat16)
    q = quant.to_device(quant.quantize_array(w, "fp8"))
    got = np.asarray(jax.jit(quant.matmul)(x, q), np.float64)
    ref = np.asarray(quant.matmul(x, q, fp8_out=jnp.float32), np.float64)
    err = np.abs(got - ref)
    bound = 2.0**-7 * np.abs(ref) + 1e-30  # two bf16 roundings (2^-8 relative each)
    rel = (err / (np.abs(ref) + 1e-30)).max()
    assert np.all(err <= bound), f"max err {err.max():.3g}, max err / |ref| {rel:.3g}"
