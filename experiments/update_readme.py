"""Regenerate every sweep report in results/ and the README's results section from the
recorded metrics files (never edit either by hand). One command:

    python experiments/update_readme.py            # reports (REPORTS below) + README section
    python experiments/update_readme.py --no-reports

Reads results/speedup (run metrics), results/quality and results/quality_cpu_4k_current (run
metrics) and results/tiny_eval, and replaces the text between the results markers in README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments"))
from report import find_metrics, flat_rows, write_report  # noqa: E402

# (metrics folder, report folder) of every recorded sweep, relative to results/
REPORTS = [("speedup/runs", "speedup/report"), ("quality/runs", "quality"),
           ("speedup_h200_triton", "speedup_h200_triton/report"),
           ("quality_h200_16k/runs", "quality_h200_16k"),
           ("quality_cpu_4k/runs", "quality_cpu_4k"),
           ("quality_cpu_4k_current/runs", "quality_cpu_4k_current")]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def speed_section() -> str:
    rows = [r for r in flat_rows(find_metrics([str(REPO / "results/speedup")]))
            if r["repeats"] > 0]
    if not rows:
        return ""
    rows.sort(key=lambda r: (r["target"], r["S"]))
    top_S = max(r["S"] for r in rows)
    tops = [r for r in rows if r["S"] == top_S]
    t = tops[0]
    heads = "; ".join(f"**{r['speedup']:.1f}x** with a {r['target']} target "
                      f"({r['pflash_ttft_s']:.2f} s against {r['full_ttft_s']:.2f} s"
                      + (f"; both paths sequence-chunked by {r['chunk']}, {r['repeats']} timed "
                         f"repeat(s)" if r.get("chunk") else "") + ")"
                      for r in tops)
    lines = [f"**At {top_S:,} tokens PFlash reaches the first token sooner than full prefill**: "
             f"{heads}. Random-init {t['drafter']} drafter with {t['block_density']:.1%} of "
             f"attention blocks kept (fixed density), keep ratio {t['keep_ratio']}, span "
             f"{t['span_size']}, {t['dtype']}, one {t['device']}, jax {t['jax']}, commit(s) "
             f"{', '.join(sorted({r['commit'] for r in rows}))} (see results/README.md). "
             f"Attention kernels (drafter / full prefill and target): "
             f"{t['kernels']}; the baseline is the same target's full prefill, timed in the same "
             f"process. Random weights measure speed only.", "",
             "| target | S | full prefill TTFT (s) | PFlash TTFT (s) | drafter (s) | "
             "target prefill (s) | kept | speedup |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['S']:,} | {r['full_ttft_s']:.3f} | "
                     f"{r['pflash_ttft_s']:.3f} | {r['pflash_drafter_forward_s']:.3f} | "
                     f"{r['pflash_target_prefill_s']:.3f} | {r['kept_frac']:.1%} | "
                     f"**{r['speedup']:.2f}x** |")
    lines.append("\nFull table with every stage: `results/speedup/report/tables.md`.")
    return "\n".join(lines)


def quality_section(span: int = 32) -> str:
    rows = flat_rows(find_metrics([str(REPO / "results/quality")]))
    rows = [r for r in rows if r["span_size"] == span]
    if not rows:
        return ""
    n = rows[0]["n_cases"]
    devices = ", ".join(sorted({r["device"] for r in rows}))
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    head = []
    for pre in sorted({r["preset"] for r in rows}):
        g = [r for r in rows if r["preset"] == pre and r["keep_ratio"] == 0.05
             and r["task"] in ("niah_single", "niah_pflash")]
        if g:
            lengths = ", ".join(f"{s // 1024}K" for s in sorted({r["S"] for r in g}))
            head.append(f"{pre} {np.mean([r['pflash_acc'] for r in g]):.2f} against full "
                        f"prefill {np.mean([r['full_acc'] for r in g]):.2f} ({lengths})")
    out = ([f"\n**Accuracy at the speed rows' setting (keep 0.05, span {span})**, single-needle "
            f"tasks (niah_single, niah_pflash) on the tiny pair: " + "; ".join(head) + "."]
           if head else [])
    weights = sorted({r.get("target_weights") or "not recorded" for r in rows})
    out += [f"\nQuality on the tiny pair as embedded at commit {commits} (trained here; DESIGN "
           f"section 5; target weights fingerprint: {', '.join(weights)}), {n} held-out "
           f"cases per task and length, span {span} (the speedup's), {devices}. Accuracy "
           f"(exact match) of PFlash at each keep ratio beside full prefill "
           f"of the same cases, averaged over the lengths run (S column). The tiny target was "
           f"trained to 16K, so this is where quality is measured; the 128K speed rows above "
           f"use random weights.", ""]
    out += keep_table(rows)
    out.append("\nEvery span size x keep ratio cell, drafter needle recall, kept fraction and "
               "plots (accuracy heatmap per preset and length, accuracy against keep ratio): "
               "`results/quality/tables.md`. Cells not run are absent there.")
    return "\n".join(out)


def keep_table(rows) -> list[str]:
    """Header, then one line per (task, preset): full-prefill accuracy and PFlash accuracy per
    keep ratio, each averaged over the lengths run."""
    keeps = sorted({r["keep_ratio"] for r in rows})
    out = ["| task | preset | S | full | " + " | ".join(f"keep {k}" for k in keeps) + " |",
           "| --- | --- | --- | --- |" + " --- |" * len(keeps)]
    for task, pre in sorted({(r["task"], r["preset"]) for r in rows}):
        g = [r for r in rows if r["task"] == task and r["preset"] == pre]
        lengths = sorted({r["S"] for r in g})
        full = np.mean([r["full_acc"] for r in g])
        cells = []
        for k in keeps:
            v = [r["pflash_acc"] for r in g if r["keep_ratio"] == k]
            cells.append(f"{np.mean(v):.2f}" if v else "-")
        out.append(f"| {task} | {pre} | {', '.join(f'{s // 1024}K' for s in lengths)} | "
                   f"{full:.2f} | " + " | ".join(cells) + " |")
    return out


CURRENT = "results/quality_cpu_4k_current"  # the current target's grid jobs (CPU, 4K)


def current_quality_section(span: int = 32) -> str:
    """The same table for the current embedded target (session 3), which results/quality's GPU
    sweep predates: needle tasks at 4K, run on the CPU while no device time was left."""
    rows = [r for r in flat_rows(find_metrics([str(REPO / CURRENT)])) if r["span_size"] == span]
    if not rows:
        return ""
    weights = ", ".join(sorted({r.get("target_weights") or "not recorded" for r in rows}))
    devices = ", ".join(sorted({r["device"] for r in rows}))
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    return "\n".join([
        f"\nThe same table for the CURRENT tiny target (weights fingerprint {weights}), needle "
        f"tasks at 4K only, {rows[0]['n_cases']} held-out cases per cell, span {span}, {devices} "
        f"(float32), commit {commits}; every cell: `{CURRENT}/tables.md`:", "",
        *keep_table(rows)])


def tiny_eval_section() -> str:
    """results/tiny_eval/**/metrics.json (one eval_tiny run per length) as one table."""
    files = sorted((REPO / "results/tiny_eval").rglob("metrics.json"))
    if not files:
        return ""
    ms = [json.loads(p.read_text()) for p in files]
    rows = [r for m in ms for r in m["rows"]]
    lengths = sorted({r["S"] for r in rows})
    m = ms[0]
    pflash = any(r.get("pflash_acc") is not None for r in rows)
    what = (f"full prefill / PFlash ({m['config']['preset']} preset, keep "
            f"{m['config']['keep_ratio']}, span {m['config']['span_size']})" if pflash
            else "full prefill")
    commits = ", ".join(sorted({m["provenance"]["commit"] for m in ms}))
    out = [f"\nTiny pair, {what} accuracy on {rows[0]['n_cases']} held-out cases per cell, "
           f"drafter needle recall at keep {m['config']['keep_ratio']} in brackets "
           f"({m['provenance']['device']}, commit {commits}; `results/tiny_eval`):", "",
           "| task | " + " | ".join(f"{s:,}" for s in lengths) + " |",
           "| --- |" + " --- |" * len(lengths)]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for s in lengths:
            r = next((r for r in rows if r["task"] == task and r["S"] == s), None)
            if r is None:
                cells.append("-")
                continue
            acc = f"{r['full_acc']:.2f}"
            if r.get("pflash_acc") is not None:
                acc += f" / {r['pflash_acc']:.2f}"
            cells.append(f"{acc} ({r['recall']:.2f})")
        out.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    if "--no-reports" not in sys.argv[1:]:
        res = REPO / "results"
        for src, out in REPORTS:
            if (res / src).exists():
                print(f"report: results/{src} -> {write_report([str(res / src)], res / out)}")
    body = "\n".join(s for s in (speed_section(), quality_section(), current_quality_section(),
                                  tiny_eval_section()) if s)
    readme = REPO / "README.md"
    text = readme.read_text()
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    stamp = "\n<!-- generated by experiments/update_readme.py from results/; do not edit -->\n"
    readme.write_text(text[:a] + stamp + "## Results\n\n" + body + "\n" + text[b:])
    print(body)


if __name__ == "__main__":
    main()
