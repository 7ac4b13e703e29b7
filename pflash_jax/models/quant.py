"""Quantized weights (int8, int4, fp8) and a quantized KV cache (docs/design.md section 8).

Formats (all symmetric, scales float32; `w ~= values * scale`):
- "int8": weight-only, per output channel: values int8 [in, out] in [-127, 127], scale [out].
- "int4": weight-only, group-wise along the input dim (`INT4_GROUP` = 128, or `in` when
  smaller): values in [-7, 7] (-8 is never produced: symmetric) packed two per byte along the
  output dim, uint8 [in, out / 2] (`pack_int4`: column 2j in the low nibble), on the device as
  on disk; scale [in / group, out]. Why not `jnp.int4` arrays: XLA packs them on the CPU but
  holds one byte per value on the GPU (jax 0.11.2, H200: a Qwen3-32B "int4" target planned
  34.8 GiB of arguments, as much as int8; LOG session 5), so int4 would save no memory on the
  card it is for. The unpacking (two shifts and a sign extension per byte) is elementwise and
  fuses into the dequantize that feeds the GEMM.
- "fp8": W8A8 e4m3 (`float8_e4m3fn`, max 448): weights per output channel as above; the
  activations are quantized per token at the matmul, and the product is one
  `lax.dot_general(fp8, fp8, preferred_element_type=float32)` scaled on its output (XLA's fp8
  GEMM on Hopper; on CPU it runs emulated).
Stacked on L like every layer tensor: values [L, in, out], scale [L, out] or [L, G, out].

Where dequantization happens: `matmul(x, w)` is the one projection call of `qwen3.py` (q/k/v
fused or not, o_proj, gate/up/down). int8/int4 dequantize the weight inside the jitted matmul
(`values * scale` cast to x's dtype, then `x @ w`): the convert and the scale multiply are
elementwise producers of the GEMM operand, which XLA fuses into the GEMM, so the
full-precision weight is never written to memory. Why on the weight, not on the output: int4's
scale varies along the contracted dim, so scaling the output needs one partial product per
group; int8 could scale the output, but one rule for both keeps one code path to measure.
Embeddings, norms and the LM head stay unquantized: on the small models (0.6B-4B) the head is
tied to the embedding table, which is gathered, not multiplied, and the logits are what the
pipeline compares and argmaxes; quantizing the head is a separate choice.

Quantizing is done on the host with numpy, one tensor (and one layer of it) at a time, so a big
model never sits on the device in full precision (`quantize_array`; `loading.load_model(...,
quantize=)` and `pflash-convert --quantize` use it). The same function, given `jnp`, quantizes
per-token activations (fp8) and the KV cache on the device (`quantize_rows`).

KV cache (`KV_CACHE_FORMATS`): "bf16" keeps K/V in the compute dtype (the name of the GPU
case; under float32 compute it is float32); "int8" / "fp8" store each token's K and V per kv
head with a float32 scale [L, B, S, K] (`qwen3.KVCache.k_scale`), quantized as they are stored.
Prefill attention reads its own layer's full-precision K/V; decode dequantizes what it reads.

qwix (google/qwix 0.1.8, read, not used): its `QArray` and `dot_general` cover the same math
(and its dispatch also dequantizes on the input when the other operand is float, for the
fusion reason above), but it depends on flax >= 0.12 (a flax.struct QArray registered with
nnx) and its PTQ entry points quantize Flax modules by interception or jax arrays already on
the device, while this package is functional JAX without flax and must quantize numpy tensors
on the host while loading and store them in its own safetensors layout. Its kernels
(qwix/contrib/kernels) are Pallas TPU. What remains is ~100 lines of scales and one dispatching
matmul. Provisional: no GPU was measured; if XLA does not fuse the dequantize into the GEMM on
Hopper (prefill at 8K vs bf16), a kernel (qwix's or our own Pallas) is the next step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from pflash_jax.models import act_quant
from pflash_jax.models.params import (
    PROJECTIONS,
    Params,
    Placement,
    abstract_params,
    constrain,
    flatten,
    layer_tensor,
    param_shapes,
    put,
    random_tensor,
    shardings_of,
    tensor_keys,
    unflatten,
)
from pflash_jax.models.weights import DTYPES, Lazy

FORMATS = ("int8", "int4", "fp8")
KV_CACHE_FORMATS = ("bf16", "int8", "fp8")
INT4_GROUP = 128
QMAX = {"int8": 127, "int4": 7, "fp8": 448.0}  # 448: float8_e4m3fn's largest finite value
STORAGE = {"int8": np.dtype(np.int8), "int4": np.dtype(np.uint8),  # int4: packed pairs
           "fp8": np.dtype(ml_dtypes.float8_e4m3fn)}
DISK_CODES = {"int8": "I8", "int4": "U8", "fp8": "F8_E4M3"}  # safetensors dtype of .qvalues
SIDE_FILE = "quantization.json"
LAYOUT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """A quantized [..., in, out] weight: `values * scale` (broadcast per format, see above).

    A pytree whose children are values and scale (so lax.scan slices the layer axis and jit
    moves them) and whose format and group are static (part of the jit cache key)."""

    values: jax.Array  # [..., in, out] int8 | float8_e4m3fn; int4: uint8 [..., in, out / 2]
    scale: jax.Array  # float32 [..., out]; int4: [..., in / group, out]
    format: str
    group: int | None = None  # int4 only: inputs per scale

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's [..., in, out] (int4: twice the packed values' last dim)."""
        *lead, last = self.values.shape
        return (*lead, 2 * last if self.format == "int4" else last)

    def dequantize(self, dtype=jnp.float32):
        """The weight [..., in, out] in dtype (values * scale in float32, then one cast)."""
        if self.format != "int4":
            return (self.values.astype(jnp.float32) * self.scale[..., None, :]).astype(dtype)
        v = unpack_int4(jnp, self.values).astype(jnp.float32)
        *lead, n_in, n_out = v.shape
        g = v.reshape(*lead, n_in // self.group, self.group, n_out) * self.scale[..., None, :]
        return g.reshape(*lead, n_in, n_out).astype(dtype)


jax.tree_util.register_dataclass(QuantizedWeight, data_fields=["values", "scale"],
                                 meta_fields=["format", "group"])


def check_format(fmt, allowed=FORMATS, what="quantize") -> None:
    if fmt not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {fmt!r}")


def int4_group(n_in: int, group: int = INT4_GROUP) -> int:
    """The group size of an int4 weight with n_in inputs: `group`, or n_in when smaller."""
    g = min(group, n_in)
    if n_in % g:
        raise ValueError(f"int4: input dim {n_in} is not a multiple of the group size {g}")
    return g


# ---------------------------------------------------------------- the arithmetic
def quantize_rows(xp, x, fmt: str, axis: int = -1):
    """Symmetric quantization over `axis` -> (values, scale float32, axis kept as size 1).

    xp is numpy (host weights) or jax.numpy (activations, KV cache): one rule for both. An
    all-zero row gets scale 1 (values 0) instead of a division by zero. Values are clipped
    before the cast: e4m3fn has no infinity and turns anything past 448 into NaN.
    """
    xf = x.astype(xp.float32)
    amax = xp.max(xp.abs(xf), axis=axis, keepdims=True)
    qmax = QMAX[fmt]
    scale = xp.where(amax > 0, amax / xp.float32(qmax), xp.float32(1)).astype(xp.float32)
    y = xp.clip(xf / scale, -qmax, qmax)
    if fmt == "fp8":
        return y.astype(STORAGE[fmt]), scale
    return xp.round(y).astype(xp.int8), scale  # int4: int8 in [-7, 7], packed by the caller


def _quantize_2d(w: np.ndarray, fmt: str, group: int) -> tuple[np.ndarray, np.ndarray]:
    n_in, n_out = w.shape
    if fmt != "int4":
        q, s = quantize_rows(np, np.asarray(w), fmt, axis=0)
        return q, s[0]
    q, s = quantize_rows(np, np.asarray(w).reshape(n_in // group, group, n_out), fmt, axis=1)
    return pack_int4(np, q.reshape(n_in, n_out)), s[:, 0]


def quantize_array(w, fmt: str, group: int = INT4_GROUP) -> QuantizedWeight:
    """A weight [..., in, out] (numpy or memmap, any float dtype) -> QuantizedWeight of numpy
    arrays, on the host. One [in, out] slice at a time: float32 temporaries stay one layer."""
    check_format(fmt)
    w = np.asarray(w)
    *lead, n_in, n_out = w.shape
    g = int4_group(n_in, group) if fmt == "int4" else None
    scale_shape = (*lead, n_in // g, n_out) if fmt == "int4" else (*lead, n_out)
    if fmt == "int4" and n_out % 2:
        raise ValueError(f"int4: output dim {n_out} is odd (values are packed in pairs)")
    values = np.empty((*lead, n_in, n_out // 2 if fmt == "int4" else n_out), STORAGE[fmt])
    scale = np.empty(scale_shape, np.float32)
    for idx in np.ndindex(*lead):
        values[idx], scale[idx] = _quantize_2d(w[idx], fmt, g)
    return QuantizedWeight(values, scale, fmt, g)


def to_device(w: QuantizedWeight, sharding: QuantizedWeight | None = None) -> QuantizedWeight:
    """A host QuantizedWeight on the default device, or laid out as `sharding` (a
    QuantizedWeight of Shardings, a Placement's) says: values and scale each go from the host
    straight to their shards (params.put)."""
    if sharding is None:
        return jax.tree.map(put, w)
    return jax.tree.map(put, w, sharding)


def abstract_weight(shape: tuple[int, ...], fmt: str, group: int = INT4_GROUP) -> QuantizedWeight:
    """What `quantize_array` makes of a weight of `shape` [..., in, out], as ShapeDtypeStructs
    (no memory): what a Placement is asked about before the weight exists."""
    *lead, n_in, n_out = shape
    f32 = np.dtype(np.float32)
    if fmt != "int4":
        return QuantizedWeight(jax.ShapeDtypeStruct(tuple(shape), STORAGE[fmt]),
                               jax.ShapeDtypeStruct((*lead, n_out), f32), fmt, None)
    g = int4_group(n_in, group)
    return QuantizedWeight(jax.ShapeDtypeStruct((*lead, n_in, n_out // 2), STORAGE[fmt]),
                           jax.ShapeDtypeStruct((*lead, n_in // g, n_out), f32), fmt, g)


def abstract_quantized(cfg, fmt: str, dtype, group: int = INT4_GROUP) -> Params:
    """params.abstract_params with the projections as `abstract_weight`s."""
    flat = flatten(abstract_params(cfg, dtype))
    for name in PROJECTIONS:
        flat[f"layers.{name}"] = abstract_weight(flat[f"layers.{name}"].shape, fmt, group)
    return unflatten(flat)


def matmul(x, w, fp8_out=None):
    """x [..., in] @ w [in, out] -> [..., out] in x's dtype; w a plain array or a
    QuantizedWeight (int8 / int4: dequantized into the GEMM; fp8: W8A8, see the docstring).
    fp8_out: the dtype the fp8 GEMM writes before the scales are applied; None: x's dtype
    (bf16 activations: half the output traffic of float32 at one more bf16 rounding, the GEMM
    still sums in float32; results/fp8_compile_h200 times both)."""
    if not isinstance(w, QuantizedWeight):
        return x @ w
    if w.format != "fp8":
        return x @ w.dequantize(x.dtype)
    if w.values.ndim != 2:
        raise ValueError(f"fp8 matmul takes one layer's weight [in, out], got {w.shape}")
    xq, xs = quantize_rows(jnp, x, "fp8")  # per token: xs [..., 1]
    # (xq * xs) @ (wq * ws) = xs * (xq @ wq) * ws (xs per row, ws per column): the GEMM runs
    # on the fp8 values alone. Written as the dot of the two fp8 tensors converted to bf16,
    # the form XLA's GPU GEMM rewriter turns into one cuBLASLt fp8 GEMM on Hopper
    # (`__cublas$lt$matmul$f8`; bench_quant.py checks the compiled HLO for it). The direct
    # dot_general of float8 operands did not finish compiling there in 140 s (LOG session 5).
    # Exact on any backend: every e4m3 value is a bf16 value, products are summed in float32.
    return _fp8_scaled_gemm(xq, xs, w, x.dtype, fp8_out or x.dtype)


def _fp8_scaled_gemm(xq, xs, w: QuantizedWeight, dtype, acc_dtype):
    """(xq * xs) @ w in dtype: the raw fp8 product written in acc_dtype, then both scales."""
    return (_fp8_gemm(xq, w, acc_dtype).astype(jnp.float32) * xs * w.scale).astype(dtype)


def _fp8_gemm(xq, w: QuantizedWeight, out_dtype):
    """xq [..., in] e4m3 @ w's e4m3 values -> the raw product (no scales) in out_dtype."""
    return jax.lax.dot_general(xq.astype(jnp.bfloat16), w.values.astype(jnp.bfloat16),
                               (((xq.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=out_dtype)


def swiglu(h, gate, up, down):
    """down(silu(h @ gate) * (h @ up)): the Qwen3 MLP. With fp8 weights on an sm_89+ GPU, at
    shapes act_quant takes, the down projection's input comes from act_quant.silu_mul_quant:
    one pass over the gate/up GEMMs' outputs instead of XLA's two (its values are the float32
    product's e4m3 rounding, where the matmul expression rounds to bf16 on the way;
    tests/models/test_act_quant.py bounds both). Otherwise exactly the matmul expression."""
    ws = (gate, up, down)
    R = math.prod(h.shape[:-1])
    fused = (all(isinstance(w, QuantizedWeight) and w.format == "fp8" for w in ws)
             and gate.values.ndim == 2 and act_quant.runs_here()
             and act_quant.supports(R, gate.shape[-1]))
    if not fused:
        return matmul(jax.nn.silu(matmul(h, gate)) * matmul(h, up), down)
    hq, hs = quantize_rows(jnp, h, "fp8")
    F = gate.shape[-1]
    g, u = (_fp8_gemm(hq, w, h.dtype).reshape(R, F) for w in (gate, up))
    aq, a_s = act_quant.silu_mul_quant(g, u, hs.reshape(R, 1), gate.scale, up.scale)
    out = _fp8_scaled_gemm(aq, a_s, down, h.dtype, h.dtype)
    return out.reshape(*h.shape[:-1], down.shape[-1])


# fp8 (W8A8) params compile with XLA's Triton GEMM fusions off. With them on, XLA's GPU
# autotuner times Triton tilings of every fp8 dot against cuBLASLt's fp8 GEMM (which it then
# picks anyway): 8-30 s per GEMM shape at 8K tokens on an H200 and over 150 s for the first
# shape at 128K, while a bf16 GEMM takes < 1 s (results/fp8_compile_h200). An fp8 Qwen3-8B target
# at 128K had not compiled after 420 s at XLA's defaults (LOG, session 21). Other params keep
# XLA's defaults (the bf16 baseline is not touched).
FP8_COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}


@dataclasses.dataclass(frozen=True)
class FormatJits:
    """One function jitted twice: `plain` at XLA's defaults, `fp8` with FP8_COMPILER_OPTIONS;
    `of(params)` is the one that compiles a model with these params. The drafter's and the
    target's jits are all made by `format_jits`."""

    plain: Callable
    fp8: Callable

    def of(self, params: Params) -> Callable:
        return self.fp8 if quantized_format(params) == "fp8" else self.plain


def format_jits(fn, *, plain: Callable | None = None, **jit_kwargs) -> FormatJits:
    """FormatJits of fn under jax.jit(**jit_kwargs); plain: an existing default-option jit of
    fn to share (e.g. qwen3.decode_jit), so its cache is not duplicated."""
    return FormatJits(plain or jax.jit(fn, **jit_kwargs),
                      jax.jit(fn, compiler_options=FP8_COMPILER_OPTIONS, **jit_kwargs))


def concat_out(ws):
    """Weights concatenated along the output axis (the fused [Wq|Wk|Wv]), quantized or not."""
    if not any(isinstance(w, QuantizedWeight) for w in ws):
        return jnp.concatenate(ws, axis=-1)
    kinds = {(w.format, w.group) if isinstance(w, QuantizedWeight) else None for w in ws}
    if len(kinds) != 1 or None in kinds:
        raise TypeError(f"concat_out: cannot fuse weights of different formats {kinds}")
    return QuantizedWeight(jnp.concatenate([w.values for w in ws], axis=-1),
                           jnp.concatenate([w.scale for w in ws], axis=-1),
                           ws[0].format, ws[0].group)


def quantize_params(params: Params, fmt: str, group: int = INT4_GROUP) -> Params:
    """params with every layer projection (PROJECTIONS) quantized, on the host: each tensor is
    copied to numpy, quantized and put back on the default device before the next."""
    check_format(fmt)
    done = {}
    for name in PROJECTIONS:
        w = getattr(params.layers, name)
        if isinstance(w, QuantizedWeight):
            raise ValueError(f"quantize_params: layers.{name} is already quantized "
                             f"({w.format})")
        done[name] = to_device(quantize_array(np.asarray(w), fmt, group))
    return dataclasses.replace(params, layers=dataclasses.replace(params.layers, **done))


def quantize_layer(w, fmt: str, group: int | None):
    """One layer's weight [in, out] quantized on the device (jnp): the same arithmetic as the
    host's `_quantize_2d`, so a weight quantized here equals one quantized while loading."""
    n_in, n_out = w.shape
    if fmt != "int4":
        q, s = quantize_rows(jnp, w, fmt, axis=0)
        return q, s[0]
    q, s = quantize_rows(jnp, w.reshape(n_in // group, group, n_out), fmt, axis=1)
    return pack_int4(jnp, q.reshape(n_in, n_out)), s[:, 0]


@partial(jax.jit, static_argnames=("shape", "fmt", "group", "dtype", "std", "sharding"))
def _random_quantized(key, shape, fmt, group, dtype, std, sharding=None):
    """A stacked [L, in, out] random weight quantized layer by layer (lax.map): only one
    layer's full-precision matrix is ever live on the device (with `sharding`, a
    QuantizedWeight of Shardings: made in that layout, one layer's shard per device)."""
    def one(k):
        return quantize_layer(layer_tensor(k, shape[1:], dtype, std), fmt, group)

    values, scale = jax.lax.map(one, jax.random.split(key, shape[0]))
    return constrain(QuantizedWeight(values, scale, fmt, group), sharding)


@partial(jax.jit, static_argnames=("name", "shape", "dtype", "std", "sharding"))
def _random_plain(name, shape, key, dtype, std, sharding=None):
    return constrain(random_tensor(name, shape, key, dtype, std, sequential=True), sharding)


def init_quantized_params(cfg, key: jax.Array, fmt: str, dtype=jnp.bfloat16, std: float = 0.02,
                          group: int = INT4_GROUP, place: Placement | None = None) -> Params:
    """`params.init_params(cfg, key, dtype, std)` with its projections quantized to `fmt`,
    made on the default device (or where `place` says, each device making its own shards) one
    tensor (and one layer of a projection) at a time: a Qwen3-32B in int4 needs ~20 GB, its
    bf16 init ~65 GB, which a 24 GiB card cannot hold.
    Equal to `quantize_params(init_params(...), fmt)` (tests/models/test_quant.py)."""
    check_format(fmt)
    keys = tensor_keys(cfg, key)
    shardings = shardings_of(place, cfg, abstract_quantized(cfg, fmt, dtype, group))
    flat = {}
    for name, shape in param_shapes(cfg).items():
        if name.split(".")[-1] in PROJECTIONS:
            g = int4_group(shape[1], group) if fmt == "int4" else None
            flat[name] = _random_quantized(keys[name], shape, fmt, g, dtype, std,
                                           shardings.get(name))
        else:
            flat[name] = _random_plain(name, shape, keys[name], dtype, std, shardings.get(name))
    return unflatten(flat)


def quantized_format(params: Params) -> str | None:
    """The format of params' projections, or None when they are plain arrays."""
    w = params.layers.q_proj
    return w.format if isinstance(w, QuantizedWeight) else None


# ---------------------------------------------------------------- KV cache
def quantize_kv(x, fmt: str):
    """K or V [..., K, H] -> (values int8 | e4m3, scale float32 [..., K]) per token and head."""
    q, s = quantize_rows(jnp, x, fmt)
    return q, s[..., 0]


def dequantize_kv(values, scale, dtype=jnp.float32):
    return (values.astype(jnp.float32) * scale[..., None]).astype(dtype)


# ---------------------------------------------------------------- on disk
# A quantized checkpoint stores each projection `layers.NAME` as `layers.NAME.qvalues` and
# `layers.NAME.scale` and says so in quantization.json beside config.json (config.json stays
# the source's: its parser refuses keys it does not know).
def pack_int4(xp, values):
    """Integers in [-8, 7] [..., out] -> uint8 [..., out / 2]: output column 2j in the low
    nibble, 2j+1 in the high one (two's complement nibbles). xp: numpy or jax.numpy."""
    v = xp.asarray(values).astype(xp.int32) & 0xF
    return (v[..., 0::2] | (v[..., 1::2] << 4)).astype(xp.uint8)


def unpack_int4(xp, packed):
    """uint8 [..., out / 2] -> int8 [..., out], the inverse of pack_int4."""
    p = xp.asarray(packed).astype(xp.int32)
    lo, hi = ((p & 0xF) ^ 8) - 8, ((p >> 4) ^ 8) - 8  # sign-extend each nibble
    return xp.stack([lo, hi], axis=-1).reshape(*p.shape[:-1], 2 * p.shape[-1]).astype(xp.int8)


def stored_layout(shapes: dict[str, tuple[int, ...]], fmt: str,
                  group: int = INT4_GROUP) -> dict[str, tuple[tuple[int, ...], str]]:
    """Stored name -> (shape, safetensors dtype code) of the quantized tensors replacing the
    projections of `shapes` (params.param_shapes). Raises ValueError for shapes the format
    cannot store (int4: inputs not a multiple of the group, an odd output dim)."""
    check_format(fmt)
    out = {}
    for proj in PROJECTIONS:
        shape = shapes[f"layers.{proj}"]
        if fmt == "int4" and shape[-1] % 2:
            raise ValueError(f"int4: layers.{proj} has an odd output dim {shape[-1]}")
        w = abstract_weight(shape, fmt, group)
        out[f"layers.{proj}.qvalues"] = (w.values.shape, DISK_CODES[fmt])
        out[f"layers.{proj}.scale"] = (w.scale.shape, "F32")
    return out


def to_disk(w: QuantizedWeight) -> dict[str, np.ndarray]:
    return {"qvalues": np.asarray(w.values), "scale": np.asarray(w.scale)}  # int4: packed


def from_disk(values: np.ndarray, scale: np.ndarray, fmt: str, group: int) -> QuantizedWeight:
    """Host arrays read from a checkpoint -> QuantizedWeight of numpy arrays."""
    if fmt == "int4":
        return QuantizedWeight(np.asarray(values, np.uint8), np.asarray(scale), fmt,
                               int4_group(values.shape[-2], group))
    return QuantizedWeight(np.asarray(values), np.asarray(scale), fmt, None)


def lazy_quantized(tensors: dict[str, Lazy], fmt: str,
                   group: int = INT4_GROUP) -> dict[str, Lazy]:
    """The converter's lazy tensors with each projection replaced by its .qvalues and .scale.

    The two entries share one quantization: writing .qvalues quantizes and keeps the scale
    until .scale, written next, takes it (write_safetensors writes in dict order), so one
    projection is held at a time and none is quantized twice."""
    shapes = {k: t.shape for k, t in tensors.items()}
    layout = stored_layout(shapes, fmt, group)
    out = {}
    for name, t in tensors.items():
        if name.removeprefix("layers.") not in PROJECTIONS:
            out[name] = t
            continue
        pending: dict[str, np.ndarray] = {}

        def values(t=t, pending=pending):
            pending.update(to_disk(quantize_array(t.make(), fmt, group)))
            return pending.pop("qvalues")

        def scale(pending=pending):
            return pending.pop("scale")

        for part, make in (("qvalues", values), ("scale", scale)):
            shape, code = layout[f"{name}.{part}"]
            out[f"{name}.{part}"] = Lazy(shape, np.dtype(DTYPES[code]), make)
    return out


def write_side_file(directory: Path, fmt: str, group: int = INT4_GROUP) -> None:
    info = {"version": LAYOUT_VERSION, "format": fmt,
            "group": group if fmt == "int4" else None,
            "quantized": [f"layers.{p}" for p in PROJECTIONS],
            "int4_packing": "uint8 pairs along the output dim, low nibble first"
            if fmt == "int4" else None}
    (directory / SIDE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_side_file(directory: Path, problems: list[str]) -> tuple[str, int | None] | None:
    """(format, group: int4's, else None) from quantization.json, None when absent; problems
    are appended."""
    path = directory / SIDE_FILE
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{path}: cannot read ({e})")
        return None
    keys = {"version", "format", "group", "quantized", "int4_packing"}
    if not isinstance(info, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    for k in sorted(set(info) - keys):
        problems.append(f"{path}: unknown key {k!r}")
    if info.get("version") != LAYOUT_VERSION:
        problems.append(f"{path}: layout version {info.get('version')!r}, this loader reads "
                        f"{LAYOUT_VERSION}")
    fmt, group = info.get("format"), info.get("group")
    if fmt not in FORMATS:
        problems.append(f"{path}: format {fmt!r} is not one of {list(FORMATS)}")
        return None
    if fmt == "int4" and not (isinstance(group, int) and not isinstance(group, bool)
                              and group > 0):
        problems.append(f"{path}: int4 needs a positive integer group, got {group!r}")
        return None
    expected = [f"layers.{p}" for p in PROJECTIONS]
    if info.get("quantized") != expected:
        problems.append(f"{path}: quantized tensors {info.get('quantized')!r}, expected "
                        f"{expected}")
    return fmt, (group if fmt == "int4" else None)
