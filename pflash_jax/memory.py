"""A memory plan for one run, made before any compute: per stage the bytes of weights, KV cache
and the largest activations, and whether each path fits a budget.

    plan = plan_run(drafter_cfg, drafter_dtype, target_cfg, target_dtype, S, pcfg, ...)
    plan.paths["full"].fits(budget), plan.summary()

Design choices:
- The activations come from XLA itself, not from a formula: each stage's jitted function is
  lowered and compiled on abstract inputs (`jax.ShapeDtypeStruct`, nothing is allocated) and
  its `memory_analysis()` gives argument, output and temporary bytes, i.e. the buffers XLA's
  buffer assignment will allocate on this backend for these shapes, kernels included. A
  hand-written activation formula would have to track every fusion, the attention kernel's
  workspace and the sequence chunking; the compiler already knows them. Cost: one extra
  compile per stage (seconds at 128K), reported as `plan_s`.
- Weights and the KV cache are also counted from shapes (`weights_bytes`, `kv_cache_bytes`),
  exactly: they are what the stage's arguments and outputs hold, and the tests check both
  against the arrays a run allocates.
- Stages: "drafter" (the drafter pass over S tokens), "target_prefill" (the target over the
  kept tokens, padded to their shape bucket, cache sized for decoding) and "full_prefill" (the
  target over all S). Paths: "pflash" needs max(drafter + resident target weights,
  target_prefill + resident drafter weights): both models stay loaded for the whole job, so
  each stage also pays for the other model's weights. "full" needs full_prefill + resident
  drafter weights (the run job holds the drafter while it times the baseline).
- The kept-token count is not known before the drafter runs: the plan uses its upper bound
  under the selection rule (inside the budget: budget spans; on top: budget + forced spans;
  plus the last token), so a path planned to fit does fit.
- Tensor parallelism (`target.tensor_parallel=N`, pflash_jax/sharding.py): every number is per
  device. The target's weights count their own shard's shape (what the sharding puts on one
  device: projections and, where N divides the vocab, embeddings / head split, norms whole),
  its KV cache K / N kv heads, and the compiled analysis of a sharded stage is already one
  device's program. The drafter and its resident weights sit on the first device, which the
  pflash path therefore describes; the budget is per device (`device_profile=rtx3090` with N
  devices: N cards of 24 GiB).
- Not modelled: allocator fragmentation and the runtime's own reserve (cuBLAS/cuDNN
  workspaces outside XLA's buffers); on the GPU the plan is compared with the measured peak
  (`peak_memory_bytes`) in metrics.json: the run job runs PFlash before full prefill and
  records the process's peak after each (`peak_after_pflash_bytes`, `peak_after_full_bytes`),
  which `report.py` sets beside the planned needs.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import abstract_params, param_shapes

GIB = 2**30


def weights_bytes(cfg: Qwen3Config, dtype) -> int:
    """Bytes of every parameter of `cfg` stored in `dtype` (what the loader puts on device)."""
    size = jnp.dtype(dtype).itemsize
    return sum(math.prod(s) for s in param_shapes(cfg).values()) * size


def kv_cache_bytes(cfg: Qwen3Config, capacity: int, dtype, kv_cache: str = "bf16",
                   tensor_parallel: int = 1) -> int:
    """Bytes of a KVCache of `capacity` slots: K and V for every layer, plus its int32 length.
    kv_cache "int8" / "fp8": one byte per value plus a float32 scale per (token, kv head).
    tensor_parallel N: one device's share (the cache is split by kv heads, N divides them)."""
    kv_heads = (2 * cfg.num_hidden_layers * (cfg.num_key_value_heads // tensor_parallel)
                * capacity)
    if kv_cache == "bf16":  # the compute dtype, whatever it is
        return kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize + 4
    return kv_heads * (cfg.head_dim + 4) + 4


@dataclasses.dataclass(frozen=True)
class Stage:
    weights: int  # this stage's own model's parameters
    kv_cache: int  # KV cache the stage returns (0 for the drafter's fused scan)
    activations: int  # XLA temporaries of the compiled stage (the largest live activations)
    other: int  # inputs/outputs besides weights and cache, and the other model's resident weights

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.other

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total}


