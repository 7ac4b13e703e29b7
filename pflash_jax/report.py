"""Turn run metrics into the Markdown tables and PNG plots of docs/design.md section 7, and keep
what a sweep leaves in results/ small.

    python experiments/report.py SRC [SRC ...] --out results/NAME             # report
    python experiments/report.py SRC [SRC ...] --out results/NAME --compact   # + rows.jsonl

SRC: metrics.json files (pflash_jax/run.py's), rows.jsonl files, or folders searched
recursively for both (a Hydra multirun folder, a results/ folder). A folder holding a rows.jsonl
is read from that file alone: metrics.json files beside or below it would count twice. Writes
tables.md and the plots into --out, and rows.json (the flat rows it tabulated) unless --out is a
compact folder (one holding rows.jsonl, the record there). Nobody edits those by hand.

--compact also writes --out/rows.jsonl, all that results/ keeps of a sweep in place of its
metrics.json files (a grid job writes one per span x keep cell, each repeating the job's
full-prefill baseline and every case's token ids: 1,200 files and 35 MB for one quality sweep,
whose rows.jsonl is 3.3 MB). One JSON object a line:

- `{"kind": "job", "job": ID, ...}`, one per run job. The cells of a grid job share its prompts,
  drafter pass and full-prefill baseline, so this holds what they share: provenance, experiment,
  run_config and pflash_config (both without span_size and keep_ratio, which are per cell),
  models, kernels, and `cases`, the baseline of each prompt once:
  `[{case, task, S, full_acc, full_answer, expected}]`.
- `{"kind": "cell", "job": ID, ...}`, one per metrics.json: exactly the fields `flat_rows` gives
  (`source`: the file's path relative to its SRC folder), so a cell line is a table row by itself
  (`jq 'select(.kind == "cell")'`), plus `cases`, per prompt in the job's order:
  `[{case, n_kept, kept_frac, recall, pflash_acc, pflash_answer}]`.

Keys a run did not record (no task, no tokenizer) are absent. Dropped: token ids and the per-case
stage timings (a cell keeps their medians, which is what the tables show). A job's ID says what it
ran (task-S-preset-target[-chunkN]), not its Hydra job number. Tables from a rows.jsonl equal the
tables from the metrics it was made from (tests/experiments/test_report_compact.py).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from pflash_jax.roofline import floor, project

ROWS = "rows.jsonl"
# per case: the job's full-prefill baseline (once per job) and what each cell adds
BASELINE_KEYS = ("task", "S", "full_acc", "full_answer", "expected")
CELL_CASE_KEYS = ("n_kept", "kept_frac", "recall", "pflash_acc", "pflash_answer")
CELL_KNOBS = ("span_size", "keep_ratio")  # what differs between the cells of one grid job


def find_sources(srcs: list[str]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(metrics.json file, the folder its source paths are relative to) pairs and rows.jsonl
    files under srcs. metrics.json files in a folder that holds a rows.jsonl are left out."""
    metrics, compact = [], []
    for s in srcs:
        p = Path(s)
        if not p.exists():
            raise FileNotFoundError(f"report: {p} does not exist")
        if p.is_file():
            if p.name.endswith(".jsonl"):
                compact.append(p)
            else:
                metrics.append((p, _job_dir(p).parent))
            continue
        found = sorted(p.rglob(ROWS))
        covered = [f.parent for f in found]
        compact += found
        metrics += [(f, p) for f in sorted(p.rglob("metrics.json"))
                    if not any(f.is_relative_to(c) for c in covered)]
    return metrics, compact


def find_metrics(srcs: list[str]) -> list[Path]:
    """The metrics.json files under srcs (of any experiment), less those a rows.jsonl covers."""
    return [p for p, _ in find_sources(srcs)[0]]


def is_run(m: dict) -> bool:
    """A pflash_jax/run.py job's metrics (not a kernel bench's or a training run's)."""
    return "summary" in m and "pflash_config" in m


