"""pflash_jax/report.py (experiments/report.py) --compact: a sweep's metrics.json files ->
one rows.jsonl, and every table read back from it equals the table of the raw files. Metrics
come from real tiny runs on the CPU: a span x keep grid job (whose cells share one full-prefill
baseline) and a timed job."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


from pflash_jax import report  # noqa: E402
from pflash_jax.pflash.config import preset  # noqa: E402


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """sweep/grid/cells/<cell>/metrics.json (4 cells, 2 cases) + sweep/timed/metrics.json."""
    from pflash_jax.bench import write_metrics
    from pflash_jax.run import run_cells
    from pflash_jax.run_config import GridSpec, RunConfig, TaskSpec

    root = tmp_path_factory.mktemp("sweep")
    grid = RunConfig(task=TaskSpec(seq_len=1024, n_cases=2), max_new_tokens=4, repeats=0,
                     quiet=True, experiment="quality",
                     grid=GridSpec(span_sizes=[16, 64], keep_ratios=[0.1, 0.5]))
    for name, m in run_cells(grid):
        write_metrics(root / "grid" / "cells" / name / "metrics.json", m)
    timed = RunConfig(task=TaskSpec(seq_len=512), max_new_tokens=4, repeats=1, quiet=True)
    ((_, m),) = run_cells(timed)
    write_metrics(root / "timed" / "metrics.json", m)
    return root


def _no_source(rows):
    return sorted(json.dumps({k: v for k, v in r.items() if k != "source"}, sort_keys=True)
                  for r in rows)


def test_tables_from_rows_jsonl_equal_tables_from_metrics(sweep, tmp_path):
    raw, comp = tmp_path / "raw", tmp_path / "compact"
    report.write_report([str(sweep)], raw)
    report.write_report([str(sweep)], comp, compact=True)
    assert not (comp / "rows.json").exists()  # rows.jsonl is the record there
    text = (raw / "tables.md").read_text()
    assert "## Speed" in text and "## Quality" in text
    assert (comp / "tables.md").read_text() == text
    raw_rows = report.flat_rows(report.find_metrics([str(sweep)]))
    assert len(raw_rows) == 5
    assert _no_source(report.load_rows([str(comp)])) == _no_source(raw_rows)
    assert _no_source(report.load_rows([str(comp / "rows.jsonl")])) == _no_source(raw_rows)
    # regenerated in place from rows.jsonl alone (what update_readme does): the same tables
    report.write_report([str(comp)], comp)
    assert (comp / "tables.md").read_text() == text
    assert sorted(p.name for p in comp.glob("*.png")) == sorted(p.name for p in raw.glob("*.png"))


def _keys(obj):
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_compact_file_has_no_tokens_and_one_baseline_per_case(sweep, tmp_path):
    path = report.write_compact(report.compact_records([str(sweep)]), tmp_path / "rows.jsonl")
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert not {"pflash_tokens", "full_tokens"} & _keys(recs)  # token ids stay out
    jobs = {r["job"]: r for r in recs if r["kind"] == "job"}
    cells = [r for r in recs if r["kind"] == "cell"]
    assert sorted(jobs) == ["niah_pflash-1024-pflash-tiny_target",
                            "niah_pflash-512-pflash-tiny_target"]
    assert len(cells) == 5 and {c["job"] for c in cells} == set(jobs)
    grid = jobs["niah_pflash-1024-pflash-tiny_target"]
    assert [c["case"] for c in grid["cases"]] == [0, 1]
    for case in grid["cases"]:  # the baseline, once
        assert {"task", "S", "full_acc", "full_answer", "expected"} <= set(case)
    assert "span_size" not in grid["pflash_config"] and "keep_ratio" not in grid["pflash_config"]
    raw = {str(p.relative_to(sweep)): json.loads(p.read_text())
           for p in sweep.rglob("metrics.json")}
    for c in cells:
        m = raw[c["source"]]
        assert len(c["cases"]) == c["n_cases"] == len(m["cases"])
        for mine, full in zip(c["cases"], m["cases"], strict=True):
            assert not {"full_acc", "full_answer", "expected"} & set(mine)  # not repeated
            assert mine["n_kept"] == full["n_kept"] and mine["recall"] == full["recall"]
            assert mine["pflash_answer"] == full["pflash_answer"]
    # 2 cases x 4 new tokens here; a real quality sweep shrinks 10x (35 MB -> 3.3 MB)
    assert path.stat().st_size < sum(p.stat().st_size for p in sweep.rglob("metrics.json")) / 2


def test_a_folder_with_rows_jsonl_is_read_from_it_alone(sweep, tmp_path):
    comp = tmp_path / "compact"
    report.write_report([str(sweep)], comp, compact=True)
    shutil.copytree(sweep, comp / "raw")  # the raw files left beside the record
    assert len(report.load_rows([str(comp)])) == 5


def test_one_job_folder_holding_two_jobs_is_refused(sweep, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep / "grid", mixed / "grid")
    stray = mixed / "grid" / "cells" / "x" / "metrics.json"  # another job's file, one cell more
    stray.parent.mkdir()
    shutil.copy(sweep / "timed" / "metrics.json", stray)
    with pytest.raises(ValueError, match="is not one job"):
        report.compact_records([str(mixed)])


def test_report_keeps_a_compact_folder_consistent(sweep, tmp_path):
    comp = tmp_path / "compact"
    report.write_report([str(sweep / "grid")], comp, compact=True)
    with pytest.raises(SystemExit, match="compact sweep folder"):
        report.write_report([str(sweep / "timed")], comp)  # tables.md would not match rows.jsonl
    report.write_report([str(comp), str(sweep / "timed")], comp, compact=True)  # merge: fine
    assert len(report.load_rows([str(comp)])) == 5


def test_readme_quality_section_and_index_from_compact_folders(sweep, tmp_path, monkeypatch):
    u = _module("update_readme")
    monkeypatch.setattr(u, "RESULTS", tmp_path)
    monkeypatch.setattr(u, "QUALITY", "q")
    monkeypatch.setattr(u, "SPAN", 16)
    monkeypatch.setattr(u, "KEEP", 0.1)
    absent = u.quality_section()
    assert "not recorded yet" in absent and "results/q/rows.jsonl" in absent
    assert absent.strip().count("\n") == 0  # one line
    report.write_report([str(sweep / "grid")], tmp_path / "q", compact=True)
    (tmp_path / "q" / "README.md").write_text("# a grid\n\nMade by: `run.py`\n")
    text = u.quality_section()
    assert "| niah_pflash | pflash | 1K |" in text and "`results/q/tables.md`" in text
    assert "single-needle tasks" in text  # the headline at (SPAN, KEEP)
    monkeypatch.setattr(u, "embedded_target_weights", lambda: "0123456789ab")
    stale = u.quality_section()  # a grid of replaced weights leaves the README
    assert "0123456789ab" in stale and "since replaced" in stale and "| niah" not in stale
    assert stale.strip().count("\n") == 0
    (tmp_path / "bare").mkdir()
    index = u.write_index().read_text()
    assert "| [`q/`](q/) | a grid | `run.py` | cpu |" in index
    assert "| [`bare/`](bare/) | **no README.md" in index


def test_quality_rows_of_different_targets_are_not_pooled(sweep, tmp_path):
    """Two jobs on the same task and cell whose targets differ (here by weight format) stay two
    quality rows, each naming its target; pooled they would average different models."""
    rows = report.load_rows([str(sweep / "grid")])
    other = [dict(r, target_quantize="int8", pflash_acc=0.0) for r in rows]
    text = report.quality_table(rows + other)
    lines = [ln for ln in text.splitlines() if ln.startswith("| niah")]
    assert len(lines) == 2 * len({(r["span_size"], r["keep_ratio"]) for r in rows}), text
    assert any(" int8 |" in ln for ln in lines) and any(" float32 |" in ln for ln in lines), text


def test_memory_table_sets_plan_beside_measured_peak():
    """A row under a budget: planned needs beside the measured peak (shown only where it rose
    above loading's and planning's), a path not run says why."""
    base = {"device": "d", "commit": "c", "device_profile": "rtx3090", "memory_budget_gb": 24.0,
            "budget_gib": 23.35, "drafter": "a", "target": "qwen3_8b", "dtype": "bfloat16",
            "target_quantize": "int8", "target_kv_cache": "int8", "S": 1024, "chunk": None,
            "pflash_ttft_s": 0.5, "full_ttft_s": 2.0, "speedup": 4.0, "plan_pflash_gib": 10.0,
            "plan_full_gib": 20.0, "peak_after_load_gib": 9.0, "peak_after_plan_gib": 9.5,
            "peak_after_pflash_gib": 11.0, "peak_after_full_gib": 21.0,
            "host_peak_load_gib": 1.5, "pflash_skipped": None, "full_skipped": None}
    text = report.memory_table([base])
    assert "10.00 / 11.00 (-9%)" in text and "20.00 / 21.00 (-5%)" in text, text
    hidden = report.memory_table([base | {"peak_after_plan_gib": 12.0}])
    assert "10.00 / - " in hidden, hidden  # PFlash's peak hidden below planning's
    skipped = report.memory_table([base | {"full_skipped": "does not fit: needs 30 GiB of 23",
                                           "full_ttft_s": None, "speedup": None}])
    assert "does not fit: needs 30 GiB of 23" in skipped and "20.00 / -" in skipped, skipped


def test_readme_heldout_section_merges_full_and_pflash_of_the_current_pair(tmp_path,
                                                                          monkeypatch):
    """Full-prefill runs and PFlash runs of the current pair in one table: a row per task and
    scoring, full beside PFlash with its share (one decimal: 94.8% must not read as 95%),
    recall and kept share; tasks with full prefill only get their own row; runs of replaced
    weights leave the table for one line naming them."""
    from pflash_jax.bench import write_metrics

    u = _module("update_readme")
    monkeypatch.setattr(u, "RESULTS", tmp_path)
    now = {"drafter": "d" * 12, "target": "t" * 12}
    monkeypatch.setattr(u, "embedded_pair_weights", lambda: now)
    prov = {"device": "cpu", "commit": "abc"}
    pcfg = {"forced_spans": "inside", "forced_head_spans": 1, "forced_tail_spans": 2}
    full_rows = [{"task": "niah_single", "S": 8192, "n_cases": 4, "full_acc": 1.0,
                  "pflash_acc": None, "recall": 0.9, "kept_frac": 0.047},
                 {"task": "variable_tracking", "S": 8192, "n_cases": 4, "full_acc": 0.25,
                  "pflash_acc": None, "recall": 0.5, "kept_frac": 0.047}]
    write_metrics(tmp_path / "full" / "metrics.json",
                  {"config": {"preset": "pflash", "keep_ratio": 0.05, "span_size": 32},
                   "pflash_config": pcfg, "weights": now, "rows": full_rows, "provenance": prov})
    write_metrics(tmp_path / "qa" / "metrics.json",
                  {"config": {"preset": "pflash_qa", "keep_ratio": 0.05, "span_size": 32,
                              "overrides": {"trail_width": 8}},
                   "pflash_config": preset("pflash_qa", trail_width=8).to_dict(),
                   "weights": now, "provenance": prov,
                   "rows": [{"task": "niah_single", "S": 8192, "n_cases": 4, "full_acc": None,
                             "pflash_acc": 0.948, "recall": 0.97, "kept_frac": 0.047}]})
    text = u.heldout_section(("full",), ("qa",))
    assert ("- A: pflash_qa (trail_width=8), keep 0.05, span 32, forced spans 1 head + 2 tail "
            "inside the budget") in text, text
    assert "| niah_single | A | 1.00 / 0.95, 94.8% (0.97, 4.7%) |" in text, text
    assert "| variable_tracking | full prefill only | 0.25 / - |" in text, text
    assert "`results/full`" in text and "`results/qa`" in text, text
    monkeypatch.setattr(u, "embedded_pair_weights", lambda: {"drafter": "x", "target": "y"})
    gone = u.heldout_section(("full",), ("qa",))
    assert "| niah" not in gone and "`results/qa`" in gone and "other weights" in gone, gone


def test_heldout_labels_say_what_a_run_used_when_the_preset_changed(tmp_path, monkeypatch):
    """A run recorded before pflash_qa placed its spans freely (no span_stride in its config)
    is labelled with the grid it used and is not the package default, nor is a run at
    original positions (eval_tiny's setting before the renumbered default); a run of today's
    default is marked as such."""
    from pflash_jax.bench import write_metrics

    u = _module("update_readme")
    now = {"drafter": "d", "target": "t"}
    monkeypatch.setattr(u, "embedded_pair_weights", lambda: now)
    monkeypatch.setattr(u, "RESULTS", tmp_path)
    prov = {"device": "cpu", "commit": "abc"}
    cfg = {"preset": "pflash_qa", "keep_ratio": 0.05, "span_size": 32}
    today = preset("pflash_qa").to_dict()
    assert today["positions"] == "renumbered"
    old = {k: v for k, v in today.items() if k != "span_stride"}
    original = preset("pflash_qa", positions="original").to_dict()
    row = {"task": "niah_single", "S": 8192, "n_cases": 4, "full_acc": None,
           "pflash_acc": 0.9, "recall": 0.97, "kept_frac": 0.047}
    for name, pc in (("old", old), ("today", today), ("original", original)):
        write_metrics(tmp_path / name / "metrics.json",
                      {"config": cfg, "pflash_config": pc, "weights": now, "provenance": prov,
                       "rows": [row]})
    text = u.heldout_section((), ("old", "today", "original"))
    assert ("- A: pflash_qa (span_stride=None), keep 0.05, span 32, forced spans 1 head + 2 "
            "tail inside the budget\n") in text, text
    assert ("- B: pflash_qa, keep 0.05, span 32, forced spans 1 head + 2 tail inside the "
            "budget (the package default)") in text, text
    assert ("- C: pflash_qa (positions=original), keep 0.05, span 32, forced spans 1 head + 2 "
            "tail inside the budget\n") in text, text
