"""Probe (issue 17): the cost of preparing an fp8 V for the Mosaic kernel's fp8 P @ V (V's amax,
its e4m3 rounding, the transpose to V^T [B, K, H, S] and the token reorder within every 16 that
P's register layout needs), written several ways, at the drafter's shapes. GPU:

    python experiments/probe_v_layout.py --seq 131072
    -> one line per way: warm ms (median), and whether it equals the kernel wrapper's own

Ways: "wrapper" (api.quantize_v, then mosaic's transpose + pv_token_order in one fusion, as
the kernel runs today), "barrier" (the same with an optimization barrier between the plain
transpose and the reorder, so XLA emits a tiled transpose and a separate reorder), "transpose
only" (no reorder: the floor of the layout change), "amax only" (the scale's reduction).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import bench
from pflash_jax.attention import api, mosaic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    v = jax.random.normal(jax.random.key(0), (1, a.seq, a.kv_heads, 128), jnp.bfloat16)

    def wrapper(v):
        v8, s = api.quantize_v(v)
        return mosaic.pv_token_order(jnp.transpose(v8, (0, 2, 3, 1)), permuted=True), s

    def barrier(v):
        v8, s = api.quantize_v(v)
        t = jax.lax.optimization_barrier(jnp.transpose(v8, (0, 2, 3, 1)))
        return mosaic.pv_token_order(t, permuted=True), s

    def transpose_only(v):
        v8, s = api.quantize_v(v)
        return jnp.transpose(v8, (0, 2, 3, 1)), s

    def amax_only(v):
        return jnp.max(jnp.abs(v)).astype(jnp.float32)

    ways = {"wrapper": wrapper, "barrier": barrier, "transpose only": transpose_only,
            "amax only": amax_only}
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, V {v.shape}",
          flush=True)
    ref = np.asarray(jax.jit(wrapper)(v)[0].astype(jnp.float32))
    for name, f in ways.items():
        fn = jax.jit(f)
        t = bench.time_fn(fn, v, warmup=2, repeats=a.repeats).median_s
        out = fn(v)
        same = ""
        if name == "barrier":
            eq = np.array_equal(np.asarray(out[0].astype(jnp.float32)), ref)
            same = f"  equals wrapper: {eq}"
        print(f"{name:<15} {t * 1e3:7.3f} ms{same}", flush=True)


if __name__ == "__main__":
    main()
