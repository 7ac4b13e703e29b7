"""Qwen3 parameters: plain pytrees of frozen dataclasses, layers stacked on a leading L axis.

Names mirror Hugging Face (`q_proj`, `k_norm`, `input_layernorm`) so the weight map reads as the
identity. Kernels are Flax-native [in, out]; stacking on L lets `lax.scan` compile one layer.
Flattened names (`embed_tokens`, `layers.q_proj`, `norm`, `lm_head`) are the keys of the
converted safetensors file. A quantized model holds a `quant.QuantizedWeight` (values + scale)
where a projection's [in, out] array sits (PROJECTIONS; docs/design.md section 8).

No placement decisions here: the caller decides where arrays live, by passing a `Placement`
(e.g. `sharding.Placement`, tensor parallelism) to the loader and the random inits, which then
make each tensor in its final layout (`put` from the host, `constrain` inside a jit) instead of
making it on one device and moving it: a 32B target split over two 24 GB cards never fits one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from pflash_jax.models.config import Qwen3Config


def _pytree(cls):
    """Register a frozen dataclass as a pytree whose fields are all children."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])
    return cls


@_pytree
class LayerParams:
    """One decoder layer; inside `Params.layers` every leaf has an extra leading L axis.
    The seven projections may be `quant.QuantizedWeight`s of the same [in, out] shape."""

    input_layernorm: jax.Array  # [D]
    q_proj: jax.Array  # [D, N*H]
    k_proj: jax.Array  # [D, K*H]
    v_proj: jax.Array  # [D, K*H]
    q_norm: jax.Array  # [H]
    k_norm: jax.Array  # [H]
    o_proj: jax.Array  # [N*H, D]
    post_attention_layernorm: jax.Array  # [D]
    gate_proj: jax.Array  # [D, F]
    up_proj: jax.Array  # [D, F]
    down_proj: jax.Array  # [F, D]


@_pytree
class Params:
    embed_tokens: jax.Array  # [V, D]
    layers: LayerParams  # stacked: [L, ...]
    norm: jax.Array  # [D]
    lm_head: jax.Array | None  # [D, V]; None when tied to embed_tokens


LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerParams))
# The layer matmuls: what quantization replaces (embeddings, norms and the head stay).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm", "norm")


def layer_shapes(cfg: Qwen3Config) -> dict[str, tuple[int, ...]]:
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    NH, KH = cfg.num_attention_heads * H, cfg.num_key_value_heads * H
    return {"input_layernorm": (D,), "q_proj": (D, NH), "k_proj": (D, KH), "v_proj": (D, KH),
            "q_norm": (H,), "k_norm": (H,), "o_proj": (NH, D), "post_attention_layernorm": (D,),
            "gate_proj": (D, F), "up_proj": (D, F), "down_proj": (F, D)}


def param_shapes(cfg: Qwen3Config) -> dict[str, tuple[int, ...]]:
    """Flattened name -> shape of every tensor in the converted file (the loader's contract)."""
    L = cfg.num_hidden_layers
    shapes = {"embed_tokens": (cfg.vocab_size, cfg.hidden_size)}
    shapes |= {f"layers.{k}": (L, *s) for k, s in layer_shapes(cfg).items()}
    shapes["norm"] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (cfg.hidden_size, cfg.vocab_size)
    return shapes


# Where a model's tensors go, decided by the caller: place(cfg, abstract) takes the Params tree
# of ShapeDtypeStructs of what will be made (quantized projections as QuantizedWeight nodes of
# them) and returns the same tree of jax.sharding.Sharding. None: the default device.
Placement = Callable[[Qwen3Config, Params], Params]


def abstract_params(cfg: Qwen3Config, dtype) -> Params:
    """The parameter pytree of `cfg` as ShapeDtypeStructs (no memory allocated)."""
    return unflatten({k: jax.ShapeDtypeStruct(s, dtype) for k, s in param_shapes(cfg).items()})


def shardings_of(place: Placement | None, cfg: Qwen3Config, abstract: Params) -> dict:
    """Flattened name -> sharding (a QuantizedWeight of them for a quantized projection) that
    `place` gives the tensors of `abstract`; {} (every name: None) without a placement."""
    return {} if place is None else flatten(place(cfg, abstract))