@dataclasses.dataclass(frozen=True)
class Path:
    needs: int  # peak bytes over the path's stages
    stages: tuple[str, ...]

    def fits(self, budget: int | None) -> bool:
        return budget is None or self.needs <= budget

    def verdict(self, budget: int | None) -> str:
        if self.fits(budget):
            return "fits" if budget is not None else "no budget"
        return f"does not fit: needs {self.needs / GIB:.2f} GiB of {budget / GIB:.2f}"


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: dict[str, Stage]
    paths: dict[str, Path]
    budget: int | None
    kept_tokens_max: int
    plan_s: float
    tensor_parallel: int = 1  # the target's devices; > 1: every number is per device

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget, "kept_tokens_max": self.kept_tokens_max,
                "plan_s": self.plan_s, "tensor_parallel": self.tensor_parallel,
                "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "paths": {k: {"needs_bytes": p.needs, "stages": list(p.stages),
                              "fits": p.fits(self.budget), "verdict": p.verdict(self.budget)}
                          for k, p in self.paths.items()}}

    def summary(self) -> str:
        big = max(s.total for s in self.stages.values()) >= GIB
        unit, div = ("GiB", GIB) if big else ("MiB", 2**20)
        b = "none" if self.budget is None else f"{self.budget / GIB:.2f} GiB"
        where = (f", per device: target on {self.tensor_parallel} devices"
                 if self.tensor_parallel > 1 else "")
        lines = [f"memory plan (budget {b}{where}; {unit}: weights + KV cache + activations + "
                 f"other)"]
        for name, s in self.stages.items():
            lines.append(f"  {name:15s} {s.weights / div:8.2f} + {s.kv_cache / div:7.2f} + "
                         f"{s.activations / div:7.2f} + {s.other / div:7.2f} = "
                         f"{s.total / div:8.2f}")
        for name, p in self.paths.items():
            lines.append(f"  path {name:10s} {p.verdict(self.budget)}"
                         + ("" if not p.fits(self.budget) else f" ({p.needs / div:.2f} {unit})"))
        return "\n".join(lines)


def _analysed(jitted, *args, **kwargs):
    m = jitted.lower(*args, **kwargs).compile().memory_analysis()
    if m is None:  # a backend without the analysis: count arguments and outputs only
        return None
    return m


def _abstract(tree):
    """ShapeDtypeStructs of a tree's arrays, shardings kept (a sharded stage compiles sharded)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=getattr(a, "sharding", None)),
                        tree)


def _tensor_parallel(tree) -> int:
    """How many devices the tree's arrays are spread over (1: one device, or no sharding)."""
    return max((len(a.sharding.device_set) for a in jax.tree.leaves(tree)
                if getattr(a, "sharding", None) is not None), default=1)


def tree_bytes(tree) -> int:
    """Bytes one device holds of a tree of arrays / ShapeDtypeStructs (a sharded leaf: its
    shard's shape). int4 weights are packed uint8 pairs (models/quant.py), counted as bytes."""
    total = 0
    for a in jax.tree.leaves(tree):
        sharding = getattr(a, "sharding", None)
        shape = a.shape if sharding is None else sharding.shard_shape(a.shape)
        total += int(np.prod(shape)) * jnp.dtype(a.dtype).itemsize
    return total