def flat_row(m: dict, source: str) -> dict:
    """The table row of one run cell (a metrics.json written by pflash_jax/run.py)."""
    prov, pc, s = m["provenance"], m["pflash_config"], m["summary"]
    cases = m["cases"]
    row = {
        "source": source, "experiment": m.get("experiment", "run"),
        "device": prov["device"], "jax": prov["jax"], "commit": prov["commit"],
        "drafter": m["models"]["drafter"]["name"], "target": m["models"]["target"]["name"],
        "target_weights": m["models"]["target"].get("weights"),  # None: not recorded
        "dtype": m["models"]["target"]["dtype"], "S": s["S"], "n_cases": s["n_cases"],
        # weight quantization and KV-cache format per model (absent before they existed)
        "drafter_quantize": m["models"]["drafter"].get("quantize"),
        "target_quantize": m["models"]["target"].get("quantize"),
        "target_kv_cache": m["models"]["target"].get("kv_cache", "bf16"),
        # devices the target was split over (target.tensor_parallel; absent before: 1)
        "target_tensor_parallel": m["models"]["target"].get("tensor_parallel", 1),
        "task": cases[0].get("task", m["run_config"]["task"]["name"]) if cases else None,
        # raw prompt or the target's chat template (metrics from before the option: raw)
        "prompt_format": m["run_config"]["task"].get("prompt_format", "raw"),
        "preset": pc["preset"], "keep_ratio": pc["keep_ratio"], "span_size": pc["span_size"],
        # forced spans counted inside the budget or on top (metrics from before the option: on
        # top, the only rule then)
        "forced_spans": pc.get("forced_spans", "on_top"),
        "alpha": pc["alpha"], "density_cfg": pc["block_density"],
        # early-exit scoring: the drafter's first k layers (None: all; absent before it existed)
        "score_layers": pc.get("score_layers"),
        # the scoring fold's kernel (speed only, not a result-changing variant; absent before
        # the option existed: xla)
        "fold_impl": pc.get("fold_impl", "xla"),
        "variant": variant_label(pc),
        # free span placement's stride (None: the grid, and in rows from before the option)
        "span_stride": pc.get("span_stride"),
        # question n-gram anchors (absent before the option existed: none)
        "anchors": pc.get("anchors", "none"),
        "n_anchor_spans": s.get("n_anchor_spans"),
        "attention": pc["attention_impl"], "rope": pc["rope"], "pooling": pc["pooling"],
        # resolved kernels ("auto" on this card); older metrics files lack them
        "kernels": "{drafter} / {target_and_full_prefill}".format(**m["kernels"])
        if "kernels" in m else "-",
        **{k: s.get(k) for k in ("speedup", "pflash_acc", "full_acc", "recall", "kept_frac",
                                 "block_density", "pflash_ttft_s", "full_ttft_s")},
        "peak_memory_gib": (m.get("peak_memory_bytes") or 0) / 2**30 or None,
        "repeats": m["run_config"].get("repeats", 1),
        "chunk": m["run_config"].get("chunk"),
        "random_init": bool(m["models"]["drafter"].get("random_init")
                            or m["models"]["target"].get("random_init")),
    }
    row.update(memory_columns(m))
    if cases:
        for path in ("pflash", "full"):
            if path in cases[0]:
                for stage in cases[0][path]:
                    row[f"{path}_{stage}_s"] = float(np.median([c[path][stage] for c in cases]))
        for k in ("pflash_compile_s", "full_compile_s"):
            if k in cases[0]:
                row[k] = float(np.median([c[k] for c in cases]))
    return row


def flat_rows(paths: list[Path]) -> list[dict]:
    """One row per run cell, from metrics.json files (others' metrics are skipped)."""
    rows = []
    for p in paths:
        m = json.loads(p.read_text())
        if is_run(m):
            rows.append(flat_row(m, str(p)))
    return rows


