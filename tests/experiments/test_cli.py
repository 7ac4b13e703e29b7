"""The main job and the smoke sweep end to end on the CPU, on the embedded tiny pair."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args, tmp_path, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def test_pflash_run_end_to_end(tmp_path):
    out = _run(["-m", "pflash_jax.run", "task.seq_len=2048", "max_new_tokens=4",
                f"metrics_dir={tmp_path}", f"hydra.run.dir={tmp_path}/hydra"], tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    case = m["cases"][0]
    assert case["S"] == 2048 and 0 < case["n_kept"] < 2048
    # greedy decoding stops after eos, so at most max_new_tokens tokens
    assert 1 <= len(case["pflash_tokens"]) <= 4 and 1 <= len(case["full_tokens"]) <= 4
    assert case["speedup"] > 0 and m["provenance"]["device"]
    for stage in ("drafter_forward", "scoring", "selection", "target_prefill", "first_token"):
        assert case["pflash"][stage] >= 0
    assert "TTFT speedup over full prefill" in out and "kept" in out
    # which weights were measured: the embedded pair's fingerprint, per model
    from pflash_jax.embedded import TINY_DIR
    from pflash_jax.run import weights_fingerprint
    for role in ("drafter", "target"):
        assert m["models"][role]["weights"] == weights_fingerprint(TINY_DIR / role)


def test_weights_fingerprint_tells_checkpoints_apart(tmp_path):
    """Same bytes -> same fingerprint; one changed byte in the data -> a different one."""
    from pflash_jax.embedded import TINY_DIR
    from pflash_jax.run import weights_fingerprint
    src = (TINY_DIR / "target" / "model.safetensors").read_bytes()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "model.safetensors").write_bytes(src)
    changed = bytearray(src)
    changed[-5] ^= 0xFF  # the last tensor's data: what a retrain would change everywhere
    (b / "model.safetensors").write_bytes(bytes(changed))
    assert weights_fingerprint(a) == weights_fingerprint(TINY_DIR / "target")
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_smoke_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    _run(["experiments/run.py", "-m", "experiment=smoke", f"hydra.sweep.dir={sweep}"], tmp_path,
         timeout=900)
    metrics = sorted(sweep.rglob("metrics.json"))
    assert len(metrics) == 4, metrics  # span {16, 64} x keep {0.1, 0.5}
    report = tmp_path / "report"
    _run(["experiments/report.py", str(sweep), "--out", str(report)], tmp_path)
    text = (report / "tables.md").read_text()
    assert "## Speed" in text and "## Quality" in text
    assert (report / "acc_heatmap.png").stat().st_size > 1000
    rows = json.loads((report / "rows.json").read_text())
    assert {(r["span_size"], r["keep_ratio"]) for r in rows} == {
        (16, 0.1), (16, 0.5), (64, 0.1), (64, 0.5)}


def test_bad_option_fails_fast(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-m", "pflash_jax.run", "selection.keep_ratio=2"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "keep_ratio" in (p.stdout + p.stderr)


@pytest.mark.parametrize("script", ["train_tiny.py", "eval_tiny.py"])
def test_training_and_eval_scripts_smoke(tmp_path, script):
    if script == "train_tiny.py":
        args = ["steps=2", "curriculum=[[512,2]]", "workers=1",
                f"checkpoint_dir={tmp_path}/ckpt", f"export_dir={tmp_path}/export",
                f"metrics_path={tmp_path}/m.json", f"hydra.run.dir={tmp_path}/h"]
        _run([f"experiments/{script}", *args], tmp_path)
        assert (tmp_path / "export" / "target" / "model.safetensors").exists()
        # the export loads through our converter and loader
        from pflash_jax.embedded import open_model

        os.environ.setdefault("PFLASH_CACHE", str(tmp_path / "cache"))
        m = open_model(tmp_path / "export" / "drafter")
        assert m.config.num_hidden_layers == 2 and m.tokenizer is not None
    else:
        args = ["n_cases=1", "lengths=[1024]", "tasks=[niah_single]", "batch=1",
                f"out_dir={tmp_path}/eval", f"hydra.run.dir={tmp_path}/h"]
        _run([f"experiments/{script}", *args], tmp_path)
        rows = json.loads((tmp_path / "eval" / "metrics.json").read_text())["rows"]
        assert rows[0]["task"] == "niah_single" and 0 <= rows[0]["full_acc"] <= 1


def test_grid_job_writes_one_metrics_file_per_cell(tmp_path):
    """grid: one job, one drafter pass + one full prefill per case, every span x keep cell."""
    _run(["experiments/run.py", "task.seq_len=1024", "task.n_cases=2", "max_new_tokens=4",
          "repeats=0", "quiet=true", "grid.span_sizes=[16,64]", "grid.keep_ratios=[0.1,0.5]",
          f"metrics_dir={tmp_path}/job", f"hydra.run.dir={tmp_path}/hydra"], tmp_path)
    cells = {p.parent.name: json.loads(p.read_text())
             for p in (tmp_path / "job/cells").glob("*/metrics.json")}
    assert set(cells) == {"span16_keep0.1", "span16_keep0.5", "span64_keep0.1",
                          "span64_keep0.5"}
    for name, m in cells.items():
        span, keep = name.removeprefix("span").split("_keep")
        assert m["run_config"]["selection"]["span_size"] == int(span)
        assert m["pflash_config"]["span_size"] == int(span)
        assert m["pflash_config"]["keep_ratio"] == float(keep)
        assert m["summary"]["n_cases"] == 2
    # the same cases: full prefill's answers agree across cells, and more budget keeps more
    full = {n: [c["full_tokens"] for c in m["cases"]] for n, m in cells.items()}
    assert len({json.dumps(v) for v in full.values()}) == 1
    for span in (16, 64):
        lo, hi = cells[f"span{span}_keep0.1"], cells[f"span{span}_keep0.5"]
        assert lo["summary"]["kept_frac"] <= hi["summary"]["kept_frac"]