def kept_tokens_upper_bound(S: int, selection) -> int:
    """The most tokens the selection can keep from S (the plan's target-prefill length)."""
    from pflash_jax.pflash.spans import n_keep

    n = -(-S // selection.span_size)
    k = n_keep(n, selection.keep_ratio, selection.rounding)
    if selection.forced_spans == "on_top":
        k += selection.forced_head_spans + selection.forced_tail_spans
        if selection.anchors != "none":
            k = n  # anchors on top: as many as the prompt's n-grams match, bounded by S only
    return min(S, min(k, n) * selection.span_size + 1)


def plan_run(drafter_cfg: Qwen3Config, drafter_dtype, target_cfg: Qwen3Config, target_dtype,
             S: int, pcfg, *, max_new_tokens: int = 1, chunk: int | None = None,
             target_attn="auto", budget: int | None = None, kv_cache: str = "bf16",
             drafter_params=None, target_params=None, fuse_qkv: bool = True) -> Plan:
    """The memory plan of one prompt of S tokens (module docstring). drafter_params /
    target_params: the models' parameter trees (arrays or ShapeDtypeStructs; quantized ones
    too) when known, else the plain trees of the configs in the given dtypes. A sharded
    target_params (pflash_jax/sharding.py) makes a per-device plan; target_attn and fuse_qkv
    are then the run's (`sharding.ShardedAttention`, False)."""
    from pflash_jax.pflash.drafter import prefill_keep_jit, scores_jit
    from pflash_jax.pflash.pipeline import bucket, target_jits

    t0 = time.perf_counter()
    i32 = jnp.int32
    dparams = (abstract_params(drafter_cfg, drafter_dtype) if drafter_params is None
               else _abstract(drafter_params))
    tparams = (abstract_params(target_cfg, target_dtype) if target_params is None
               else _abstract(target_params))
    dw, tw = tree_bytes(dparams), tree_bytes(tparams)
    tp = _tensor_parallel(tparams)
    stages: dict[str, Stage] = {}

    # drafter: the fused tail scan, or look-ahead's prefill that keeps a cache
    Sb = -(-S // pcfg.block_size) * pcfg.block_size
    ids = jax.ShapeDtypeStruct((1, Sb), i32)
    length = jax.ShapeDtypeStruct((), i32)
    if pcfg.scoring.tail_mode == "lookahead":
        n_gen = pcfg.scoring.n_tail - 1
        m = _analysed(prefill_keep_jit(dparams), dparams, drafter_cfg, ids, length, pcfg, chunk,
                      Sb + max(n_gen, 1))
        kv = kv_cache_bytes(drafter_cfg, Sb + max(n_gen, 1), drafter_dtype)
    else:
        m = _analysed(scores_jit(dparams), dparams, drafter_cfg, ids, length, pcfg, chunk=chunk)
        kv = 0
    stages["drafter"] = _stage(m, dw, kv, resident=tw)

    def target_stage(n_tokens: int, resident: int) -> Stage:
        nb = bucket(n_tokens)
        spec = jax.ShapeDtypeStruct((1, nb), i32)
        cache_len = nb + max(max_new_tokens - 1, 0)
        prefill = target_jits(tparams)[0]  # fp8 targets: the run's compile options
        m = _analysed(prefill, tparams, target_cfg, spec, spec, length, attn=target_attn,
                      chunk=chunk, cache_len=cache_len, kv_cache=kv_cache, fuse_qkv=fuse_qkv)
        kv = kv_cache_bytes(target_cfg, cache_len, target_dtype, kv_cache, tp)
        return _stage(m, tw, kv, resident)

    kept = kept_tokens_upper_bound(S, pcfg.selection)
    stages["target_prefill"] = target_stage(kept, resident=dw)
    stages["full_prefill"] = target_stage(S, resident=dw)
    paths = {"pflash": Path(max(stages["drafter"].total, stages["target_prefill"].total),
                            ("drafter", "target_prefill")),
             "full": Path(stages["full_prefill"].total, ("full_prefill",))}
    return Plan(stages, paths, budget, kept, time.perf_counter() - t0, tp)


def _stage(m, weights: int, kv: int, resident: int) -> Stage:
    """Split a compiled stage's memory analysis into weights, cache, activations and other."""
    if m is None:
        return Stage(weights, kv, 0, resident)
    args, out, temp = (m.argument_size_in_bytes, m.output_size_in_bytes,
                       m.temp_size_in_bytes)
    # arguments = weights + small inputs; outputs = cache (+ logits / scores); an output that
    # aliases an argument is not counted twice
    alias = getattr(m, "alias_size_in_bytes", 0) or 0
    other = max(args - weights, 0) + max(out - kv - alias, 0) + resident
    return Stage(weights, kv, temp, other)


def device_budget() -> int | None:
    """What the default device lets this process allocate (None where unknown, e.g. CPU): the
    first device's, taken as every device's budget when the target is split over several."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")
