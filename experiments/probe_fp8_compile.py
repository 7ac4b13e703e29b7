"""Probe (issue 17): how long does XLA take to compile the fp8 W8A8 drafter GEMMs, and how
fast do they run against bf16? The 128K fp8 speed rows of session 7 sat >200 s before their
memory plan; this times each of the Qwen3-0.6B drafter's four GEMM shapes on its own, so the
stall can be pinned to a shape, a token count or an XLA flag. GPU (any backend runs it):

    XLA_FLAGS=... python experiments/probe_fp8_compile.py --seqs 8192,131072
    python experiments/probe_fp8_compile.py --jit-options xla_gpu_enable_triton_gemm=false
    -> one line per (seq, shape, format): compile s, warm ms, TFLOP/s, the GEMM XLA chose
"""

from __future__ import annotations

import argparse
import re
import time
from functools import partial

import jax
import jax.numpy as jnp

from pflash_jax import bench
from pflash_jax.models import quant
from pflash_jax.models.config import model_preset

GEMM_TARGET = re.compile(r'custom_call_target="([^"]+)"')


def shapes(cfg) -> dict[str, tuple[int, int]]:
    """The drafter's GEMMs [in, out]: fused q/k/v, o, fused gate/up, down."""
    D, H = cfg.hidden_size, cfg.head_dim
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * H
    return {"qkv": (D, qkv), "o": (cfg.num_attention_heads * H, D),
            "gate_up": (D, 2 * cfg.intermediate_size), "down": (cfg.intermediate_size, D)}


def parse_options(text: str) -> dict:
    """'name=value,...' -> jax.jit compiler_options (true/false -> bool, digits -> int)."""
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--jit-options: {item!r} is not name=value")
        low = value.strip().lower()
        out[name.strip()] = (low == "true" if low in ("true", "false")
                             else int(low) if low.lstrip("-").isdigit() else value.strip())
    return out


def probe(seq: int, name: str, n_in: int, n_out: int, fmt: str, options: dict) -> str:
    x = jax.random.normal(jax.random.key(0), (seq, n_in), jnp.bfloat16)
    w = 0.02 * jax.random.normal(jax.random.key(1), (n_in, n_out), jnp.float32)
    w = w.astype(jnp.bfloat16)
    out = jnp.float32
    if fmt.startswith("fp8"):  # fp8: the GEMM writes float32; fp8b: bf16 (quant.matmul)
        out = jnp.bfloat16 if fmt == "fp8b" else jnp.float32
        w = quant.to_device(quant.quantize_array(jax.device_get(w.astype(jnp.float32)), "fp8"))
    fn = jax.jit(partial(quant.matmul, fp8_out=out), compiler_options=options or None)
    t0 = time.perf_counter()
    compiled = fn.lower(x, w).compile()
    compile_s = time.perf_counter() - t0
    targets = sorted(set(GEMM_TARGET.findall(compiled.as_text())))
    t = bench.time_fn(lambda: compiled(x, w), warmup=1, repeats=10).median_s
    tflops = 2 * seq * n_in * n_out / t / 1e12
    return (f"seq {seq:>6} {name:<8} {fmt:<5} compile {compile_s:7.2f} s  warm {t * 1e3:8.3f} ms  "
            f"{tflops:6.0f} TFLOP/s  {','.join(targets) or 'no custom call (fused / triton)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen3-0.6b")
    ap.add_argument("--seqs", default="8192,131072", help="comma-separated token counts")
    ap.add_argument("--formats", default="bf16,fp8", help="bf16, fp8, fp8b (fp8 GEMM writing bf16)")
    ap.add_argument("--jit-options", default="",
                    help="jax.jit compiler_options for the GEMM, name=value,... (XLA flags "
                         "without the leading --)")
    args = ap.parse_args()
    options = parse_options(args.jit_options)
    cfg = model_preset(args.model)
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, jit options "
          f"{options or 'none'}", flush=True)
    for seq in (int(s) for s in args.seqs.split(",")):
        for name, (n_in, n_out) in shapes(cfg).items():
            for fmt in args.formats.split(","):
                print(probe(seq, name, n_in, n_out, fmt, options), flush=True)


if __name__ == "__main__":
    main()
