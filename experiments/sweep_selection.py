"""Selection variants on one drafter pass: eval_tiny's rows (PFlash accuracy, drafter recall,
kept fraction) for several span-selection settings of one preset, each case scored by the
drafter once (issue 16's 8K budget sweep).

    python experiments/sweep_selection.py --preset pflash_qa --lengths 8192 --cases 16 \
        --tasks niah_multikey niah_multikey:n_distractors=7 \
        --variant base='{}' --variant h1t4='{forced_head_spans: 1, forced_tail_spans: 4}' \
        --out results/budget_8k_v2_cpu/sweep

Importance depends on the scoring options only, so variants that differ in selection options
(span_size, forced spans, anchors, ...) share the drafter pass and give what eval_tiny would
give them one at a time, at the cost of one target prefill each; a variant that changes a
scoring or drafter option is refused. Each variant's rows go to OUT/NAME/metrics.json and
table.md in eval_tiny's format, so experiments/compare_evals.py reads them, and one line per
case to OUT/NAME/cases.jsonl (the failure analysis: the answer given and wanted, recall, and
how many evidence needles survived whole). Embedded v2 pair; keep ratio as eval_tiny sets it
and the preset's positions (pflash_qa: renumbered) unless a variant sets its own (`{positions:
original}` changes only the target's prefill, so it shares the drafter pass too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np
import yaml
from tqdm import tqdm

from pflash_jax.bench import provenance, write_metrics
from pflash_jax.embedded import TINY_DIR
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.drafter import drafter_pass
from pflash_jax.pflash.pipeline import check_inputs, prefill_selected
from pflash_jax.pflash.spans import needle_recall
from pflash_jax.run import load, weights_fingerprint
from pflash_jax.run_config import ModelSpec
from pflash_jax.tasks import make_cases, score
from pflash_jax.tasks.grading import continuation_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_tiny import answer_budget, parse_task, render  # noqa: E402


def variant_configs(name: str, keep: float, variants: dict[str, dict]) -> dict:
    """name -> PFlashConfig; every variant must share the first one's drafter pass."""
    # eval_tiny's keep ratio unless a variant sets its own (positions is a target-side option:
    # a variant at original positions shares the drafter pass too)
    cfgs = {v: preset(name, **{"keep_ratio": keep, **o})
            for v, o in variants.items()}
    first = next(iter(cfgs.values()))
    for v, c in cfgs.items():
        drafter_side = lambda c: (c.scoring, c.attention_impl, c.alpha, c.block_density,  # noqa: E731
                                  c.block_size)
        if drafter_side(c) != drafter_side(first):
            raise SystemExit(f"sweep_selection: variant {v!r} changes a scoring or drafter "
                             "option: it cannot share the drafter pass (use eval_tiny)")
    return cfgs


def needle_runs(positions) -> list[np.ndarray]:
    """A case's needle token positions split into needles (runs of consecutive positions)."""
    p = np.asarray(positions).reshape(-1)
    return np.split(p, np.flatnonzero(np.diff(p) > 1) + 1) if p.size else []


def case_record(case, i: int, result, tok) -> dict:
    """One case of one variant, for cases.jsonl."""
    kept = np.asarray(result.kept_positions)
    whole = [bool(np.isin(n, kept).all()) for n in needle_runs(case.needle_positions)]
    return {"case": i, "seed": int(case.seed), "acc": score(case, result.tokens, tok),
            "recall": needle_recall(kept, case.needle_positions),
            "needles_whole": int(sum(whole)), "needles": len(whole),
            "distractors_kept": (needle_recall(kept, case.distractor_positions)
                                 if case.distractor_positions.size else None),
            "answer": continuation_text(result.tokens, tok), "want": list(case.answers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pflash_qa")
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--lengths", default="8192")
    ap.add_argument("--tasks", nargs="+", default=["niah_single", "niah_multikey"],
                    help="eval_tiny task entries, e.g. niah_multikey:n_distractors=7")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=YAML flat overrides over the preset, e.g. h1t4='{forced_tail_"
                         "spans: 4}'")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    variants = {}
    for item in a.variant:
        v, eq, text = item.partition("=")
        if not eq:
            raise SystemExit(f"sweep_selection: --variant {item!r} is not NAME=YAML")
        variants[v] = yaml.safe_load(text) or {}
    try:
        cfgs = variant_configs(a.preset, a.keep, variants)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"sweep_selection: {e}") from None
    drafter, target = (load(ModelSpec(n, embedded=r), r)
                       for n, r in (("tiny_drafter", "drafter"), ("tiny_target", "target")))
    attn = "cudnn" if jax.default_backend() == "gpu" else "reference"
    tok = target.tokenizer
    weights = {r: weights_fingerprint(TINY_DIR / r) for r in ("drafter", "target")}
    base = next(iter(cfgs.values()))
    rows = {v: [] for v in cfgs}
    per_case = {v: [] for v in cfgs}

    def save(complete: bool):
        for v, c in cfgs.items():
            cfg = {"preset": a.preset, "keep_ratio": a.keep, "span_size": c.selection.span_size,
                   "attention_impl": c.attention_impl, "overrides": variants[v],
                   "n_cases": a.cases, "driver": "experiments/sweep_selection.py"}
            out = a.out / v
            write_metrics(out / "metrics.json", {"config": cfg, "pflash_config": c.to_dict(),
                                                 "weights": weights, "complete": complete,
                                                 "rows": rows[v]})
            (out / "table.md").write_text(render(rows[v], provenance(), cfg))
            (out / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_case[v]))

    for S in (int(s) for s in a.lengths.split(",")):
        for entry in a.tasks:
            task, opts = parse_task(entry)
            cases = make_cases(task, a.cases, S, tok.path, **opts)
            n_new = answer_budget(cases, tok)
            got = {v: ([], [], []) for v in cfgs}  # accuracy, recall, kept fraction
            bar = tqdm(cases, desc=f"S={S} {entry}", unit="case", leave=False)
            for i, case in enumerate(bar):
                ids = check_inputs(drafter, target, case.ids, base, max_new_tokens=n_new)
                dp = drafter_pass(drafter, ids, base)
                for v, c in cfgs.items():
                    r = prefill_selected(target, ids, dp, c, max_new_tokens=n_new,
                                         target_attn=attn)
                    rec = case_record(case, i, r, tok)
                    per_case[v].append({"task": entry, "S": S, **rec})
                    got[v][0].append(rec["acc"])
                    got[v][1].append(rec["recall"])
                    got[v][2].append(r.n_kept / S)
                bar.set_postfix_str(", ".join(  # the running accuracy per variant
                    f"{v} {np.mean(g[0]):.2f}" for v, g in got.items()))
            for v, (acc, rec, kept) in got.items():
                rows[v].append({"task": entry, "S": S, "n_cases": len(cases), "full_acc": None,
                                "pflash_acc": float(np.mean(acc)), "recall": float(np.mean(rec)),
                                "kept_frac": float(np.mean(kept))})
            print(f"S={S} {entry}: " + ", ".join(
                f"{v} {rows[v][-1]['pflash_acc']:.2f}/{rows[v][-1]['recall']:.2f}"
                for v in cfgs), flush=True)
            save(complete=False)
    save(complete=True)


if __name__ == "__main__":
    main()
