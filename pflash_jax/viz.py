"""Plotting helpers for the notebooks (matplotlib, imported lazily so the package needs no
display stack): block masks, drafter importance with the needle and kept spans, result rows.

Every plotting function draws a new figure and returns it; notebooks call `plt.show()`.
`load_results` reads metrics.json and rows.jsonl files with pflash_jax/report.py's own
functions, so the notebook tables are the report's tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KEPT_COLOR, DROPPED_COLOR, NEEDLE_COLOR = "tab:blue", "0.88", "tab:red"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def runs(positions) -> list[tuple[int, int]]:
    """Sorted token positions -> [start, end) runs of consecutive positions."""
    p = np.asarray(positions).reshape(-1)
    if p.size == 0:
        return []
    p = np.unique(p)
    breaks = np.flatnonzero(np.diff(p) != 1)
    starts = np.concatenate([[p[0]], p[breaks + 1]])
    ends = np.concatenate([p[breaks] + 1, [p[-1] + 1]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


# ---------------------------------------------------------------- block masks
def draw_block_mask(block_mask, *, batch: int = 0, heads=(0,), title: str | None = None):
    """Kept key blocks (rows: query blocks, columns: key blocks) of the given heads.

    block_mask: a BlockMask or a bool array [M,M] / [B,N,M,M]. Kept blocks are dark, causal
    blocks that were skipped light grey, blocks above the diagonal white.
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap

    mask = np.asarray(getattr(block_mask, "mask", block_mask), bool)
    if mask.ndim == 2:
        mask = mask[None, None]
    heads = [h for h in heads if h < mask.shape[1]] or [0]
    M = mask.shape[-1]
    causal = np.tril(np.ones((M, M), bool))
    fig, axes = plt.subplots(1, len(heads), figsize=(2.8 * len(heads) + 0.4, 3.0), squeeze=False)
    cmap = ListedColormap(["white", DROPPED_COLOR, KEPT_COLOR])
    for ax, h in zip(axes[0], heads, strict=True):
        m = mask[batch, h]
        img = np.where(m, 2, np.where(causal, 1, 0))
        ax.imshow(img, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        dens = m[causal].mean()
        ax.set_title(f"head {h}: {m.sum()} blocks, {dens:.0%} of causal", fontsize=8)
        ax.set_xlabel("key block n", fontsize=8)
        ax.set_ylabel("query block m", fontsize=8)
        ax.tick_params(labelsize=7)
    bs = getattr(block_mask, "block_size", None)
    fig.suptitle(title or f"block mask ({M} x {M} blocks" + (f" of {bs} tokens)" if bs else ")"),
                 fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the pipeline
def plot_importance(importance, *, needle_positions=(), kept_positions=None,
                    span_size: int | None = None, title: str = "drafter importance"):
    """Importance per prompt token, the needle tokens shaded, the kept spans drawn below.

    With span_size, the per-span mean (what selection ranks) is drawn as a step line too.
    """
    plt = _plt()
    imp = np.asarray(importance, np.float64)
    S = imp.shape[0]
    n_rows = 2 if kept_positions is not None else 1
    fig, axes = plt.subplots(n_rows, 1, figsize=(9, 3.2 if n_rows == 1 else 4.0), sharex=True,
                             squeeze=False, gridspec_kw={"height_ratios": [4, 1][:n_rows]})
    ax = axes[0, 0]
    ax.plot(np.arange(S), imp, lw=0.6, color="0.3", label="importance (token)")
    if span_size:
        from pflash_jax.pflash.spans import span_scores

        sc = span_scores(imp, span_size)
        edges = np.minimum(np.arange(sc.shape[0] + 1) * span_size, S)
        ax.stairs(sc, edges, color="tab:orange", lw=1.0, label=f"span mean ({span_size} tokens)")
    for i, (a, b) in enumerate(runs(needle_positions)):
        ax.axvspan(a - 0.5, b - 0.5, color=NEEDLE_COLOR, alpha=0.3,
                   label="needle" if i == 0 else None)
    ax.set_yscale("log" if np.all(imp > 0) and imp.max() / max(imp.min(), 1e-30) > 100
                  else "linear")
    ax.set_ylabel("importance")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncols=3)
    if kept_positions is not None:
        _draw_spans(axes[1, 0], kept_positions, S, needle_positions)
    axes[-1, 0].set_xlabel("prompt token position")
    axes[-1, 0].set_xlim(0, S)
    fig.tight_layout()
    return fig


def _draw_spans(ax, kept_positions, S: int, needle_positions=()):
    kept = runs(kept_positions)
    ax.broken_barh([(a, b - a) for a, b in kept], (0.55, 0.4), color=KEPT_COLOR)
    ax.broken_barh([(a, b - a) for a, b in runs(needle_positions)], (0.05, 0.4),
                   color=NEEDLE_COLOR)
    n = int(np.asarray(kept_positions).size)
    ax.set_yticks([0.25, 0.75], ["needle", "kept"], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"kept: {n} of {S} tokens ({n / S:.1%}) in {len(kept)} runs", fontsize=8)


def plot_kept_spans(kept_positions, S: int, *, needle_positions=(), xlim=None,
                    title: str | None = None):
    """The kept token runs over the prompt, with the needle underneath; xlim=(lo, hi) zooms."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.5))
    _draw_spans(ax, kept_positions, S, needle_positions)
    if title:
        ax.set_title(f"{title}; {ax.get_title()}", fontsize=8)
    ax.set_xlim(*(xlim or (0, S)))
    ax.set_xlabel("prompt token position")
    fig.tight_layout()
    return fig


def plot_ttft_breakdown(timings: dict[str, dict], stages=None, title: str = "TTFT breakdown"):
    """Stacked horizontal bars: one per path ({"PFlash": {stage: s}, "full": {...}})."""
    plt = _plt()
    from pflash_jax.pflash.pipeline import STAGES

    stages = stages or STAGES
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.45 * len(timings)))
    names = list(timings)
    for si, st in enumerate(stages):
        left = [sum(timings[n].get(s, 0.0) for s in stages[:si]) for n in names]
        ax.barh(names, [1e3 * timings[n].get(st, 0.0) for n in names],
                left=[1e3 * x for x in left], label=st, color=f"C{si}")
    ax.set_xlabel("ms")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- results
def load_results(root="results", *, verbose: bool = True) -> list[dict]:
    """Flat run rows (report.load_rows) of every metrics.json and rows.jsonl under `root`;
    [] when none.

    Says what it found and what is missing instead of raising: a fresh clone or CI may have an
    empty results/ folder, or only metrics of other experiments (kernel bench, training).
    """
    from pflash_jax import report

    root = Path(root)
    say = print if verbose else (lambda *a, **k: None)
    if not root.exists():
        say(f"{root}/ does not exist: no recorded results. Run e.g. `pflash-run` or "
            f"`python experiments/run.py -m experiment=smoke`, then "
            f"`python experiments/report.py outputs --out {root}/NAME`.")
        return []
    metrics, compact = report.find_sources([str(root)])
    paths = [p for p, _ in metrics]
    if not paths and not compact:
        say(f"no metrics.json or {report.ROWS} under {root}/ (it holds "
            f"{sum(1 for _ in root.rglob('*'))} other files).")
        return []
    rows = report.load_rows([str(root)])
    used = {r["source"] for r in rows}
    others = [str(p) for p in paths if str(p) not in used]
    say(f"{len(paths)} metrics.json and {len(compact)} {report.ROWS} under {root}/: "
        f"{len(rows)} pipeline runs"
        + (f"; not pipeline runs (see 'Other experiments'): {', '.join(others)}" if others else ""))
    if rows:
        have_speed = sum(r.get("full_ttft_s") is not None for r in rows)
        have_qual = sum(r.get("pflash_acc") is not None for r in rows)
        say(f"  with a full-prefill baseline (speed table): {have_speed}; with task scores "
            f"(quality table): {have_qual}")
    return rows


def results_tables(rows: list[dict]) -> str:
    """The report's speed and quality tables as one Markdown string ("" without rows)."""
    from pflash_jax import report

    st, qt = report.speed_table(rows), report.quality_table(rows)
    text = ""
    if st:
        text += "### Speed\n\n" + st
    if qt:
        text += "\n### Quality\n\n" + qt
    return text


def report_plots(rows: list[dict], out) -> list[Path]:
    """The report's own plots (those its rows allow: several S, several keep ratios), as PNGs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from pflash_jax import report

    return [out / f for f in report.plots(rows, out)]


def plot_result_rows(rows: list[dict]):
    """Per run row: TTFT of full prefill and PFlash (stage-stacked), and accuracy / recall.

    Drawn for any number of rows >= 1 (the report's plots need a sweep)."""
    plt = _plt()
    from pflash_jax.pflash.pipeline import STAGES

    labels = [f"{r['target']} S={r['S']}\nkeep {r['keep_ratio']} span {r['span_size']}"
              for r in rows]
    y = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 2.4 + 0.5 * len(rows)), sharey=True)
    left = np.zeros(len(rows))
    for si, st in enumerate(STAGES):
        w = np.array([1e3 * (r.get(f"pflash_{st}_s") or 0.0) for r in rows])
        a1.barh(y + 0.2, w, 0.38, left=left, color=f"C{si}", label=f"PFlash {st}")
        left += w
    full = np.array([1e3 * (r.get("full_ttft_s") or np.nan) for r in rows])
    a1.barh(y - 0.2, full, 0.38, color="0.5", label="full prefill")
    for i, r in enumerate(rows):
        if r.get("speedup"):
            a1.text(max(left[i], np.nan_to_num(full[i])), i, f" {r['speedup']:.2f}x",
                    va="center", fontsize=7)
    a1.set_yticks(y, labels, fontsize=7)
    a1.set_xlabel("TTFT (ms, median)")
    a1.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=3)
    for j, (key, name) in enumerate((("full_acc", "full acc"), ("pflash_acc", "PFlash acc"),
                                     ("recall", "drafter recall"))):
        a2.barh(y + (j - 1) * 0.27, [r.get(key) or 0.0 for r in rows], 0.25, label=name,
                color=("0.5", "C0", "C3")[j])
    a2.set_xlim(0, 1.05)
    a2.set_xlabel("exact match / recall")
    a2.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=3)
    fig.suptitle(f"{len(rows)} run(s) on {', '.join(sorted({r['device'] for r in rows}))}",
                 fontsize=9)
    fig.tight_layout()
    return fig


