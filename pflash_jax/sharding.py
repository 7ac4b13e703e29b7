"""Tensor parallelism for the target: its parameters and KV cache sharded over a 1-D mesh of
N devices (`target.tensor_parallel=N`; docs/design.md section 8.1).

    mesh = make_mesh(n)
    params = load_model(path, place=Placement(mesh)).params  # each tensor: host -> its shards
    # (params already on one device: shard_params(params, cfg, mesh))
    attn = ShardedAttention(mesh, "auto")  # dense_attention under shard_map, per device's heads
    prefill_at(params, cfg, ids, positions, length, attn=attn, fuse_qkv=False)

Design choices:
- The layout of jax-llm-examples (Megatron's): q/k/v projections split by their output
  (heads / kv heads), o_proj by its input (heads); gate/up by F, down_proj by its input F;
  the embedding table and an untied LM head by vocab; norms replicated. A layer then computes
  its heads and its slice of F locally and needs one all-reduce after o_proj and one after
  down_proj, both inserted by XLA's SPMD partitioner from the arrays' shardings alone: the model
  code (models/qwen3.py) is the unsharded one and places nothing on a device.
- GQA stays local: q head n reads kv head n // G, so cutting both head axes into N contiguous
  blocks gives each device the q heads of its own kv heads. Attention runs under `shard_map`
  over that axis, each device calling the kernel on its heads: the Mosaic kernel is a Pallas
  custom call without a partitioning rule, which XLA would run on all heads gathered to every
  device (cuDNN's jax wrapper has a rule; one explicit mechanism for every impl is simpler).
- fuse_qkv is off under tensor parallelism: the fused projection concatenates [Wq|Wk|Wv] along
  their sharded output axis, which XLA reshuffles every layer (one 64-dim toy projection on
  the CPU with 2 devices: 16 all-to-all and 9 collective-permutes, none unfused).
- The mesh axis is `AxisType.Auto`: jax.make_mesh defaults to Explicit in jax 0.11.2, under which
  every contraction over a sharded axis would need an out_sharding in the model code.
- Quantized weights (models/quant.py) shard like their values: a scale follows the output axis;
  an int4 weight split along its inputs splits its group axis too, so each device must hold
  whole groups (`check_tensor_parallel` refuses otherwise).
- Tensors whose axis N does not divide: heads are checked up front (N must divide the kv heads,
  which then divides the q heads); F must divide too (an error); a vocab N does not divide
  leaves the embedding and head replicated (correct, only bigger).
- Loading places each tensor straight into this layout (`Placement`, given to load_model,
  init_params and quant.init_quantized_params): a checkpoint's tensor goes from its memory map
  to the devices, each receiving its slice; a random one is drawn by each device for its own
  shard. Loading whole onto the first device and then splitting would need the whole target
  to fit one device (a 32B int4 / int8 target on two 24 GB cards does not).
- Not sharded: the drafter (one device: 0.6B at 128K fits one card), the sequence axis, and
  decode's `cached_attention` (plain jnp: XLA partitions it by heads from the cache's sharding).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pflash_jax.attention import dense_attention
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import LayerParams, Params
from pflash_jax.models.quant import QuantizedWeight
from pflash_jax.models.qwen3 import KVCache

AXIS = "tp"  # the one mesh axis: heads, kv heads, F and vocab are split along it
HEADS = P(None, None, AXIS, None)  # q [B,T,N,H], k/v [B,S,K,H]: the head axis
OUT_SPLIT = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")  # [L, in, out]: by out
IN_SPLIT = ("o_proj", "down_proj")  # [L, in, out]: by in


def check_tensor_parallel(n, cfg: Qwen3Config, params: Params | None = None,
                          what: str = "target.tensor_parallel") -> None:
    """n must be an int >= 1 dividing cfg's kv heads and MLP dim (and, for int4 `params`, the
    input groups of o_proj and down_proj), with n devices visible; a ValueError naming `what`
    otherwise, every problem at once."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be an int >= 1 (devices), got {n!r}")
    problems = []
    K, F = cfg.num_key_value_heads, cfg.intermediate_size
    if K % n:
        problems.append(f"{what}={n} must divide the model's num_key_value_heads={K} (each "
                        f"device attends whole kv heads and their query heads)")
    if F % n:
        problems.append(f"{what}={n} must divide the model's intermediate_size={F}")
    for name in IN_SPLIT if params is not None else ():
        w = getattr(params.layers, name)
        if isinstance(w, QuantizedWeight) and w.format == "int4" and w.scale.shape[-2] % n:
            problems.append(f"{what}={n} must divide the {w.scale.shape[-2]} int4 groups "
                            f"({w.group} inputs each) of layers.{name}: a device holds whole "
                            f"groups")
    if n > jax.device_count():
        problems.append(f"{what}={n} needs {n} devices, jax sees {jax.device_count()} (on the "
                        f"CPU: XLA_FLAGS=--xla_force_host_platform_device_count={n})")
    if problems:
        raise ValueError("; ".join(problems))


