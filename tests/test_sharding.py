"""Tensor parallelism (pflash_jax/sharding.py, `target.tensor_parallel`; docs/design.md section
8.1): a target sharded over N CPU devices computes what the unsharded one does.

XLA reads its CPU device count (XLA_FLAGS=--xla_force_host_platform_device_count=8) once, when
jax initialises, and this process has initialised it with one device. So the sharded runs are
subprocesses: tests/sharding_checks.py (every in-library check, one process, ~25 s) and
pflash-run itself (~15 s); the refusals that need no second device run here.

Tolerance: float32 on the CPU. A sharded layer adds the devices' partial sums of o_proj and
down_proj (and of the vocab-split embedding lookup) in an all-reduce, in another order than
one device's dot product, so every layer rounds differently. Measured (jax 0.11.2), in eps
(float32's 2^-23) of the largest reference value: logits 4.9-5.2, cache 4.6-8.7 for N = 2, 4,
8; impl xla 6.5; int8 / int4 / fp8 weights 7.4 / 6.2 / 0.9 at N = 2. Bound: 64 eps.
Pairing each device's q heads with its neighbour's kv heads (a broken GQA split, tried once
by hand) gives an error of 8e6 eps, the size of the logits themselves.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pflash_jax import run_config, sharding
from pflash_jax.models.config import Qwen3Config

from .tolerances import EPS, assert_rel_close

REPO = Path(__file__).resolve().parents[1]
ULPS = 64  # module docstring
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def _run(args, timeout=600, **kw):
    # cwd = the repository: `-m` then imports this checkout's pflash_jax and tests packages
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def checks():
    p = _run(["-m", "tests.sharding_checks"], env=ENV)
    assert p.returncode == 0, f"sharding_checks failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _within(err: float, scale: float, what: str) -> None:
    assert err <= ULPS * EPS["float32"] * scale, (
        f"{what}: max abs err {err:.3e} = {err / scale / EPS['float32']:.1f} eps of "
        f"{scale:.3e} (limit {ULPS} eps)")


@pytest.mark.parametrize("n", ["2", "4", "8"])
def test_sharded_target_matches_unsharded(checks, n):
    """Prefill + 3 decode steps on fresh random ids: logits, the filled cache and the greedy
    tokens against the unsharded run (fused q/k/v, one device)."""
    tp, r = checks["tensor_parallel"], checks["tensor_parallel"][n]
    assert_rel_close(np.array(r["logits"]), np.array(r["reference_logits"]), "float32", ULPS,
                     what=f"N={n} logits (prefill row + decode steps)")
    for kv in ("k", "v"):
        _within(r[f"cache_{kv}_max_abs_err"], r["cache_scale"], f"N={n} cache {kv}")
    assert r["tokens"] == tp["reference_tokens"], f"N={n}: {r['tokens']} != reference"


@pytest.mark.parametrize("n", ["2", "4", "8"])
def test_layout_and_collectives(checks, n):
    """Weights split as the layout says, the cache stays split by kv heads through decode, and
    XLA inserts only the all-reduces of the design: one after o_proj and one after down_proj
    (the layer scan's body compiles once: 2) and one for the vocab-split embedding lookup."""
    r, k = checks["tensor_parallel"][n], int(n)
    assert r["q_proj_shard"] == [2, 64, 16 * 16 // k] and r["o_proj_shard"] == [2, 256 // k, 64]
    assert r["norm_replicated"] and r["cache_sharded_by_kv_heads"]
    expected = {"all-reduce": 3, "all-gather": 0, "all-to-all": 0, "collective-permute": 0}
    assert r["prefill_collectives"] == expected, r["prefill_collectives"]
    assert r["decode_collectives"] == expected, r["decode_collectives"]


def test_xla_attention_under_shard_map(checks):
    r = checks["xla_impl"]
    _within(r["logits_max_abs_err"], r["logit_scale"], "impl=xla, N=2 logits")


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_quantized_weights_shard(checks, fmt):
    """Scales follow the output axis; int4's group axis splits with down_proj's inputs."""
    r = checks["quantized"][fmt]
    _within(r["logits_max_abs_err"], r["logit_scale"], f"{fmt}, N=2 logits")
    assert r["down_proj_scale_shard"] == ([2, 1, 64] if fmt == "int4" else [2, 64])
    if fmt == "int4":  # 2 groups of 128 inputs cannot go to 4 devices
        err = checks["quantized"]["int4_n4_error"]
        assert err and "int4 groups" in err and "layers.down_proj" in err, err


def test_memory_plan_is_per_device(checks):
    """Weights and cache as one device holds them (its shards), XLA's analysis per device."""
    m = checks["memory_plan"]
    assert m["tensor_parallel"] == 2 and "per device" in m["summary"]
    assert m["plan_weights"] == m["device_weights"] == m["bytes_of"] < m["unsharded_weights"]
    assert m["plan_kv"] == m["device_kv"]
    assert 2 * (m["plan_kv"] - 4) + 4 == m["unsharded_kv"]  # the int32 length on each device
    assert m["activations"] < m["unsharded_activations"]


def test_pflash_run_tensor_parallel_2_gives_the_same_tokens(tmp_path):
    """pflash-run on the embedded tiny pair (2 kv heads) with the target on 1 and on 2 devices
    (one Hydra multirun, one process; the split target loaded straight onto its shards,
    tests/test_sharded_loading.py): both paths' tokens equal; metrics record the split."""
    sweep = tmp_path / "sweep"
    p = _run(["-m", "pflash_jax.run", "-m", "target.tensor_parallel=1,2", "task.seq_len=1024",
              "max_new_tokens=4", "repeats=0", f"hydra.sweep.dir={sweep}"],
             env={**ENV, "PFLASH_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    runs = {}
    for f in sweep.rglob("metrics.json"):
        m = json.loads(f.read_text())
        runs[m["run_config"]["target"]["tensor_parallel"]] = m
    assert sorted(runs) == [1, 2], sorted(runs)
    one, two = runs[1]["cases"][0], runs[2]["cases"][0]
    assert two["pflash_tokens"] == one["pflash_tokens"], (two["pflash_tokens"], one)
    assert two["full_tokens"] == one["full_tokens"], (two["full_tokens"], one)
    assert two["n_kept"] == one["n_kept"]
    # the default selection: kept tokens renumbered 0..K-1 on the split target too
    assert runs[2]["pflash_config"]["positions"] == "renumbered"
    assert runs[2]["models"]["target"]["tensor_parallel"] == 2
    assert runs[2]["memory_plan"]["tensor_parallel"] == 2
    # the loading peak of each of the target's devices (None: the CPU reports no memory)
    assert len(runs[2]["loading"]["device_peaks_bytes"]) == 2, runs[2]["loading"]
    assert "device_peaks_bytes" not in runs[1]["loading"], runs[1]["loading"]
    assert "x 2 devices" in p.stdout and "per device" in p.stdout


def test_pflash_run_refuses_a_split_of_the_kv_heads(tmp_path):
    """4 devices for the tiny target's 2 kv heads: one line naming the option, exit 2."""
    p = _run(["-m", "pflash_jax.run", "target.tensor_parallel=4", "task.seq_len=1024",
              f"hydra.run.dir={tmp_path}/run"],
             env={**ENV, "PFLASH_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    assert "target.tensor_parallel=4 must divide" in p.stderr
    assert "num_key_value_heads=2" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- refusals, one device
CFG = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=16)


@pytest.mark.parametrize("n,match", [
    (3, r"target\.tensor_parallel=3 must divide the model's num_key_value_heads=8"),
    (3, r"must divide the model's intermediate_size=256"),
    (2, r"target\.tensor_parallel=2 needs 2 devices, jax sees 1"),
    (0, r"target\.tensor_parallel must be an int >= 1"),
    (True, r"must be an int >= 1"),
])
def test_check_tensor_parallel_refuses(n, match):
    with pytest.raises(ValueError, match=match):
        sharding.check_tensor_parallel(n, CFG)


def _config(*overrides):
    run_config.register()
    with initialize_config_dir(str(REPO / "pflash_jax" / "configs"), version_base=None):
        return run_config.to_run_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("override,match", [
    ("target.tensor_parallel=0", r"target\.tensor_parallel must be an int >= 1"),
    ("drafter.tensor_parallel=2", r"drafter\.tensor_parallel must be 1"),
    ("target.tensor_parallel=2", r"target\.tensor_parallel=2 needs 2 devices, jax sees 1"),
])
def test_run_options_refuse_bad_tensor_parallel(override, match):
    with pytest.raises(ValueError, match=match):
        _config(override)
