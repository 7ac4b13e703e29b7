"""experiments/compare_drafters.py: its statistics against hand-computed values, and one tiny
run on the embedded pair (a drafter against itself int8-quantized)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_drafters",
                                              REPO / "experiments" / "compare_drafters.py")
cd = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cd)


def test_statistics():
    assert np.array_equal(cd.average_ranks(np.array([3.0, 1.0, 1.0, 2.0])), [4, 1.5, 1.5, 3])
    x = np.random.default_rng(0).normal(size=50)
    assert cd.spearman(x, np.exp(x)) == pytest.approx(1.0)  # any increasing map
    assert cd.spearman(x, -x) == pytest.approx(-1.0)
    assert cd.top_overlap(x, x) == 1.0
    assert cd.top_overlap(np.arange(100.0), -np.arange(100.0)) == 0.0
    assert cd.jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(0.5)


def test_tiny_run(tmp_path):
    cd.main(["--quantize", "int8", "--tasks", "niah_single", "--lengths", "1024",
             "--n-cases", "1", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["n_cases"] == 1
    for key in ("recall_ref", "recall_quant", "kept_jaccard", "top5_overlap"):
        assert 0.0 <= rows[0][key] <= 1.0, (key, rows[0][key])
    assert -1.0 <= rows[0]["spearman"] <= 1.0
    assert "| niah_single | 1024 | 1 |" in (tmp_path / "table.md").read_text()


def test_bad_quantize(tmp_path):
    with pytest.raises(SystemExit, match="--quantize must be one of"):
        cd.main(["--quantize", "fp4", "--out", str(tmp_path)])
