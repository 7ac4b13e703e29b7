"""Where the drafter's time goes on the GPU: a jax.profiler trace of one warm drafter pass,
its device ops summed by kind (issue 17's profile-backed breakdown).

    python experiments/profile_drafter.py --seq 131072 --density 0.1 --out DIR
    -> DIR/breakdown.json, DIR/table.md (and the table printed); DIR/trace: the raw trace
       (open it in TensorBoard / Perfetto; not meant for results/)

The drafter is a random-init Qwen3 of --model's shapes (bf16) under the pflash preset with a
fixed block density, as in the speedup experiment. Ops are read from the trace's device plane
(the line of XLA ops), grouped by kind from the op name and its HLO text: the block-sparse
attention kernel (Pallas: Mosaic GPU or Triton), GEMMs (cuBLAS / cuBLASLt / Triton GEMM
fusions), reductions, other fusions (norms, RoPE, casts, score folds), copies; "idle" is the
time inside the traced step with no op on that line (launch gaps, host work).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

KINDS = (  # (kind, pattern over "name | hlo text"), first match wins
    # our Pallas kernels by the names they are given (pallas_call name=...)
    ("block selection (Pallas)", r"flashprefill"),
    ("block-sparse attention (Pallas)",
     r"block_sparse|mosaic|triton_kernel|__gpu\$xla\.gpu\.triton|pallas"),
    # nvjet_*: cuBLAS's Hopper GEMM kernels (the names the H200 trace shows)
    ("GEMM", r"cublas|gemm|nvjet|\bdot\b|matmul"),
    ("sort (block selection's top-k)", r"^sort|\bsort\b"),
    ("collective", r"all-reduce|all-gather|reduce-scatter|collective"),
    ("reduction", r"\breduce\b|reduce-window|reduce_"),
    ("copy / transpose", r"^copy|transpose|dynamic-update-slice|\bcopy\b"),
    ("other fusion", r"fusion|loop_|input_"),
)


def kind_of(name: str, hlo: str = "") -> str:
    text = f"{name} | {hlo}".lower()
    for kind, pattern in KINDS:
        if re.search(pattern, text):
            return kind
    return "other"


def device_ops(profile) -> tuple[str, list[tuple[str, str, float, float]]]:
    """(line name, [(op name, hlo text, start ns, duration ns)]) of the busiest op line of the
    first device plane; ValueError when the trace has no device plane (a CPU run)."""
    planes = [p for p in profile.planes if p.name.startswith("/device:")]
    if not planes:
        raise ValueError("the trace has no device plane: profile on a GPU (on the CPU XLA "
                         "records host threads only)")
    best = None
    for line in planes[0].lines:
        if "module" in line.name.lower() or "step" in line.name.lower():
            continue  # module / step markers span the ops; the op line is what we sum
        evs = []
        for e in line.events:
            stats = dict(e.stats)
            hlo = str(stats.get("long_name") or stats.get("hlo_op") or "")
            evs.append((e.name, hlo, float(e.start_ns), float(e.duration_ns)))
        if best is None or len(evs) > len(best[1]):
            best = (line.name, evs)
    if best is None or not best[1]:
        raise ValueError(f"device plane {planes[0].name} has no op events")
    return best


def breakdown(ops: list[tuple[str, str, float, float]], top: int = 15) -> dict:
    """Time per kind and per op name (ms), busy vs the span from the first op's start to the
    last op's end, and the idle time between ops (overlaps counted once)."""
    ops = sorted(ops, key=lambda o: o[2])
    t0, t1 = ops[0][2], max(o[2] + o[3] for o in ops)
    busy, end = 0.0, t0
    for _, _, s, d in ops:  # union of the op intervals
        busy += max(0.0, s + d - max(s, end))
        end = max(end, s + d)
    per_kind, per_op, count = defaultdict(float), defaultdict(float), defaultdict(int)
    for name, hlo, _, d in ops:
        per_kind[kind_of(name, hlo)] += d
        key = re.sub(r"\.\d+$", "", name)  # fusion.12 and fusion.13: one row "fusion"
        per_op[(key, kind_of(name, hlo))] += d
        count[(key, kind_of(name, hlo))] += 1
    ms = 1e-6
    return {"span_ms": (t1 - t0) * ms, "busy_ms": busy * ms, "idle_ms": (t1 - t0 - busy) * ms,
            "n_ops": len(ops),
            "kinds": {k: v * ms for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": k[0], "kind": k[1], "ms": v * ms, "count": count[k]}
                        for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]]}


