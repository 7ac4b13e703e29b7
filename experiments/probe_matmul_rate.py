"""Probe (roofline constants): the card's achievable dense matmul rate in bf16 and in fp8 e4m3
(the form quant.matmul uses, which XLA turns into one cuBLASLt fp8 GEMM on Hopper), 8192^3,
float32 accumulation. GPU:

    python experiments/probe_matmul_rate.py --out DIR   -> DIR/matmul_rate.json, one line each
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from pflash_jax import bench
from pflash_jax.models import quant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    n = a.n
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    y = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    x8, y8 = x.astype(jnp.float8_e4m3fn), y.astype(jnp.float8_e4m3fn)
    ways = {
        "bf16": (jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.bfloat16)),
                 (x, y)),
        "fp8": (jax.jit(lambda a, b: jax.lax.dot_general(
            a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (((1,), (0,)), ((), ())),
            preferred_element_type=jnp.bfloat16),
            compiler_options=quant.FP8_COMPILER_OPTIONS), (x8, y8)),  # else: autotuning stall
    }
    out = bench.provenance() | {"n": n}
    for name, (f, args) in ways.items():
        hlo = f.lower(*args).compile().as_text()
        t = bench.time_fn(f, *args, warmup=2, repeats=a.repeats).median_s
        rate = 2 * n**3 / t
        out[f"{name}_tflops"] = rate / 1e12
        out[f"{name}_fp8_gemm_in_hlo"] = "__cublas$lt$matmul$f8" in hlo
        print(f"{name}: {t * 1e3:.3f} ms, {rate / 1e12:.0f} TFLOP/s "
              f"(cuBLAS fp8 call in HLO: {out[f'{name}_fp8_gemm_in_hlo']})", flush=True)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "matmul_rate.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