def make_mesh(n: int) -> Mesh:
    """A 1-D mesh of the first n devices, axis AXIS (Auto: XLA's partitioner decides the rest)."""
    return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:n])


def _proj_specs(name: str, w):
    """The spec of one stacked projection [L, in, out] (or a QuantizedWeight of it)."""
    split_out = name in OUT_SPLIT
    spec = P(None, None, AXIS) if split_out else P(None, AXIS, None)
    if not isinstance(w, QuantizedWeight):
        return spec
    if w.format != "int4":  # scale [L, out]: it follows the output axis
        scale = P(None, AXIS) if split_out else P()
    else:  # scale [L, in / group, out]: the group axis is split with the inputs
        scale = spec
    return dataclasses.replace(w, values=spec, scale=scale)


def param_specs(params: Params, cfg: Qwen3Config, n: int) -> Params:
    """A Params tree of PartitionSpecs (QuantizedWeight nodes kept, with specs as children): the
    layout of the module docstring for a mesh of n devices along AXIS (`check_tensor_parallel`
    says whether n suits the model)."""
    vocab = AXIS if cfg.vocab_size % n == 0 else None  # else replicated (module docstring)
    layers = {f.name: P() for f in dataclasses.fields(LayerParams)}  # norms
    for name in OUT_SPLIT + IN_SPLIT:
        layers[name] = _proj_specs(name, getattr(params.layers, name))
    return Params(embed_tokens=P(vocab, None), layers=LayerParams(**layers), norm=P(),
                  lm_head=None if params.lm_head is None else P(None, vocab))


@dataclasses.dataclass(frozen=True)
class Placement:
    """The layout of `param_specs` on `mesh`, as a `params.Placement`: called with a config and
    the (abstract) Params about to be made, it checks them (`check_tensor_parallel`, naming
    `what`) and returns their NamedShardings. Given to load_model / init_params /
    quant.init_quantized_params, it makes each tensor in place (module docstring)."""

    mesh: Mesh
    what: str = "tensor_parallel"

    def __call__(self, cfg: Qwen3Config, params: Params) -> Params:
        check_tensor_parallel(self.mesh.size, cfg, params, what=self.what)
        return jax.tree.map(partial(NamedSharding, self.mesh),
                            param_specs(params, cfg, self.mesh.size))


def shard_params(params: Params, cfg: Qwen3Config, mesh: Mesh) -> Params:
    """params already on a device placed on `mesh` as `param_specs` says (one device_put per
    tensor; loading with `Placement(mesh)` instead never has the whole model on one device)."""
    return jax.tree.map(jax.device_put, params, Placement(mesh)(cfg, params))


def kv_cache_specs(kv_cache: str = "bf16") -> KVCache:
    """The KVCache's specs: K/V [L,B,S,K,H] and their scales [L,B,S,K] by kv heads."""
    kv = P(None, None, None, AXIS, None)
    scale = None if kv_cache == "bf16" else P(None, None, None, AXIS)
    return KVCache(kv, kv, P(), scale, scale)


@dataclasses.dataclass(frozen=True)
class ShardedAttention:
    """`dense_attention(impl=impl)` on each device's own heads (q, k, v and the output split
    along their head axis). Frozen, so hashable: it is a static argument of the jitted prefill
    like an impl name."""

    mesh: Mesh
    impl: str = "auto"

    def __call__(self, q, k, v):
        attend = partial(dense_attention, impl=self.impl)
        return jax.shard_map(attend, mesh=self.mesh, in_specs=(HEADS, HEADS, HEADS),
                             out_specs=HEADS)(q, k, v)
