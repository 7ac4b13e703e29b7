"""Probe (issue 17): the fp8 MLP's down-projection input quantization, XLA's two-pass matmul
expression against act_quant.silu_mul_quant's one pass, at the drafter's shapes; then the whole
fp8 SwiGLU MLP both ways. GPU (sm_89+):

    python experiments/probe_act_quant.py --seq 131072 --hidden 1024 --inter 3072
    -> one line per way: warm ms (median) and GB/s of its compulsory traffic (g and u read
       once, e4m3 written once)

Kernel configurations: --configs "rows:warps,...". The MLP rows time
quant.swiglu (fused where it runs) against the unfused matmul expression.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import bench
from pflash_jax.models import act_quant, quant


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=3072)
    ap.add_argument("--configs", default="1:4,1:2,1:8,2:4,2:8,4:8,8:8")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    R, F, D = a.seq, a.inter, a.hidden
    ks = jax.random.split(jax.random.key(0), 8)
    g = (30 * jax.random.normal(ks[0], (R, F))).astype(jnp.bfloat16)
    u = (30 * jax.random.normal(ks[1], (R, F))).astype(jnp.bfloat16)
    xs = jax.random.uniform(ks[2], (R, 1), minval=0.01, maxval=0.05)
    wg, wu = (jax.random.uniform(k, (F,), minval=0.001, maxval=0.01) for k in ks[3:5])
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, [{R}, {F}]", flush=True)
    traffic = R * F * (2 + 2 + 1)

    def xla(g, u, xs, wg, wu):  # quant.matmul's expression: bf16 roundings, two passes
        gd = (g.astype(jnp.float32) * xs * wg).astype(jnp.bfloat16)
        ud = (u.astype(jnp.float32) * xs * wu).astype(jnp.bfloat16)
        return quant.quantize_rows(jnp, jax.nn.silu(gd) * ud, "fp8")

    rows = []

    def report(name, t):
        rows.append((name, t * 1e3, traffic / t / 1e9))
        print(f"{name:28s} {t * 1e3:8.3f} ms  {traffic / t / 1e9:7.0f} GB/s", flush=True)

    args = (g, u, xs, wg, wu)
    report("xla two-pass", bench.time_fn(jax.jit(xla), *args, warmup=2,
                                         repeats=a.repeats).median_s)
    ref = jax.jit(xla)(*args)[0].astype(jnp.float32)
    for cfg in a.configs.split(","):
        r, w = (int(x) for x in cfg.split(":"))
        fn = jax.jit(lambda *x, r=r, w=w: act_quant.silu_mul_quant(*x, rows=r, num_warps=w))
        try:
            t = bench.time_fn(fn, *args, warmup=2, repeats=a.repeats).median_s
        except Exception as e:  # noqa: BLE001  a configuration that does not compile
            print(f"kernel rows={r} warps={w}: failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        out = fn(*args)[0].astype(jnp.float32)
        diff = float(jnp.mean((out != ref).astype(jnp.float32)))
        report(f"kernel rows={r} warps={w}", t)
        print(f"  values differing from xla's: {diff:.2%}")

    hk = jax.random.split(ks[5], 4)
    h = jax.random.normal(hk[0], (1, R, D), jnp.bfloat16)
    ws = [jax.tree.map(jnp.asarray, quant.quantize_array(
        np.asarray(0.05 * jax.random.normal(k, s)), "fp8"))
        for k, s in zip(hk[1:], [(D, F), (D, F), (F, D)], strict=True)]
    unfused = jax.jit(lambda h, g, u, d: quant.matmul(
        jax.nn.silu(quant.matmul(h, g)) * quant.matmul(h, u), d))
    fused = jax.jit(quant.swiglu)
    print("swiglu takes the kernel:", "fp8_silu_mul_quant" in fused.lower(h, *ws).compile()
          .as_text())
    for name, f in (("mlp unfused", unfused), ("mlp swiglu", fused)):
        t = bench.time_fn(f, h, *ws, warmup=2, repeats=a.repeats).median_s
        print(f"{name:28s} {t * 1e3:8.3f} ms", flush=True)
    print("\n| way | ms | GB/s |\n| --- | --- | --- |")
    for name, ms, gbs in rows:
        print(f"| {name} | {ms:.3f} | {gbs:.0f} |")


if __name__ == "__main__":
    main()
