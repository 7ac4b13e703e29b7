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
    # positions: the preset's renumbered (tests/experiments/test_sweep_selection.py); an
    # override of it must win
    p = _eval(tmp_path, "with_full=false", "overrides={score_layers: 1, positions: original}")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["complete"] is True and m["pflash_config"]["score_layers"] == 1
    assert m["pflash_config"]["positions"] == "original"
    from pflash_jax.embedded import TINY_DIR
    from pflash_jax.run import weights_fingerprint
    assert m["weights"] == {r: weights_fingerprint(TINY_DIR / r) for r in ("drafter", "target")}
    (row,) = m["rows"]
    assert row["full_acc"] is None and 0.0 <= row["recall"] <= 1.0
    assert "score_layers=1" in (tmp_path / "out/table.md").read_text()


def test_eval_tiny_bad_override_is_one_line(tmp_path):
    p = _eval(tmp_path, "with_full=false", "overrides={no_such_option: 1}")
    assert p.returncode != 0
    assert "eval_tiny: overrides=" in p.stderr and "no_such_option" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-2000:]


def test_eval_tiny_fp8_drafter_and_a_bad_format(tmp_path):
    """drafter_quantize=fp8 runs the drafter W8A8 (recorded, named in the table); a format that
    does not exist is one error line naming the option."""
    p = _eval(tmp_path, "with_full=false", "drafter_quantize=fp8")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    m = json.loads((tmp_path / "out/metrics.json").read_text())
    assert m["config"]["drafter_quantize"] == "fp8" and 0.0 <= m["rows"][0]["recall"] <= 1.0
    assert "drafter_quantize=fp8" in (tmp_path / "out/table.md").read_text()
    p = _eval(tmp_path, "with_full=false", "drafter_quantize=fp4")
    assert p.returncode != 0 and "eval_tiny: drafter_quantize" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-2000:]


def test_parse_task_entries():
    import importlib.util
    spec = importlib.util.spec_from_file_location("eval_tiny", REPO / "experiments/eval_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_task("niah_single") == ("niah_single", {})
    assert mod.parse_task("niah_multikey:n_distractors=7") == (
        "niah_multikey", {"n_distractors": 7})
    assert mod.parse_task("niah_single: depth=0.5, haystack=words") == (
        "niah_single", {"depth": 0.5, "haystack": "words"})
    try:
        mod.parse_task("niah_multikey:n_distractors")
    except ValueError as e:
        assert "n_distractors" in str(e) and "key=value" in str(e)
    else:
        raise AssertionError("an option without '=' was accepted")


def test_eval_tiny_task_options_label_rows(tmp_path):
    p = _eval(tmp_path, "with_full=false", "tasks=['niah_multikey:n_distractors=5']")
    assert p.returncode == 0, f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    (row,) = json.loads((tmp_path / "out/metrics.json").read_text())["rows"]
    assert row["task"] == "niah_multikey:n_distractors=5"
    bad = _eval(tmp_path, "with_full=false", "tasks=['niah_multikey:no_such_option=1']")
    assert bad.returncode != 0 and "eval_tiny: tasks:" in bad.stderr
    assert "Traceback" not in bad.stderr, bad.stderr[-2000:]


def test_compare_evals_table(tmp_path):
    """compare_evals: a column per run, a row per (task, S), '-' where a run lacks the row; a
    folder without metrics.json is named in a one-line error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ce", REPO / "experiments/compare_evals.py")
    ce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ce)
    prov = {"device": "cpu", "commit": "abcdef123"}
    for name, rows in (("a", [("niah_single", 0.9, 0.8), ("niah_multikey", 0.3, 0.35)]),
                       ("b", [("niah_single", 1.0, 0.98)])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({
            "provenance": prov, "config": {"overrides": {"n_tail": 64}},
            "rows": [{"task": t, "S": 4096, "pflash_acc": acc, "recall": rec, "full_acc": None}
                     for t, acc, rec in rows]}))
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    m["config"]["drafter_quantize"] = "fp8"
    (tmp_path / "b" / "metrics.json").write_text(json.dumps(m))
    text = ce.compare([tmp_path / "a", tmp_path / "b"])
    assert "drafter fp8" in text.split("`b`")[1] and "drafter fp8" not in text.split("`b`")[0]
    assert "| task | S | a | b |" in text
    assert "| niah_single | 4096 | 0.90 / 0.80 | 1.00 / 0.98 |" in text
    assert "| niah_multikey | 4096 | 0.30 / 0.35 | - |" in text
    p = subprocess.run([sys.executable, "experiments/compare_evals.py", str(tmp_path / "none")],
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode != 0 and "does not exist" in p.stderr and "Traceback" not in p.stderr
