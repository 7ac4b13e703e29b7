"""Probe (issue 17): does a Pallas Mosaic GPU GEMM (jax's Hopper matmul example, imported) match
XLA's cuBLAS on the drafter's gate/up shape, and what does the SwiGLU multiply cost? GPU only:

    python experiments/probe_gemm.py      (prints one line per tile configuration)
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm

from pflash_jax import bench

M, K, N = 131072, 1024, 6144  # Qwen3-0.6B at 128K: [T, D] @ [D, 2F]


def timeit(f, *args, n=20):
    return bench.time_fn(f, *args, warmup=1, repeats=n).median_s


def main() -> None:
    a = jax.random.normal(jax.random.key(0), (M, K), jnp.bfloat16)
    b = (jax.random.normal(jax.random.key(1), (K, N), jnp.float32) * 0.03).astype(jnp.bfloat16)
    gemm = jax.jit(lambda a, b: a @ b)

    def swiglu(a, b):
        g = a @ b
        return jax.nn.silu(g[:, :N // 2]) * g[:, N // 2:]

    ref = gemm(a, b)
    flops = 2 * M * N * K
    t = timeit(gemm, a, b)
    print(f"xla gemm {t * 1e3:.3f} ms {flops / t / 1e12:.0f} TFLOP/s")
    print(f"xla gemm+swiglu {timeit(jax.jit(swiglu), a, b) * 1e3:.3f} ms")
    dims = (hm.MatmulDimension.M, hm.MatmulDimension.N)
    for tn, steps, minor, width, wgd in itertools.product((128, 256), (4, 5), dims, (1, 8, 16),
                                                         dims):
        name = f"mgpu tm=128 tn={tn} steps={steps} minor={minor} width={width} wg={wgd}"
        cfg = hm.TuningConfig(tile_m=128, tile_n=tn, tile_k=64, max_concurrent_steps=steps,
                              epi_tile_n=64, epi_tile_m=64, grid_minor_dim=minor,
                              grid_tile_width=width, wg_dimension=wgd)
        try:
            f = jax.jit(functools.partial(hm.matmul, c=None, config=cfg))
            t = timeit(f, a, b, n=10)
            err = float(jnp.max(jnp.abs(f(a, b).astype(jnp.float32) - ref.astype(jnp.float32))))
            print(f"{name}: {t * 1e3:.3f} ms {flops / t / 1e12:.0f} TFLOP/s err {err:.3g}",
                  flush=True)
        except ValueError as e:  # shared memory overflows of the larger tiles
            print(f"{name}: {str(e)[:100]}", flush=True)


if __name__ == "__main__":
    main()