def table(b: dict, header: str) -> str:
    lines = [header, "", f"Traced span {b['span_ms']:.1f} ms: ops busy {b['busy_ms']:.1f} ms, "
             f"idle {b['idle_ms']:.1f} ms, {b['n_ops']} ops.", "",
             "| kind | ms | share of span |", "| --- | --- | --- |"]
    for k, v in b["kinds"].items():
        lines.append(f"| {k} | {v:.2f} | {v / b['span_ms']:.1%} |")
    lines.append(f"| idle (no op on the line) | {b['idle_ms']:.2f} | "
                 f"{b['idle_ms'] / b['span_ms']:.1%} |")
    lines += ["", "| op (numbered instances summed) | kind | count | ms |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {o['op']} | {o['kind']} | {o['count']} | {o['ms']:.2f} |" for o in b["top_ops"]]
    return "\n".join(lines) + "\n"


def _read_trace(trace_dir: Path):
    """The newest profiler trace under trace_dir -> jax.profiler.ProfileData."""
    import jax

    files = sorted(trace_dir.rglob("*.xplane.pb"))
    if not files:
        raise FileNotFoundError(f"no .xplane.pb under {trace_dir}")
    return jax.profiler.ProfileData.from_file(str(files[-1]))


def trace_drafter(model: str, seq: int, density: float, impl: str, trace_dir: Path,
                  fold: str = "xla", variant: dict | None = None):
    """One warm drafter pass of a random `model` under a profiler trace -> ProfileData.
    variant: the drafter's quantize / score_layers / attention_qk / attention_pv (None: bf16,
    all layers, the preset's attention)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pflash_jax.models.config import model_preset
    from pflash_jax.models.loading import Model
    from pflash_jax.models.params import init_params
    from pflash_jax.models.quant import init_quantized_params
    from pflash_jax.pflash.config import preset
    from pflash_jax.pflash.drafter import drafter_pass

    cfg = model_preset(model)
    v = variant or {}
    quantize = v.get("quantize")
    params = (init_quantized_params(cfg, jax.random.key(1), quantize) if quantize
              else init_params(cfg, jax.random.key(1), jnp.bfloat16))
    drafter = Model(cfg, params)
    opts = {k: v[k] for k in ("score_layers", "attention_qk", "attention_pv") if v.get(k)}
    pcfg = preset("pflash", block_density=density, attention_impl=impl, fold_impl=fold, **opts)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, seq).astype(np.int32)
    for _ in range(2):  # compile, then one warm call outside the trace
        drafter_pass(drafter, ids, pcfg)
    with jax.profiler.trace(str(trace_dir)):
        dp = drafter_pass(drafter, ids, pcfg)
    return _read_trace(trace_dir), dp


def trace_target(model: str, n_tokens: int, trace_dir: Path):
    """One warm target prefill (pipeline.prefill_at, as PFlash's target stage runs it: the
    kept tokens' bucket, a cache of that length, attention "auto") of a random `model` of
    n_tokens tokens under a profiler trace -> (ProfileData, wall seconds of the traced call)."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from pflash_jax.models.config import model_preset
    from pflash_jax.models.params import init_params
    from pflash_jax.pflash.pipeline import bucket, prefill_at

    cfg = model_preset(model)
    params = init_params(cfg, jax.random.key(2), jnp.bfloat16)
    nb = bucket(n_tokens)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, nb)), jnp.int32)
    pos = jnp.arange(nb, dtype=jnp.int32)[None]

    def call():
        lg, cache = prefill_at(params, cfg, ids, pos, jnp.int32(n_tokens), attn="auto",
                               cache_len=nb)
        return jax.block_until_ready(lg)

    for _ in range(2):  # compile, then one warm call outside the trace
        call()
    with jax.profiler.trace(str(trace_dir)):
        t = time.perf_counter()
        call()
        wall = time.perf_counter() - t
    return _read_trace(trace_dir), wall


