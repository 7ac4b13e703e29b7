"""The sharded half of tests/test_sharded_loading.py, in its own process (XLA fixes the number of
CPU devices when jax initialises; see tests/sharding_checks.py):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python -m tests.sharded_loading_checks      # from the repository root

A target loaded (or randomly initialised) with `sharding.Placement(mesh)` against the same
target made without one, for N = 2, 4 and each way a target is made: a float32 checkpoint, the
same quantized int8 / int4 while loading, a checkpoint stored as int4 (pflash-convert
--quantize), a cast to bfloat16 while loading, and random weights (plain, int8, int4). What it
measured is printed as one JSON object, which the tests assert on (and print on failure).
"""

from __future__ import annotations

import contextlib
import gc
import json
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import sharding
from pflash_jax.convert import convert
from pflash_jax.memory import tree_bytes
from pflash_jax.models import quant
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.export_hf import export_hf
from pflash_jax.models.loading import load_model
from pflash_jax.models.params import flatten, init_params
from pflash_jax.pflash.pipeline import prefill_at

# 8 kv heads (N = 2, 4 divide them); o_proj and down_proj take 512 inputs, 4 int4 groups of 128,
# so int4 splits over 4 devices too; untied and V = 256, so the embedding and head are split.
CFG = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=32,
                  tie_word_embeddings=False)
T, LENGTH = 40, 37
NS = (2, 4)


@contextlib.contextmanager
def transfers():
    """Every host -> device copy in the block: the tensors placed by
    `jax.make_array_from_callback` and, per piece it copied, the piece's shape and the shard
    shape its sharding gives a device (a replicated tensor is one piece copied to every
    device); per `jnp.asarray` of a host array (the loader's unsharded path), its shape; per
    `jax.device_put` (moving an array made elsewhere: placing in place needs none), its shape."""
    log: dict[str, list] = {"tensors": [], "pieces": [], "asarray": [], "device_put": []}
    real_callback, real_asarray, real_put = (jax.make_array_from_callback, jnp.asarray,
                                             jax.device_put)

    def callback(shape, sharding_, data_callback, *args, **kwargs):
        shard = list(sharding_.shard_shape(tuple(shape)))
        log["tensors"].append(list(shape))

        def piece(index):
            data = data_callback(index)
            log["pieces"].append({"shape": list(np.shape(data)), "shard": shard,
                                  "tensor": list(shape)})
            return data

        return real_callback(shape, sharding_, piece, *args, **kwargs)

    def asarray(x, *args, **kwargs):
        if isinstance(x, np.ndarray):
            log["asarray"].append(list(x.shape))
        return real_asarray(x, *args, **kwargs)

    def device_put(x, *args, **kwargs):
        log["device_put"].extend(list(np.shape(a)) for a in jax.tree.leaves(x))
        return real_put(x, *args, **kwargs)

    jax.make_array_from_callback, jnp.asarray, jax.device_put = callback, asarray, device_put
    try:
        yield log
    finally:
        jax.make_array_from_callback, jnp.asarray, jax.device_put = (real_callback,
                                                                     real_asarray, real_put)


def _leaves(params) -> dict[str, jax.Array]:
    """Flattened name (a quantized one: NAME.values / NAME.scale) -> array."""
    out = {}
    for name, a in flatten(params).items():
        if isinstance(a, quant.QuantizedWeight):
            out[f"{name}.values"], out[f"{name}.scale"] = a.values, a.scale
        else:
            out[name] = a
    return out


