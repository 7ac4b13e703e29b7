"""Loading a target straight onto its shards (`sharding.Placement`, the `place` argument of
load_model / init_params / quant.init_quantized_params; docs/design.md section 8.1): every
tensor in param_specs' layout, each device holding only its shards, nothing whole on one
device on the way, and the same model as the unsharded load.

The measurements run in a subprocess with 8 forced CPU devices (tests/sharded_loading_checks.py,
~50 s; why a subprocess: tests/test_sharding.py). Sources: a float32 checkpoint; it quantized
int8 / int4 while loading; a checkpoint stored int4; it cast to bfloat16 while loading; random
weights, plain / int8 / int4; each at N = 2 and 4.

"Nothing whole on one device" is checked three ways, since the CPU reports no device memory:
every host -> device copy the loader makes (a spy on jax.make_array_from_callback and
jnp.asarray) is one device's shard, never the tensor, and nothing is made elsewhere and moved
(no jax.device_put); no array is left alive besides the model's shards; and the compiled random
init's per-device temporaries are 1/N of the unsharded init's (a device drawing a whole tensor
and keeping a slice would need all of them).

Tolerance: the values are bit for bit the unsharded load's (asserted), so the logits differ
only by the sharded matmuls' summation order: the 64 float32 eps of tests/test_sharding.py
(measured 7.4-15.4 here); the bfloat16 model rounds every layer's partial sums to 8 bits,
measured 1.7 (N = 2) and 3.2 (N = 4) bfloat16 eps: bound 8.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .tolerances import EPS

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}

ULPS = {"float32": 64, "bfloat16": 8}  # module docstring
SOURCES = ["f32", "int8", "int4", "int4_stored", "bf16_cast", "random", "random_int8",
           "random_int4"]
RANDOM = [s for s in SOURCES if s.startswith("random")]


@pytest.fixture(scope="module")
def checks():
    # cwd = the repository: `-m` then imports this checkout's pflash_jax and tests packages
    p = subprocess.run([sys.executable, "-m", "tests.sharded_loading_checks"], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (f"sharded_loading_checks failed:\n{p.stdout[-3000:]}\n"
                               f"{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _result(checks, source, n):
    return checks["loads"][source][n]


@pytest.mark.parametrize("n", ["2", "4"])
@pytest.mark.parametrize("source", SOURCES)
def test_every_tensor_in_its_layout(checks, source, n):
    """Each tensor's sharding is param_specs' (NamedSharding on the mesh), on all N devices,
    each shard of the spec's shard shape; a split tensor's shard is 1/N of it; every device
    holds the same bytes, tree_bytes' count (what memory.py plans per device)."""
    r, k = _result(checks, source, n), int(n)
    assert not r["wrong_sharding"], "\n".join(r["wrong_sharding"])
    assert not r["wrong_shards"], "\n".join(r["wrong_shards"])
    assert r["split"], "no tensor is split"
    uneven = {t: b for t, b in r["split"].items() if b[0] * k != b[1]}
    assert not uneven, f"split tensors whose shard is not 1/{k} [shard, whole bytes]: {uneven}"
    assert r["device_bytes"] == [r["tree_bytes"]] * k, (r["device_bytes"], r["tree_bytes"])
    # norms are replicated, so a device holds a bit more than 1/N of the model
    assert r["whole_bytes"] / k < r["tree_bytes"] < 1.05 * r["whole_bytes"] / k, (
        f"one device holds {r['tree_bytes']} bytes of {r['whole_bytes']} (N={k})")


@pytest.mark.parametrize("n", ["2", "4"])
@pytest.mark.parametrize("source", SOURCES)
def test_nothing_whole_on_one_device(checks, source, n):
    """The loader copies each tensor from the host through make_array_from_callback, one
    device's shard at a time (a replicated tensor: one piece, given to every device), never
    through jnp.asarray; random weights make no host copy at all; nothing is made elsewhere
    and moved (no jax.device_put). Nothing else stays alive."""
    r = _result(checks, source, n)
    assert not r["asarray"], f"host arrays put whole on the default device: {r['asarray']}"
    assert not r["device_put"], f"arrays made elsewhere, then moved: {r['device_put']}"
    assert not r["wrong_pieces"], f"host pieces that are not one device's shard: " \
                                  f"{r['wrong_pieces'][:5]}"
    expected = 0 if source in RANDOM else r["leaves"]
    assert r["tensors_placed"] == expected, (
        f"{r['tensors_placed']} tensors went through make_array_from_callback, expected "
        f"{expected} of {r['leaves']}")
    assert not r["leftovers"], f"arrays left alive besides the model: {r['leftovers'][:8]}"


@pytest.mark.parametrize("source", RANDOM)
def test_random_init_is_drawn_shard_by_shard(checks, source):
    """The compiled random init at N = 2: each device outputs its shards (tree_bytes, plus the
    8-byte output table entry per tensor XLA's CPU backend counts) and needs half the
    unsharded init's temporaries (10% slack): the random bits and the layer-at-a-time
    quantization run on each device's slice only."""
    r = _result(checks, source, "2")
    c, one = r["compiled"], checks["loads"][source]["compiled_unsharded"]
    assert r["tree_bytes"] <= c["output"] <= r["tree_bytes"] + 16 * r["leaves"], (c, r)
    assert c["temp"] <= 1.1 * one["temp"] / 2, (
        f"{source}: temporaries per device {c['temp']} vs {one['temp']} unsharded")


@pytest.mark.parametrize("n", ["2", "4"])
@pytest.mark.parametrize("source", SOURCES)
def test_same_model_as_the_unsharded_load(checks, source, n):
    """Values bit for bit the unsharded load's; prefill logits within the module docstring's
    bound (float32: 64 eps; the bfloat16 cast: 8 bfloat16 eps)."""
    r, scale = _result(checks, source, n), checks["loads"][source]["logit_scale"]
    assert not r["differences"], f"tensors that differ from the unsharded load: " \
                                 f"{r['differences']}"
    dtype = "bfloat16" if source == "bf16_cast" else "float32"
    err, eps = r["logits_max_abs_err"], EPS[dtype]
    assert np.isfinite(err) and err <= ULPS[dtype] * eps * scale, (
        f"{source} N={n} logits: max abs err {err:.3e} = {err / scale / eps:.1f} {dtype} eps "
        f"of {scale:.3e} (limit {ULPS[dtype]} eps)")


def test_a_refused_layout_fails_before_any_transfer(checks):
    """3 devices for 8 kv heads: the placement's error, raised before one tensor is placed."""
    err = checks["refusal"]
    assert err is not None, "a 3-device placement of 8 kv heads loaded"
    assert "tensor_parallel=3 must divide the model's num_key_value_heads=8" in err, err
    assert err.endswith("[pieces placed: 0]"), err


@pytest.mark.parametrize("spec", ["checkpoint_int8", "random", "random_int4"])
def test_pflash_run_loads_the_target_onto_its_shards(checks, spec):
    """run.placement -> run.load -> run.target_attention at target.tensor_parallel=2: the
    target in its layout with nothing whole on one device, attention per device's heads."""
    r = checks["run_loads"][spec]
    assert not r["wrong_sharding"] and not r["wrong_shards"], r
    assert r["device_bytes"] == [r["tree_bytes"]] * 2 and r["tree_bytes"] < r["whole_bytes"]
    assert not (r["asarray"] or r["device_put"] or r["wrong_pieces"] or r["leftovers"]), r
    assert (r["attention"], r["fuse_qkv"]) == ("ShardedAttention", False), r