def read_compact(path: Path) -> list[dict]:
    """The records (job and cell lines) of a rows.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cell_rows(records: list[dict]) -> list[dict]:
    """The flat rows of compact records: each cell line less its job ID and cases."""
    return [{k: v for k, v in r.items() if k not in ("kind", "job", "cases")}
            for r in records if r["kind"] == "cell"]


def load_rows(srcs: list[str]) -> list[dict]:
    """Flat rows of every run cell under srcs, from metrics.json and rows.jsonl files alike."""
    metrics, compact = find_sources(srcs)
    return (flat_rows([p for p, _ in metrics])
            + [r for f in compact for r in cell_rows(read_compact(f))])


def _job_dir(p: Path) -> Path:
    """The job folder of a metrics file: a grid job writes <job>/cells/<cell>/metrics.json."""
    return p.parent.parent.parent if p.parent.parent.name == "cells" else p.parent


def _shared(m: dict) -> dict:
    """What the cells of one job have in common: the configs less the per-cell knobs."""
    rc = dict(m["run_config"], selection={k: v for k, v in m["run_config"]["selection"].items()
                                          if k not in CELL_KNOBS})
    pc = {k: v for k, v in m["pflash_config"].items() if k not in CELL_KNOBS}
    return {"experiment": m.get("experiment", "run"), "run_config": rc, "pflash_config": pc,
            "models": m["models"], "kernels": m.get("kernels")}


def _pick(case: dict, keys: tuple[str, ...]) -> dict:
    return {k: case[k] for k in keys if k in case}


def _job_name(row: dict) -> str:
    return "-".join(str(x) for x in (row["task"], row["S"], row["preset"], row["target"])) + (
        f"-chunk{row['chunk']}" if row.get("chunk") else "")


def _job_order(row: dict) -> tuple:
    return (str(row["task"]), row["preset"], row["target"], row["S"], row["chunk"] or 0)


def compact_records(srcs: list[str]) -> list[dict]:
    """The rows.jsonl records of every run job under srcs (rows.jsonl records pass through)."""
    metrics, compact = find_sources(srcs)
    out = [r for f in compact for r in read_compact(f)]
    names = {r["job"] for r in out if r["kind"] == "job"}
    jobs = defaultdict(list)
    for p, root in metrics:
        m = json.loads(p.read_text())
        if is_run(m):
            jobs[_job_dir(p)].append((flat_row(m, str(p.relative_to(root))), m))
    for cells in jobs.values():
        cells.sort(key=lambda c: (c[0]["span_size"], c[0]["keep_ratio"]))
    for folder, cells in sorted(jobs.items(), key=lambda kv: (_job_order(kv[1][0][0]), kv[0])):
        first = cells[0][1]
        name, n = _job_name(cells[0][0]), 1
        while name in names:  # a job run twice (e.g. another seed): keep both, apart
            n += 1
            name = f"{_job_name(cells[0][0])}-{n}"
        names.add(name)
        base = [{"case": i, **_pick(c, BASELINE_KEYS)} for i, c in enumerate(first["cases"])]
        for row, m in cells:
            mine = [{"case": i, **_pick(c, BASELINE_KEYS)} for i, c in enumerate(m["cases"])]
            # one baseline per case is right only for the cells of one job: same prompts,
            # same full prefill. Anything else in one folder is refused, not merged.
            if mine != base or _shared(m) != _shared(first):
                raise ValueError(f"report: {folder} is not one job: {row['source']} differs "
                                 f"from {cells[0][0]['source']} beyond span size / keep ratio")
        out.append({"kind": "job", "job": name, "provenance": first["provenance"],
                    **_shared(first), "cases": base})
        out += [{"kind": "cell", "job": name, **row,
                 "cases": [{"case": i, **_pick(c, CELL_CASE_KEYS)}
                           for i, c in enumerate(m["cases"])]} for row, m in cells]
    return out


def write_compact(records: list[dict], path: Path) -> Path:
    # no spaces after separators: 7% smaller, and jq / pandas read it all the same
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    return path


# Scoring and selection options a row may change from its preset (span size and keep ratio
# are table columns; the drafter's attention options are shown apart), and the value a row
# recorded before the option existed stands for.
VARIANT_KEYS = ("n_tail", "tail_mode", "rope", "pooling", "pool_width", "score_layers",
                "skip_layers", "tail_weights", "rounding", "forced_head_spans",
                "forced_tail_spans", "forced_spans", "anchors", "anchor_ngram",
                "anchor_window", "anchor_radius", "tail_rows", "question_lines", "trail_width",
                "span_stride", "positions", "attention_qk", "attention_pv")
LEGACY = {"forced_spans": "on_top", "anchors": "none", "score_layers": None, "skip_layers": 0,
          "tail_weights": "uniform", "tail_rows": "last", "question_lines": 2, "trail_width": 0,
          "span_stride": None, "attention_qk": "model",
          "attention_pv": "model"}


def variant_label(pc: dict) -> str:
    """The options of a row's pflash_config that differ from its preset's values, "k=v, ..."
    ("" for the preset itself): rows that differ in any of them are never pooled. Positions
    count too: the run configs and eval_tiny set "original" over the pflash presets' renumbered
    until the renumbered default (docs/design.md 1.2), so those runs read "positions=original".
    Rows recorded before an option existed carry its old behaviour (LEGACY: forced spans on
    top of the budget)."""
    from pflash_jax.pflash.config import PRESETS

    base = PRESETS.get(pc.get("preset"), {})
    diffs = []
    for k in VARIANT_KEYS:
        if k not in base:
            continue
        v = pc.get(k, LEGACY.get(k, base[k]))
        if v != base[k]:
            diffs.append(f"{k}={v}")
    return ", ".join(diffs)


def memory_columns(m: dict) -> dict:
    """The memory plan of the job's prompt length against what the process measured: planned
    needs per path, the budget, skip verdicts, and the peak after each path (the run job runs
    PFlash first, then full prefill, so the peak after PFlash is PFlash's own)."""
    cases, s = m["cases"], m["summary"]
    plans = m.get("memory_plans") or {}
    plan = plans.get(str(s["S"])) or m.get("memory_plan")
    out = {"device_profile": m["run_config"].get("device_profile"),
           "memory_budget_gb": m["run_config"].get("memory_budget_gb"),
           "pflash_skipped": s.get("pflash_skipped"), "full_skipped": s.get("full_skipped")}
    if plan:
        gib = lambda b: None if b is None else b / 2**30  # noqa: E731
        out["budget_gib"] = gib(plan.get("budget_bytes"))
        for path in ("pflash", "full"):
            out[f"plan_{path}_gib"] = gib(plan["paths"][path]["needs_bytes"])
        load = m.get("loading") or {}
        out["peak_after_load_gib"] = gib(load.get("device_peak_bytes"))
        out["peak_after_plan_gib"] = gib(load.get("device_peak_after_plan_bytes"))
        out["host_peak_load_gib"] = gib(load.get("host_peak_bytes"))
        last = cases[-1] if cases else {}
        for path in ("pflash", "full"):
            out[f"peak_after_{path}_gib"] = gib(last.get(f"peak_after_{path}_bytes"))
    return out


def memory_table(rows: list[dict]) -> str:
    """Runs under a memory budget (a device profile or memory_budget_gb): each path's TTFT or
    why it did not run, the planned bytes beside the measured peak, the 3090 projection."""
    rows = [r for r in rows if r.get("budget_gib") is not None
            and (r.get("device_profile") or r.get("memory_budget_gb") is not None
                 or r.get("pflash_skipped") or r.get("full_skipped"))]
    if not rows:
        return ""
    rows = sorted(rows, key=lambda r: (model_size_key(r["target"]), str(r.get("target_quantize")),
                                       r["S"], -(r.get("chunk") or 0)))
    head = ("| device | commit | profile | budget GiB | drafter -> target | weights | KV cache | "
            "S | chunk | "
            "PFlash TTFT (s) | full TTFT (s) | speedup | PFlash GiB: planned / measured | "
            "full GiB: planned / measured | loading GiB: device / host | "
            "RTX 3090 TTFT, projected: PFlash / full (s) |\n"
            "|" + " --- |" * 16 + "\n")
    body = ""
    for r in rows:
        def ttft(path, r=r):
            skipped = r.get(f"{path}_skipped")
            return skipped if skipped else _fmt(r.get(f"{path}_ttft_s"), ".4g")

        pf, fu = r.get("peak_after_pflash_gib"), r.get("peak_after_full_gib")
        # the peak after full prefill is the process's: it is full prefill's own only when it
        # rose above PFlash's
        fu_own = fu if (fu is not None and pf is not None and fu > pf
                        and not r.get("full_skipped")) else None
        # PFlash's own peak shows only where it rose above what loading the models (and
        # compiling the plan) reached before it
        ld = r.get("peak_after_load_gib")
        before = max((v for v in (ld, r.get("peak_after_plan_gib")) if v is not None),
                     default=None)
        # (unknown for metrics written before both were recorded: then not shown either)
        known = ld is not None and r.get("peak_after_plan_gib") is not None
        pf_own = None if (r.get("pflash_skipped") or not known or pf is None
                          or pf <= before) else pf
        speed = "-" if r.get("speedup") is None else f"**{r['speedup']:.2f}x**"
        body += (f"| {r['device']} | {r['commit']} | {r.get('device_profile') or '-'} | "
                 f"{_fmt(r['budget_gib'], '.1f')} | {r['drafter']} -> {r['target']} | "
                 f"{r.get('target_quantize') or r['dtype']} | {r.get('target_kv_cache')} | "
                 f"{r['S']} | {_fmt(r.get('chunk'))} | {ttft('pflash')} | {ttft('full')} | "
                 f"{speed} | "
                 f"{_plan_vs_peak(r.get('plan_pflash_gib'), pf_own)} | "
                 f"{_plan_vs_peak(r.get('plan_full_gib'), fu_own)} | "
                 f"{_fmt(ld, '.2f')} / {_fmt(r.get('host_peak_load_gib'), '.2f')} | "
                 f"{projected_cell(r)} |\n")
    body += ("\nPlanned: pflash_jax/memory.py's plan made before any compute (both models "
             "resident); measured: the device's peak bytes in use after the path ran (PFlash "
             "runs first and shows only where its peak rose above loading's and planning's; full "
             "prefill's "
             "own peak shows only where it rose above PFlash's), "
             "with the plan's error relative to it. A path that does not fit is not run and "
             "says so.\n")
    return head + body


def model_size_key(name: str) -> tuple:
    """Sort key: Qwen3 presets by parameter count (qwen3-8b before qwen3-14b), others by name."""
    m = re.search(r"[-_](\d+(?:[._]\d+)?)b$", name.lower())
    return (0, float(m.group(1).replace("_", ".")), name) if m else (1, 0.0, name)


def _plan_vs_peak(plan, peak) -> str:
    if plan is None:
        return "-"
    if peak is None:
        return f"{plan:.2f} / -"
    return f"{plan:.2f} / {peak:.2f} ({100 * (plan - peak) / peak:+.0f}%)"


def _fmt(v, spec=".3g"):
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def speed_table(rows: list[dict]) -> str:
    # repeats == 0: quality-only runs whose timings include compilation; not speed results
    rows = [r for r in rows if r.get("full_ttft_s") is not None and r["repeats"] > 0]
    if not rows:
        return ""
    rows = sorted(rows, key=lambda r: (r["target"], r["S"], r["keep_ratio"], r["span_size"]))
    head = ("| device | drafter -> target | dtype | attention: drafter / full + target | S | "
            "keep | span | alpha / density | blocks kept | full TTFT (s) | PFlash TTFT (s) | "
            "drafter | scoring | selection | "
            "target prefill | first token | speedup | "
            "roofline floor, this card: PFlash / full (s), speedup | "
            "RTX 3090 TTFT, projected: PFlash / full (s) | compile full / PFlash (s) | "
            "peak GiB |\n"
            "|" + " --- |" * 21 + "\n")
    body = ""
    for r in rows:
        sel = (f"density {r['density_cfg']}" if r["density_cfg"] is not None
               else f"alpha {r['alpha']}")
        if r.get("variant"):
            sel += f", {r['variant']}"
        tp = r.get("target_tensor_parallel", 1)
        device = r["device"] if tp == 1 else f"{tp}x {r['device']} (target split)"
        body += (f"| {device} | {r['drafter']} -> {r['target']} | {_formats(r)} | "
                 f"{r['kernels']} | {r['S']} | "
                 f"{r['keep_ratio']} | {r['span_size']} | {sel} | {_fmt(r['block_density'])} | "
                 f"{r['full_ttft_s']:.4g} | {r['pflash_ttft_s']:.4g} | "
                 f"{_fmt(r.get('pflash_drafter_forward_s'), '.4g')} | "
                 f"{_fmt(r.get('pflash_scoring_s'), '.2g')} | "
                 f"{_fmt(r.get('pflash_selection_s'), '.2g')} | "
                 f"{_fmt(r.get('pflash_target_prefill_s'), '.4g')} | "
                 f"{_fmt(r.get('pflash_first_token_s'), '.2g')} | **{r['speedup']:.2f}x** | "
                 f"{floor_cell(r)} | {projected_cell(r)} | "
                 f"{compile_cell(r.get('full_compile_s'))} / "
                 f"{compile_cell(r.get('pflash_compile_s'))} | "
                 f"{_fmt(r['peak_memory_gib'], '.3g')} |\n")
    body += ("\nRoofline floor: the row's work (GEMM and attention FLOPs at the measured block "
             "density, weights and activations once) at the card's measured matmul rate and "
             "bandwidth, attention counted at the GEMM rate: no kernel reaches it (roofline.floor)."
             "\n")
    body += ("\nRTX 3090 TTFT is a roofline projection, not a measurement: each measured stage "
             "time scaled by the ratio of the two cards' roofline times for that stage "
             "(pflash_jax/roofline.py, docs/design.md section 8); * marks a path whose weights "
             "and KV cache alone exceed the 3090's 24 GiB; - where a model, card or dtype is not "
             "modelled.\n")
    if any(r["random_init"] for r in rows):
        body += ("\nRandom-init weights attend diffusely, so their drafter block density is fixed "
                 "(not alpha-selected) and these rows measure speed only, not quality.\n")
    return head + body


def compile_cell(v) -> str:
    """Compile time = first call - warm median; about 0 or below when an earlier job of the
    same process compiled that path already."""
    if v is None:
        return "-"
    return f"{v:.3g}" if v > 0.05 else "~0 (compiled by an earlier job)"


def floor_cell(r: dict) -> str:
    """The arithmetic floor of a speed row on its own card (roofline.floor)."""
    f = floor(r)
    if f is None:
        return "-"
    return f"{f['pflash_ttft_s']:.3g} / {f['full_ttft_s']:.3g}, {f['speedup']:.1f}x"


def projected_cell(r: dict) -> str:
    """The RTX 3090 projection of a speed row, kept apart from every measured column."""
    p = project(r)
    if p is None:
        return "-"
    return " / ".join("-" if f"{k}_ttft_s" not in p else
                      f"{p[f'{k}_ttft_s']:.3g}" + ("" if p[f"{k}_fits"] else "*")
                      for k in ("pflash", "full"))


def _formats(r: dict) -> str:
    """A speed row's weight formats: the dtype, or each model's when either is quantized."""
    dq, tq = r.get("drafter_quantize"), r.get("target_quantize")
    if not dq and not tq:
        return r["dtype"]
    return f"drafter {dq or r['dtype']} / target {tq or r['dtype']}"


def _target_label(r: dict) -> str:
    """The target as a quality row names it: model, its weights' fingerprint (when recorded),
    the weight format (bf16 / float32 unless quantized) and a quantized KV cache."""
    label = r["target"] + (f" [{r['target_weights']}]" if r.get("target_weights") else "")
    label += f" {r.get('target_quantize') or r['dtype']}"
    if r.get("target_kv_cache", "bf16") != "bf16":
        label += f", KV {r['target_kv_cache']}"
    return label


def quality_table(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("pflash_acc") is not None]
    if not rows:
        return ""
    groups = defaultdict(list)
    for r in rows:
        # a chat-format row is its own task: the same cases wrapped in the chat template
        task = f"{r['task']} (chat)" if r.get("prompt_format", "raw") == "chat" else r["task"]
        # rows of different targets (models, weights, quantization, KV cache) are never pooled
        # and rows of different scoring / selection options are their own preset variant
        preset = r["preset"] + (f" ({r['variant']})" if r.get("variant") else "")
        groups[(task, r["S"], preset, r["keep_ratio"], r["span_size"],
                _target_label(r))].append(r)
    head = ("| task | S | preset | keep | span | target | full acc | PFlash acc | "
            "drafter recall | kept frac | cases |\n|" + " --- |" * 11 + "\n")
    body = ""
    for key in sorted(groups):
        g = groups[key]
        n = sum(r["n_cases"] for r in g)

        def wavg(k, g=g):
            vals = [(r[k], r["n_cases"]) for r in g if r.get(k) is not None]
            return sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None
        body += (f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[5]} | "
                 f"{_fmt(wavg('full_acc'), '.2f')} | {_fmt(wavg('pflash_acc'), '.2f')} | "
                 f"{_fmt(wavg('recall'), '.2f')} | {_fmt(wavg('kept_frac'), '.3f')} | "
                 f"{n} |\n")
    return head + body


def plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    made = []
    speed = [r for r in rows if r.get("full_ttft_s") is not None and r["repeats"] > 0]
    by_target = defaultdict(list)
    for r in speed:
        by_target[(r["target"], r["keep_ratio"], r["span_size"])].append(r)
    if speed and len({r["S"] for r in speed}) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (tgt, keep, span), g in sorted(by_target.items()):
            g = sorted(g, key=lambda r: r["S"])
            S = [r["S"] for r in g]
            ax.plot(S, [r["full_ttft_s"] for r in g], "o--", label=f"full prefill ({tgt})")
            ax.plot(S, [r["pflash_ttft_s"] for r in g], "o-",
                    label=f"PFlash keep {keep} span {span}")
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens S", ylabel="TTFT (s)",
               title=f"TTFT on {speed[0]['device']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ttft_vs_S.png", dpi=120)
        plt.close(fig)
        made.append("ttft_vs_S.png")

    qual = [r for r in rows if r.get("pflash_acc") is not None]
    spans = sorted({r["span_size"] for r in qual})
    keeps = sorted({r["keep_ratio"] for r in qual})
    presets = sorted({r["preset"] for r in qual})
    lengths = sorted({r["S"] for r in qual})
    if qual and len(spans) > 1 and len(keeps) > 1:
        # One panel per preset x S, averaged over the tasks that (a) cover every cell of the
        # grid there, so a partially run task cannot tilt some cells and not others, and (b) the
        # target solves with full prefill (mean full acc >= 0.5): on a task it cannot do, PFlash
        # accuracy says nothing about the drafter. The caption names the tasks of each panel.
        fig, axes = plt.subplots(len(presets), len(lengths), squeeze=False,
                                 figsize=(3.6 * len(lengths) + 1, 3.3 * len(presets) + 1.2))
        cells = {(sp, kp) for sp in spans for kp in keeps}
        captions, im = [], None
        for a, pre in enumerate(presets):
            for b, S in enumerate(lengths):
                ax = axes[a][b]
                rp = [r for r in qual if r["preset"] == pre and r["S"] == S]
                tasks = sorted(t for t in {r["task"] for r in rp}
                               if {(r["span_size"], r["keep_ratio"]) for r in rp
                                   if r["task"] == t} >= cells
                               and np.mean([r["full_acc"] for r in rp if r["task"] == t
                                            and r.get("full_acc") is not None] or [0]) >= 0.5)
                grid = np.full((len(spans), len(keeps)), np.nan)
                for i, sp in enumerate(spans):
                    for j, kp in enumerate(keeps):
                        v = [r["pflash_acc"] for r in rp if r["task"] in tasks
                             and r["span_size"] == sp and r["keep_ratio"] == kp]
                        if v:
                            grid[i, j] = np.mean(v)
                            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center",
                                    fontsize=7, color="w" if grid[i, j] < 0.6 else "k")
                im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower",
                               aspect="auto")
                ax.set_xticks(range(len(keeps)), [str(k) for k in keeps], fontsize=7)
                ax.set_yticks(range(len(spans)), [str(s) for s in spans], fontsize=7)
                full = [r["full_acc"] for r in rp if r["task"] in tasks
                        and r.get("full_acc") is not None]
                ax.set_title(f"{pre}, S={S}: {len(tasks)} task(s)"
                             + (f", full {np.mean(full):.2f}" if full else ""), fontsize=8)
                if b == 0:
                    ax.set_ylabel("span size", fontsize=8)
                if a == len(presets) - 1:
                    ax.set_xlabel("keep ratio", fontsize=8)
                captions.append(f"{pre} S={S}: {', '.join(tasks) or '-'}")
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03)
        fig.suptitle("PFlash accuracy (mean over the tasks full prefill solves; "
                     "'full' = their full-prefill accuracy)", fontsize=9)
        fig.savefig(out / "acc_heatmap.png", dpi=120)
        plt.close(fig)
        (out / "acc_heatmap_tasks.txt").write_text("\n".join(captions) + "\n")
        made.append("acc_heatmap.png")
    if qual and len(keeps) > 1:
        # One panel per preset: per task, PFlash accuracy against keep ratio (mean over span
        # sizes and lengths) with the task's full-prefill accuracy dashed in the same colour.
        fig, axes = plt.subplots(1, len(presets), figsize=(5.2 * len(presets), 4), squeeze=False,
                                 sharey=True)
        tasks = sorted({r["task"] for r in qual})
        colors = plt.get_cmap("tab10")
        for ax, pre in zip(axes[0], presets, strict=True):
            rp = [r for r in qual if r["preset"] == pre]
            for c, t in enumerate(tasks):
                pts = [(k, np.mean([r["pflash_acc"] for r in rp if r["task"] == t
                                    and r["keep_ratio"] == k])) for k in keeps
                       if any(r["task"] == t and r["keep_ratio"] == k for r in rp)]
                if not pts:
                    continue
                ax.plot(*zip(*pts, strict=True), "o-", color=colors(c % 10), label=t)
                full = [r["full_acc"] for r in rp if r["task"] == t
                        and r.get("full_acc") is not None]
                if full:
                    ax.axhline(np.mean(full), color=colors(c % 10), ls="--", lw=0.8)
            ax.set(xscale="log", xlabel="keep ratio", ylim=(-0.02, 1.02),
                   title=f"{pre} (dashed: full prefill)")
            ax.set_xticks(keeps, [str(k) for k in keeps])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.title.set_fontsize(9)
        axes[0][0].set_ylabel("accuracy (mean over spans and S)")
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        fig.tight_layout()
        fig.savefig(out / "acc_vs_keep.png", dpi=120)
        plt.close(fig)
        made.append("acc_vs_keep.png")
    return made