def layout(params, mesh) -> dict:
    """Where every tensor of `params` lives against `sharding.param_specs`: mismatched
    shardings, shards of another shape than the spec's, and the bytes each device holds."""
    expected = _leaves(jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s),
                                    sharding.param_specs(params, CFG, mesh.size)))
    wrong_sharding, wrong_shards, split = [], [], {}
    per_device = {d: 0 for d in mesh.devices.flat}
    for name, a in _leaves(params).items():
        want = expected[name]
        # equivalent, not ==: a jit's output spec drops trailing Nones (P("tp") for P("tp", None))
        if not a.sharding.is_equivalent_to(want, a.ndim):
            wrong_sharding.append(f"{name}: {a.sharding} != {want}")
        shard = want.shard_shape(a.shape)
        shards = a.addressable_shards
        if sorted(s.device.id for s in shards) != sorted(d.id for d in mesh.devices.flat) or \
                any(s.data.shape != shard for s in shards):
            wrong_shards.append(f"{name}: {[(s.device.id, s.data.shape) for s in shards]}, "
                                f"expected {shard} on each of {mesh.size} devices")
        for s in shards:
            per_device[s.device] += s.data.nbytes
        if shard != a.shape:  # a split tensor: what one device holds of it
            split[name] = [max(s.data.nbytes for s in shards), a.nbytes]
    return {"wrong_sharding": wrong_sharding, "wrong_shards": wrong_shards,
            "device_bytes": [per_device[d] for d in mesh.devices.flat],
            "tree_bytes": tree_bytes(params),
            "whole_bytes": sum(a.nbytes for a in _leaves(params).values()),
            "split": split}


def leftovers(before: list[jax.Array], params) -> list[str]:
    """Arrays alive now that were not before and are not params' own leaves: a copy the
    loading left behind (e.g. a whole tensor on the first device). `before` holds the arrays
    alive before, so no new array can reuse one's id."""
    gc.collect()
    known = {id(a) for a in before} | {id(a) for a in jax.tree.leaves(params)}
    return [f"{a.shape} {a.dtype} on {sorted(d.id for d in a.sharding.device_set)}"
            for a in jax.live_arrays() if id(a) not in known]


def _logits(params, attn, fuse_qkv: bool) -> np.ndarray:
    ids = jax.random.randint(jax.random.key(7), (1, T), 0, CFG.vocab_size, jnp.int32)
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    with jax.default_matmul_precision("highest"):
        lg = prefill_at(params, CFG, ids, pos, jnp.int32(LENGTH), attn=attn, fuse_qkv=fuse_qkv)
    return np.asarray(lg[0], np.float64)


def _differences(a, b) -> list[str]:
    """Tensors whose values are not bit for bit equal (the layout must not change a value)."""
    la, lb = _leaves(a), _leaves(b)
    return [n for n in la if la[n].dtype != lb[n].dtype or not np.array_equal(
        np.asarray(la[n]).view(np.uint8), np.asarray(lb[n]).view(np.uint8))]


def _compiled(make, place) -> dict:
    """Per-device bytes of the compiled random init (its outputs and temporaries)."""
    m = jax.jit(make, static_argnames=("place",)).lower(jax.random.key(3), place=place)
    m = m.compile().memory_analysis()
    return {"output": m.output_size_in_bytes, "temp": m.temp_size_in_bytes}


