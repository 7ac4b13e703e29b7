"""Why PFlash loses answers the drafter found: the target's accuracy on one set of cases under
selections that differ in one thing each (issue 16's failure analysis).

    python experiments/probe_failures.py --tasks niah_multikey,niah_multivalue --seq 4096 \
        --cases 20 --out results/probe_failures_tiny_cpu

Per case (embedded tiny pair unless --drafter / --target name checkpoint folders), with the
pflash preset at --keep / --span (forced spans as the preset says):
- full: every token (the baseline);
- pflash: PFlash's own selection, original positions;
- renumbered: the same tokens at positions 0..K-1 (PFlash's text round trip);
- pflash+evidence: PFlash's selection plus every span holding an evidence needle (what the
  answer would be if recall were perfect, the rest of the selection unchanged);
- pflash-distractors: PFlash's selection less the spans holding distractor needles only;
- evidence+question: only the evidence spans and the spans of the last QUESTION tokens (the
  question), nothing else.
full vs pflash+evidence says whether the loss is the drafter's (missed evidence) or the
target's (it has the evidence and still fails: positions, distractors, missing context);
pflash vs pflash-distractors whether kept distractors mislead it; pflash vs renumbered what the
gaps in the positions cost. Writes rows.json (one row per case and variant) and table.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pflash_jax import bench
from pflash_jax.embedded import TINY_DIR, open_model
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.drafter import drafter_pass
from pflash_jax.pflash.pipeline import prefill_kept
from pflash_jax.pflash.spans import kept_positions, needle_recall, select_spans, span_scores
from pflash_jax.tasks import make_cases, score

VARIANTS = ("full", "pflash", "renumbered", "pflash+evidence", "pflash-distractors",
            "evidence+question")
QUESTION = 96  # tokens at the end taken as the question (the original's anchor window)


def spans_of(positions, span: int) -> np.ndarray:
    return np.unique(np.asarray(positions, np.int64) // span)


def variants(case, kept_spans, cfg, S: int) -> dict[str, tuple[np.ndarray, str]]:
    """variant -> (kept positions, positions mode) for one case."""
    sel = cfg.selection
    span = sel.span_size
    evidence = spans_of(case.needle_positions, span)
    distract = np.setdiff1d(spans_of(case.distractor_positions, span), evidence)
    question = spans_of(np.arange(max(0, S - QUESTION), S), span)

    def pos(spans):
        return kept_positions(np.asarray(spans, np.int64), span, S)

    return {"full": (np.arange(S, dtype=np.int32), "original"),
            "pflash": (pos(kept_spans), "original"),
            "renumbered": (pos(kept_spans), "renumbered"),
            "pflash+evidence": (pos(np.union1d(kept_spans, evidence)), "original"),
            "pflash-distractors": (pos(np.setdiff1d(kept_spans, distract)), "original"),
            "evidence+question": (pos(np.union1d(evidence, question)), "original")}


def run(tasks, S, n_cases, keep, span, drafter_dir, target_dir, max_new_tokens) -> list[dict]:
    drafter, target = open_model(drafter_dir), open_model(target_dir)
    tok = target.tokenizer
    cfg = preset("pflash", keep_ratio=keep, span_size=span, positions="original")
    rows = []
    for task in tasks:
        for i, case in enumerate(make_cases(task, n_cases, S, tok.path)):
            dp = drafter_pass(drafter, case.ids, cfg)
            kept_spans = select_spans(span_scores(dp.importance, span), cfg.selection)
            for name, (kept, mode) in variants(case, kept_spans, cfg, case.n_tokens).items():
                out = prefill_kept(target, case.ids, kept, mode, max_new_tokens=max_new_tokens,
                                   eos_id=tok.eos_token_id)
                rows.append({"task": task, "case": i, "S": case.n_tokens, "variant": name,
                             "acc": score(case, out, tok), "kept_frac": kept.size / case.n_tokens,
                             "recall": needle_recall(kept, case.needle_positions),
                             "distractor_kept": needle_recall(kept, case.distractor_positions)
                             if case.distractor_positions.size else None})
            print(f"{task} case {i}: " + ", ".join(
                f"{r['variant']} {r['acc']:.0f}" for r in rows[-len(VARIANTS):]), flush=True)
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| task | variant | accuracy | evidence recall | distractors kept | "
             "kept frac | cases |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for task in dict.fromkeys(r["task"] for r in rows):
        for v in VARIANTS:
            g = [r for r in rows if r["task"] == task and r["variant"] == v]
            dk = [r["distractor_kept"] for r in g if r["distractor_kept"] is not None]
            mean = lambda k, g=g: np.mean([r[k] for r in g])  # noqa: E731
            lines.append(f"| {task} | {v} | {mean('acc'):.2f} | {mean('recall'):.2f} | "
                         f"{np.mean(dk) if dk else float('nan'):.2f} | "
                         f"{mean('kept_frac'):.3f} | {len(g)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue,niah_multiquery")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--keep", type=float, default=0.05)
    ap.add_argument("--span", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--drafter", type=Path, default=TINY_DIR / "drafter")
    ap.add_argument("--target", type=Path, default=TINY_DIR / "target")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = run(a.tasks.split(","), a.seq, a.cases, a.keep, a.span, a.drafter, a.target,
               a.max_new_tokens)
    prov = bench.provenance()
    a.out.mkdir(parents=True, exist_ok=True)
    bench.write_metrics(a.out / "metrics.json", {"args": {k: str(v) for k, v in
                                                          vars(a).items()}, "rows": rows})
    text = table(rows, f"# Failure probe ({prov['device']}, jax {prov['jax']}, commit "
                       f"{prov['commit']}): S {a.seq}, keep {a.keep}, span {a.span}, pflash "
                       f"preset; generated by experiments/probe_failures.py")
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
