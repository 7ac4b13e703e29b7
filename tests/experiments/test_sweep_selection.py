"""sweep_selection on the embedded pair (one small case): a variant's row is the row eval_tiny
gives the same overrides (the shared drafter pass changes nothing), selection options reach the
variant's config, and a variant that would need its own drafter pass is refused in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _sweep(tmp_path, *variants):
    args = [sys.executable, "experiments/sweep_selection.py", "--lengths", "1024", "--cases", "1",
            "--tasks", "niah_multikey", "--out", str(tmp_path / "sweep"),
            *(x for v in variants for x in ("--variant", v))]
    return subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def test_sweep_rows_match_eval_tiny(tmp_path):
    p = _sweep(tmp_path, "base={}", "s16={span_size: 16, forced_head_spans: 2, "
               "forced_tail_spans: 4}")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    e = subprocess.run(
        [sys.executable, "experiments/eval_tiny.py", "n_cases=1", "lengths=[1024]",
         "tasks=[niah_multikey]", "batch=1", "preset=pflash_qa", "with_full=false",
         "span_size=16", "overrides={forced_head_spans: 2, forced_tail_spans: 4}",
         f"out_dir={tmp_path}/eval", f"hydra.run.dir={tmp_path}/h"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert e.returncode == 0, e.stderr[-2000:]
    sweep = json.loads((tmp_path / "sweep/s16/metrics.json").read_text())
    ref = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert sweep["complete"] is True
    assert sweep["pflash_config"] == ref["pflash_config"]
    assert sweep["pflash_config"]["span_size"] == 16
    assert sweep["pflash_config"]["forced_tail_spans"] == 4
    assert ref["pflash_config"]["positions"] == "renumbered"  # eval_tiny's default: the preset's
    assert sweep["rows"] == ref["rows"]
    base = json.loads((tmp_path / "sweep/base/metrics.json").read_text())
    assert base["pflash_config"]["span_size"] == 32
    # one line per case, agreeing with the row it was averaged into
    cases = [json.loads(x) for x in (tmp_path / "sweep/s16/cases.jsonl").read_text().splitlines()]
    assert len(cases) == 1
    assert cases[0]["acc"] == ref["rows"][0]["pflash_acc"]
    assert cases[0]["recall"] == ref["rows"][0]["recall"]
    assert 0 <= cases[0]["needles_whole"] <= cases[0]["needles"] > 0
    assert cases[0]["want"] and isinstance(cases[0]["answer"], str)


def test_sweep_refuses_a_scoring_change(tmp_path):
    p = _sweep(tmp_path, "base={}", "rows={n_tail: 8}")
    assert p.returncode != 0
    assert "variant 'rows' changes a scoring or drafter option" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