def header(args: dict, prov: dict, forward_s: float) -> str:
    if args.get("stage") == "target":
        return (f"# Target prefill profile: {args['model']}, {args['tokens']} kept tokens "
                f"({prov['device']}, jax {prov['jax']}, commit {prov['commit']}); prefill_at "
                f"{1e3 * forward_s:.1f} ms (the traced call, wall); generated by "
                f"experiments/profile_drafter.py --stage target")
    return (f"# Drafter profile: {args['model']}, {args['seq']} tokens, density "
            f"{args['density']}, impl {args['impl']}, fold {args.get('fold', 'xla')}"
            + "".join(f", {k} {args[k]}" for k in ("quantize", "score_layers", "qk", "pv")
                      if args.get(k) not in (None, "None"))
            + " "
            f"({prov['device']}, jax {prov['jax']}, "
            f"commit {prov['commit']}); drafter_forward {1e3 * forward_s:.1f} ms (the traced "
            f"call, wall); generated by experiments/profile_drafter.py")


def rekind(b: dict) -> dict:
    """A recorded breakdown's kinds re-derived with today's KINDS: each top op by its name, the
    rest of each recorded kind (its ops outside the top list) kept under that kind, marked as
    such. For breakdowns written before a KINDS change; the recorded times are not touched."""
    kinds = defaultdict(float)
    rest = dict(b["kinds"])
    top = []
    for o in b["top_ops"]:
        rest[o["kind"]] = rest.get(o["kind"], 0.0) - o["ms"]
        o = {**o, "kind": kind_of(o["op"])}
        kinds[o["kind"]] += o["ms"]
        top.append(o)
    for k, v in rest.items():
        if v > 1e-6:
            kinds[f"{k} (ops outside the top {len(top)}, as recorded)"] += v
    return {**b, "kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])), "top_ops": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="drafter", choices=("drafter", "target"),
                    help="target: PFlash's target prefill of --tokens kept tokens instead")
    ap.add_argument("--tokens", type=int, default=6528,
                    help="--stage target: kept tokens (6,528 = 5%% of 128K as the speed rows)")
    ap.add_argument("--model", default=None,
                    help="default qwen3-0.6b (drafter) / qwen3-8b (target)")
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--impl", default="auto", help="drafter attention: auto | triton | mosaic")
    ap.add_argument("--fold", default="xla", choices=("xla", "triton", "auto"),
                    help="the scoring fold's kernel (ScoringConfig.fold_impl)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quantize", default=None, choices=(None, "fp8", "int8", "int4"),
                    help="drafter weights (models/quant.py); default bf16")
    ap.add_argument("--score-layers", type=int, default=None,
                    help="score from (and run) the first k drafter layers (early exit)")
    ap.add_argument("--qk", default=None, choices=(None, "model", "fp8"),
                    help="PFlashConfig.attention_qk")
    ap.add_argument("--pv", default=None, choices=(None, "model", "fp8"),
                    help="PFlashConfig.attention_pv (fp8 needs --qk fp8)")
    ap.add_argument("--rekind", action="store_true",
                    help="no trace: re-derive the kinds of --out's breakdown.json (rekind) and "
                         "rewrite its table.md")
    a = ap.parse_args()
    a.model = a.model or ("qwen3-8b" if a.stage == "target" else "qwen3-0.6b")
    from pflash_jax import bench

    if a.rekind:
        b = rekind(json.loads((a.out / "breakdown.json").read_text()))
        prov = b["provenance"]
        wall = b.get("drafter_forward_s", b.get("target_prefill_s"))
        (a.out / "table.md").write_text(table(b, header(b["args"], prov, wall)
                                              + " (kinds re-derived by --rekind)"))
        print((a.out / "table.md").read_text())
        return

    a.out.mkdir(parents=True, exist_ok=True)
    trace_dir = Path(tempfile.mkdtemp(dir=a.out, prefix="trace-"))
    if a.stage == "target":
        profile, wall = trace_target(a.model, a.tokens, trace_dir)
        extra = {"target_prefill_s": wall}
    else:
        variant = {"quantize": a.quantize, "score_layers": a.score_layers,
                   "attention_qk": a.qk, "attention_pv": a.pv}
        profile, dp = trace_drafter(a.model, a.seq, a.density, a.impl, trace_dir, a.fold,
                                    variant)
        wall = dp.timings["drafter_forward"]
        extra = {"drafter_forward_s": wall, "block_density": dp.block_density}
    try:
        line, ops = device_ops(profile)
    except ValueError as e:
        raise SystemExit(f"profile_drafter: {e}") from None
    b = breakdown(ops)
    b.update(line=line, **extra, args={k: str(v) for k, v in vars(a).items()})
    prov = bench.provenance()
    bench.write_metrics(a.out / "breakdown.json", b)
    text = table(b, header(b["args"], prov, wall))
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