def put(host, sharding=None) -> jax.Array:
    """A host array on the default device, or laid out as `sharding` says: each device gets
    only its own slice, copied from the host (never the whole tensor on one device first)."""
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def constrain(x, sharding):
    """Inside a jit: x laid out as `sharding` (None: left to XLA). The partitioner then makes
    each device's shard where it lives (random bits included: threefry is partitionable)."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def flatten(params: Params) -> dict[str, jax.Array]:
    flat = {"embed_tokens": params.embed_tokens, "norm": params.norm}
    flat |= {f"layers.{k}": getattr(params.layers, k) for k in LAYER_FIELDS}
    if params.lm_head is not None:
        flat["lm_head"] = params.lm_head
    return flat


def unflatten(flat: dict) -> Params:
    return Params(embed_tokens=flat["embed_tokens"],
                  layers=LayerParams(**{k: flat[f"layers.{k}"] for k in LAYER_FIELDS}),
                  norm=flat["norm"], lm_head=flat.get("lm_head"))


def random_tensor(name: str, shape: tuple[int, ...], key: jax.Array, dtype, std: float = 0.02,
                  sequential: bool = False):
    """One tensor of `init_params`: norm weights 1 + N(0, 0.1) (so they are not all-equal: a
    bug that ignores a norm weight still shows), matrices N(0, std) like transformers'
    initializer_range. A stacked layer tensor [L, ...] draws each layer from its own key, and
    a large matrix (the embedding, the head) each block of rows from its own key (split from
    `key`), so a tensor can be made piece by piece with the same values: sequential=True makes
    them one after another (lax.map; peak memory one piece: what a 24 GiB card needs while
    it loads), False all at once (vmap)."""
    if name.split(".")[-1] in _NORMS:
        return (1.0 + 0.1 * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    def each(f):
        return (lambda keys: jax.lax.map(f, keys)) if sequential else jax.vmap(f)

    if name.startswith("layers."):
        return each(lambda k: layer_tensor(k, shape[1:], dtype, std))(
            jax.random.split(key, shape[0]))
    n = row_blocks(shape)
    blocks = each(lambda k: layer_tensor(k, (shape[0] // n, *shape[1:]), dtype, std))(
        jax.random.split(key, n))
    return blocks.reshape(shape)


# A random matrix is drawn in blocks of rows of at most this many elements (see random_tensor).
RANDOM_BLOCK = 2**25


def row_blocks(shape: tuple[int, ...]) -> int:
    """The fewest blocks of rows, dividing shape[0], each of at most RANDOM_BLOCK elements
    (one row per block when a single row is already larger)."""
    if not math.prod(shape):
        return 1
    n = min(-(-math.prod(shape) // RANDOM_BLOCK), shape[0])
    while shape[0] % n:  # ends: shape[0] divides itself
        n += 1
    return n


def layer_tensor(key: jax.Array, shape: tuple[int, ...], dtype, std: float = 0.02):
    """One layer's matrix of a stacked tensor drawn by `random_tensor` (its per-layer key)."""
    return (std * jax.random.normal(key, shape, dtype)).astype(dtype)


def tensor_keys(cfg: Qwen3Config, key: jax.Array) -> dict[str, jax.Array]:
    """The key of every flattened tensor name of `init_params` (quantized init uses the same)."""
    shapes = param_shapes(cfg)
    return dict(zip(shapes, jax.random.split(key, len(shapes)), strict=True))


def init_params(cfg: Qwen3Config, key: jax.Array, dtype=jnp.bfloat16, std: float = 0.02,
                place: Placement | None = None) -> Params:
    """Random weights of the real shapes, made on the default device (timing, tests), or
    where `place` says (each device draws its own shards: the same values).

    Generated directly in `dtype` inside one jit: an 8B model is ~16 GB of bf16 and never
    visits the host. Quantized random weights that never exist in bf16 on the device as a
    whole: `quant.init_quantized_params` (the same values, quantized one layer at a time).
    """
    shardings = None if place is None else place(cfg, abstract_params(cfg, dtype))
    return _init_params(cfg, key, dtype, std, shardings)


# shardings: a Params tree of Shardings, static (hashable: frozen dataclasses all the way down)
@partial(jax.jit, static_argnames=("cfg", "dtype", "std", "shardings"))
def _init_params(cfg, key, dtype, std, shardings):
    keys = tensor_keys(cfg, key)
    params = unflatten({name: random_tensor(name, shape, keys[name], dtype, std)
                        for name, shape in param_shapes(cfg).items()})
    return constrain(params, shardings)
