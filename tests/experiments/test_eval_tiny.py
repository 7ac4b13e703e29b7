"""eval_tiny end to end on the embedded pair (one small case): preset overrides reach the
PFlash config, with_full=false leaves the full-prefill column empty, metrics are complete."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _eval(tmp_path, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, "experiments/eval_tiny.py", "n_cases=1", "lengths=[1024]",
            "tasks=[niah_single]", "batch=1", "with_pflash=false", f"out_dir={tmp_path}/out",
            f"hydra.run.dir={tmp_path}/h", *extra]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_eval_tiny_overrides_and_recall_only(tmp_path):
    p = _eval(tmp_path, "with_full=false", "overrides={score_layers: 1}")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["complete"] is True and m["pflash_config"]["score_layers"] == 1
    (row,) = m["rows"]
    assert row["full_acc"] is None and 0.0 <= row["recall"] <= 1.0
    assert "score_layers=1" in (tmp_path / "out/table.md").read_text()


def test_eval_tiny_bad_override_is_one_line(tmp_path):
    p = _eval(tmp_path, "with_full=false", "overrides={no_such_option: 1}")
    assert p.returncode != 0
    assert "eval_tiny: overrides=" in p.stderr and "no_such_option" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