def write_report(srcs: list[str], out: Path, *, compact: bool = False) -> Path:
    """tables.md and plots of the run cells under srcs into out; with compact, out/rows.jsonl
    too (then out is the sweep's record and the metrics folders can go)."""
    records = compact_records(srcs) if compact else None
    rows = cell_rows(records) if compact else load_rows(srcs)
    if not rows:
        raise SystemExit(f"report: no run metrics.json or {ROWS} under {srcs}")
    mine = out / ROWS
    if not compact and mine.exists() and not any(
            f.resolve() == mine.resolve() for f in find_sources(srcs)[1]):
        raise SystemExit(f"report: {out} is a compact sweep folder ({mine}); its tables come from "
                         f"that file: add it as a SRC, or pass --compact to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if compact:
        write_compact(records, mine)
    figs = plots(rows, out)
    devices = sorted({r["device"] for r in rows})
    commits = sorted({r["commit"] for r in rows})
    exps = sorted({r["experiment"] for r in rows})
    text = (f"# Results: {', '.join(exps)}\n\nGenerated by `experiments/report.py` from "
            f"{len(rows)} run cells. Device(s): {', '.join(devices)}; jax "
            f"{', '.join(sorted({r['jax'] for r in rows}))}; commit(s): {', '.join(commits)}. "
            f"Speedup = full-prefill TTFT / PFlash TTFT, both timed in the same process.\n")
    st, qt, mt = speed_table(rows), quality_table(rows), memory_table(rows)
    if st:
        text += "\n## Speed\n\n" + st
    if mt:
        text += "\n## Memory: plan, measured peak, paths that do not fit\n\n" + mt
    if qt:
        text += "\n## Quality\n\n" + qt
    text += "".join(f"\n![{f}]({f})\n" for f in figs)
    (out / "tables.md").write_text(text)
    if mine.exists():  # rows.jsonl is the record here; a rows.json beside it would repeat it
        (out / "rows.json").unlink(missing_ok=True)
    else:
        (out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    return out / "tables.md"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("srcs", nargs="+", help="metrics.json / rows.jsonl files or folders")
    ap.add_argument("--out", required=True, help="output folder (e.g. results/smoke)")
    ap.add_argument("--compact", action="store_true",
                    help=f"also write OUT/{ROWS}, the sweep's compact record for results/")
    a = ap.parse_args(argv)
    print(write_report(a.srcs, Path(a.out), compact=a.compact).read_text())


if __name__ == "__main__":
    main()
