"""Does a quantized drafter score the prompt like the bf16 one? Both drafters of one pair on the
same held-out cases (issue 17's fp8 drafter: importance and needle recall against the bf16
drafter on the model organism).

    python experiments/compare_drafters.py --models-dir DIR --quantize fp8 \
        --tasks niah_single,niah_multikey --lengths 8192 --n-cases 12 --out results/X
    -> X/metrics.json, X/table.md (and the table printed)

Per case both drafters run the full PFlash pipeline (pflash preset, keep 0.05, span 32) in front
of the same target; per task and length the table gives each drafter's needle recall, the
Jaccard overlap of their kept positions, the Spearman rank correlation of their importance and
the overlap of their top-5% tokens. The models are `DIR/drafter` and `DIR/target` (default:
the embedded pair); the quantized drafter is the same checkpoint quantized on load
(models/quant.py: fp8 = W8A8 e4m3, int8 / int4 weight-only). Metrics are rewritten after every
row, so a time-boxed run keeps what it finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing their mean rank."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last rank of each distinct value
    return ((ends - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (average ranks for ties)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 1.0


def top_overlap(a: np.ndarray, b: np.ndarray, frac: float = 0.05) -> float:
    """|top(a) & top(b)| / |top(a)|, top = the frac largest entries."""
    k = max(1, int(round(frac * a.size)))
    ta, tb = set(np.argsort(-a)[:k].tolist()), set(np.argsort(-b)[:k].tolist())
    return len(ta & tb) / k


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = set(a.tolist()), set(b.tolist())
    return len(sa & sb) / max(1, len(sa | sb))


def render(rows: list[dict], head: str) -> str:
    lines = [head, "",
             "| task | S | cases | recall, unquantized | recall, quantized | kept Jaccard | "
             "importance Spearman | top-5% overlap |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['S']} | {r['n_cases']} | {r['recall_ref']:.3f} | "
                     f"{r['recall_quant']:.3f} | {r['kept_jaccard']:.3f} | "
                     f"{r['spearman']:.3f} | {r['top5_overlap']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models-dir", default=None, help="folder with drafter/ and target/")
    p.add_argument("--quantize", default="fp8", help="fp8 | int8 | int4")
    p.add_argument("--tasks", default="niah_single,niah_multikey")
    p.add_argument("--lengths", default="8192")
    p.add_argument("--n-cases", type=int, default=12)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import jax

    from pflash_jax.bench import provenance, write_metrics
    from pflash_jax.embedded import TINY_DIR
    from pflash_jax.models.quant import FORMATS
    from pflash_jax.pflash.config import preset
    from pflash_jax.pflash.pipeline import speculative_prefill
    from pflash_jax.pflash.spans import needle_recall
    from pflash_jax.run import load, weights_fingerprint
    from pflash_jax.run_config import ModelSpec
    from pflash_jax.tasks import make_cases

    if a.quantize not in FORMATS:
        raise SystemExit(f"compare_drafters: --quantize must be one of {FORMATS}, got "
                         f"{a.quantize!r}")
    root = Path(a.models_dir) if a.models_dir else TINY_DIR
    for role in ("drafter", "target"):
        if not (root / role / "config.json").exists():
            raise SystemExit(f"compare_drafters: no checkpoint at {root / role} "
                             f"(--models-dir needs drafter/ and target/)")

    def spec(name, role, quantize=None):
        return ModelSpec(name, path=str(root / role) if a.models_dir else None, embedded=role,
                         quantize=quantize)

    ref = load(spec("tiny_drafter", "drafter"), "drafter")
    quant = load(spec("tiny_drafter", "drafter", a.quantize), "drafter")
    target = load(spec("tiny_target", "target"), "target")
    attn = "cudnn" if jax.default_backend() == "gpu" else "reference"
    # the target's positions change none of the columns (recall, overlap, ranks)
    pcfg = preset("pflash", keep_ratio=0.05, span_size=32)
    tok = target.tokenizer
    weights = {role: weights_fingerprint(root / role) for role in ("drafter", "target")}
    prov = provenance()
    head = (f"Drafter {a.quantize} against the same drafter in its stored dtype, pflash preset, "
            f"keep 0.05, span 32; weights drafter {weights['drafter']}, target "
            f"{weights['target']}. Device {prov['device']}, jax {prov['jax']}, commit "
            f"{prov['commit']}. Generated by experiments/compare_drafters.py.")
    out = Path(a.out)
    rows: list[dict] = []
    for S in (int(s) for s in a.lengths.split(",")):
        for task in a.tasks.split(","):
            cases = make_cases(task, a.n_cases, S, tok.path)
            rec_r, rec_q, jac, rho, top = [], [], [], [], []
            for case in cases:
                r = speculative_prefill(ref, target, case.ids, pcfg, target_attn=attn)
                q = speculative_prefill(quant, target, case.ids, pcfg, target_attn=attn)
                rec_r.append(needle_recall(r.kept_positions, case.needle_positions))
                rec_q.append(needle_recall(q.kept_positions, case.needle_positions))
                jac.append(jaccard(r.kept_positions, q.kept_positions))
                rho.append(spearman(r.importance, q.importance))
                top.append(top_overlap(r.importance, q.importance))
            rows.append({"task": task, "S": S, "n_cases": len(cases),
                         "recall_ref": float(np.mean(rec_r)),
                         "recall_quant": float(np.mean(rec_q)),
                         "kept_jaccard": float(np.mean(jac)), "spearman": float(np.mean(rho)),
                         "top5_overlap": float(np.mean(top))})
            print(rows[-1], flush=True)
            write_metrics(out / "metrics.json", {"args": vars(a), "weights": weights,
                                                 "rows": rows})
            (out / "table.md").write_text(render(rows, head))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