def check(root: Path) -> dict:
    src = export_hf(init_params(CFG, jax.random.key(0), jnp.float32, std=0.2), CFG, root / "hf")
    plain = convert(src, root / "f32", dtype="f32")
    stored = convert(src, root / "int4_stored", dtype="f32", quantize="int4")
    loads = {  # how a target is made -> make(place) -> Params
        "f32": lambda place: load_model(plain, place=place).params,
        "int8": lambda place: load_model(plain, quantize="int8", place=place).params,
        "int4": lambda place: load_model(plain, quantize="int4", place=place).params,
        "int4_stored": lambda place: load_model(stored, place=place).params,
        "bf16_cast": lambda place: load_model(plain, dtype=jnp.bfloat16, place=place).params,
    }
    inits = {  # random weights: key, place -> Params (traceable: its compiled memory is read)
        "random": lambda key, place=None: init_params(CFG, key, jnp.float32, 0.2, place=place),
        "random_int8": lambda key, place=None: quant.init_quantized_params(
            CFG, key, "int8", jnp.float32, 0.2, place=place),
        "random_int4": lambda key, place=None: quant.init_quantized_params(
            CFG, key, "int4", jnp.float32, 0.2, place=place),
    }
    for name, make in inits.items():
        loads[name] = lambda place, make=make: make(jax.random.key(3), place=place)
    out = {}
    for name, make in loads.items():
        ref = make(None)
        ref_logits = _logits(ref, "reference", True)
        out[name] = {"logit_scale": float(np.abs(ref_logits).max())}
        if name in inits:
            out[name]["compiled_unsharded"] = _compiled(inits[name], None)
        for n in NS:
            mesh = sharding.make_mesh(n)
            place = sharding.Placement(mesh)
            gc.collect()
            before = jax.live_arrays()
            with transfers() as log:
                params = jax.block_until_ready(make(place))
            left = leftovers(before, params)  # before layout(): its shard views are arrays
            r = {**layout(params, mesh), "leftovers": left,
                 "leaves": len(jax.tree.leaves(params)), "tensors_placed": len(log["tensors"]),
                 "pieces": len(log["pieces"]),
                 "wrong_pieces": [p for p in log["pieces"] if p["shape"] != p["shard"]],
                 "asarray": log["asarray"], "device_put": log["device_put"],
                 "differences": _differences(params, ref)}
            del before
            lg = _logits(params, sharding.ShardedAttention(mesh, "reference"), False)
            r["logits_max_abs_err"] = float(np.abs(lg - ref_logits).max())
            if name in inits and n == 2:  # the 2 x 24 GB rig's case (a compile: ~2.5 s)
                r["compiled"] = _compiled(inits[name], place)
            out[name][str(n)] = r
            del params
    return out


def refusal(root: Path) -> str | None:
    """A layout the placement refuses (3 devices for 8 kv heads) fails before any tensor is
    placed: the error, or None when it loaded."""
    with transfers() as log:
        try:
            load_model(root / "f32", place=sharding.Placement(sharding.make_mesh(3)))
            return None
        except ValueError as e:
            return f"{e} [pieces placed: {len(log['pieces'])}]"


def run_loads(root: Path) -> dict:
    """pflash-run's own path (run.placement -> run.load -> run.target_attention) at
    target.tensor_parallel=2, for a checkpoint and for random weights (a preset replaced by
    CFG: the real ones are too big for a test)."""
    from pflash_jax import run
    from pflash_jax.models import config
    from pflash_jax.run_config import ModelSpec

    config.model_preset = lambda name: CFG
    specs = {"checkpoint_int8": ModelSpec(path=str(root / "f32"), quantize="int8"),
             "random": ModelSpec(random_init=True, preset="cfg"),
             "random_int4": ModelSpec(random_init=True, preset="cfg", quantize="int4")}
    out = {}
    for name, spec in specs.items():
        spec.tensor_parallel, spec.dtype = 2, "f32"
        place = run.placement(spec)
        gc.collect()
        before = jax.live_arrays()
        with transfers() as log:
            params = jax.block_until_ready(run.load(spec, "target", place).params)
        left = leftovers(before, params)
        attn, fuse = run.target_attention(place, "reference")
        out[name] = {**layout(params, place.mesh), "leftovers": left,
                     "asarray": log["asarray"], "device_put": log["device_put"],
                     "wrong_pieces": [p for p in log["pieces"] if p["shape"] != p["shard"]],
                     "attention": type(attn).__name__, "fuse_qkv": fuse}
        del before, params
    return out


def main() -> None:
    assert jax.device_count() >= 4, f"needs 4 devices (XLA_FLAGS), got {jax.device_count()}"
    with tempfile.TemporaryDirectory() as d:
        out = {"loads": check(Path(d)), "refusal": refusal(Path(d)),
               "run_loads": run_loads(Path(d))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