def other_results(root="results") -> list[tuple[Path, dict]]:
    """(path, metrics) of every metrics.json under root that is not a pipeline run
    (kernel bench, prefill baseline, tiny-pair eval...): their own scripts wrote a table.md
    beside them, which `show_other_results` displays."""
    import json

    from pflash_jax import report

    root = Path(root)
    if not root.exists():
        return []
    runs_ = {r["source"] for r in report.flat_rows(report.find_metrics([str(root)]))}
    out = []
    for p in report.find_metrics([str(root)]):
        if str(p) not in runs_:
            out.append((p, json.loads(p.read_text())))
    return out


def plot_kernel_grid(grid: list[dict], title: str = "block-sparse kernel vs cuDNN"):
    """Kernel-bench grid rows (seq_len, density, speedup[, speedup_incl_selection]):
    speedup over cuDNN dense causal attention against kept block density, one line per S."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, S in enumerate(sorted({r["seq_len"] for r in grid})):
        g = sorted((r for r in grid if r["seq_len"] == S), key=lambda r: r["density"])
        ax.plot([r["density"] for r in g], [r["speedup"] for r in g], "o-", color=f"C{i}",
                label=f"S={S}")
        if all("speedup_incl_selection" in r for r in g):
            ax.plot([r["density"] for r in g], [r["speedup_incl_selection"] for r in g], "x--",
                    color=f"C{i}", alpha=0.6)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="kept block density",
           ylabel="speedup over cuDNN (dashed: incl. selection)", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def show_other_results(root="results") -> int:
    """Show the table.md of each non-run metrics.json under root, and plot kernel-bench grids.
    Returns how many such metrics files there were."""
    plt = _plt()
    others = other_results(root)
    for path, m in others:
        prov = m.get("provenance", {})
        show_markdown(f"#### {path.parent}\n\n{prov.get('device', '?')}, jax {prov.get('jax', '?')}"
                      f", commit {prov.get('commit', '?')}")
        table = path.parent / "table.md"
        if table.exists():
            show_markdown(table.read_text())
        grid = m.get("grid")
        if isinstance(grid, list) and grid and {"seq_len", "density", "speedup"} <= set(grid[0]):
            plot_kernel_grid(grid, title=f"kernel bench: {path.parent.name} "
                                         f"({prov.get('device', '?')})")
            plt.show()
    return len(others)


def show_markdown(text: str) -> None:
    """Rendered Markdown in a notebook, plain text in a script."""
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            from IPython.display import Markdown, display

            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def show_image(path) -> None:
    """A PNG file inline in a notebook (its path in a script)."""
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            from IPython.display import Image, display

            display(Image(filename=str(path)))
            return
    except ImportError:
        pass
    print(f"plot written: {path}")
