"""train_tiny's fine-tuning options: init_from (exported HF checkpoints, strictly checked) and
train (which models get updates; the others are re-exported unchanged)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.models.export_hf import export_hf
from pflash_jax.models.params import init_params
from pflash_jax.models.weights import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parents[2]
SHAPES = {  # tiny on purpose: the end-to-end run must be quick on the CPU
    "target": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32},
    "drafter": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
}
VOCAB, MAX_POS = 2048, 32768  # the tiny tokenizer's vocab, already a multiple of 128


def _train_tiny():
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "experiments/train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shape_args(shapes):
    return [f"{n}.{k}={v}" for n, s in shapes.items() for k, v in s.items()]


def _export_pair(tt, out: Path, shapes=SHAPES):
    for i, (n, s) in enumerate(shapes.items()):
        cfg = tt.model_config(s, VOCAB, MAX_POS)
        export_hf(init_params(cfg, jax.random.key(i), jnp.float32), cfg, out / n)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    problems = []
    refs = read_checkpoint(path, problems)
    assert not problems, problems
    return {k: np.array(r.array()) for k, r in refs.items()}


def test_load_init_roundtrip(tmp_path):
    tt = _train_tiny()
    cfg = tt.model_config(SHAPES["target"], VOCAB, MAX_POS)
    p = init_params(cfg, jax.random.key(0), jnp.float32)
    export_hf(p, cfg, tmp_path / "target")
    q = tt.load_init(tmp_path / "target", cfg)
    assert jax.tree.structure(q) == jax.tree.structure(p)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
        assert b.dtype == jnp.float32 and b.shape == a.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_init_shape_mismatch_names_the_path(tmp_path):
    tt = _train_tiny()
    cfg = tt.model_config(SHAPES["target"], VOCAB, MAX_POS)
    export_hf(init_params(cfg, jax.random.key(0), jnp.float32), cfg, tmp_path / "target")
    wider = tt.model_config({**SHAPES["target"], "hidden_size": 96}, VOCAB, MAX_POS)
    with pytest.raises(CheckpointError, match="hidden_size=64, configured 96") as e:
        tt.load_init(tmp_path / "target", wider)
    assert str(tmp_path / "target") in str(e.value)


def test_finetune_target_only(tmp_path):
    """init_from + train=[target]: the target moves, the drafter is exported bit-identical."""
    tt = _train_tiny()
    _export_pair(tt, tmp_path / "init")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = ["experiments/train_tiny.py", "steps=2", "curriculum=[[512,2]]", "workers=1",
            "warmup=1", f"init_from={tmp_path}/init", "train=[target]",
            "sparse.prob=0.5",  # span-dropped rows go through the training step too
            f"checkpoint_dir={tmp_path}/ckpt", f"export_dir={tmp_path}/export",
            f"metrics_path={tmp_path}/m.json", f"hydra.run.dir={tmp_path}/h",
            *_shape_args(SHAPES)]
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    assert "drafter (not trained)" in p.stdout
    before, after = (_tensors(tmp_path / d / "drafter") for d in ("init", "export"))
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    t0, t1 = (_tensors(tmp_path / d / "target") for d in ("init", "export"))
    assert any(not np.array_equal(t0[k], t1[k]) for k in t0)

    # a configured shape that differs from the checkpoint fails before training, naming it
    bad = [a for a in args if not a.startswith("target.hidden_size")] + ["target.hidden_size=96"]
    bad = [a.replace(f"{tmp_path}/ckpt", f"{tmp_path}/ckpt2") for a in bad]
    p = subprocess.run([sys.executable, *bad], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode != 0
    assert f"{tmp_path}/init/target" in p.stdout + p.stderr


def test_task_opts_batches():
    """No options: exactly the generators' default batch under the (seed, step) rng; options
    reach the task generator."""
    from pflash_jax.data import step_batch, training_batch
    from pflash_jax.tasks import as_tokenizer
    from pflash_jax.tasks.task_tokenizer import TINY_TOKENIZER_PATH

    spec = ({"niah_multikey": 1}, 0, 5, 512, 2, 0.1, str(TINY_TOKENIZER_PATH))
    default = training_batch({"niah_multikey": 1}, 2, 512, as_tokenizer(TINY_TOKENIZER_PATH),
                             np.random.default_rng([0, 5]), lm_weight=0.1)
    for opts in (None, {}):
        for a, b in zip(step_batch((*spec, opts)), default, strict=True):
            np.testing.assert_array_equal(a, b)
    ids, _, _ = step_batch((*spec, {"niah_multikey": {"n_distractors": 7}}))
    assert not np.array_equal(ids, default[0])


def test_one_of_options_drawn_per_row():
    """{one_of: [...]} draws a value per row from the given ones (every one of them turns up);
    other options pass through as given."""
    from pflash_jax.data import draw_options

    rng = np.random.default_rng(0)
    drawn = [draw_options({"n_distractors": {"one_of": [1, 3, 7]}, "haystack": "essay"}, rng)
             for _ in range(200)]
    assert {d["n_distractors"] for d in drawn} == {1, 3, 7}
    assert all(d["haystack"] == "essay" for d in drawn)
    with pytest.raises(ValueError, match="n_distractors: one_of needs at least one value"):
        draw_options({"n_distractors": {"one_of": []}}, rng)


def test_pace_by_time(monkeypatch):
    """curriculum_by=time: stages and the cosine rate follow the clock against max_minutes (a
    fake clock here), the clock resumes from a saved offset; by step they follow step / steps."""
    from omegaconf import OmegaConf

    tt = _train_tiny()
    now = [100.0]
    monkeypatch.setattr(tt.time, "perf_counter", lambda: now[0])
    c = OmegaConf.create({"curriculum_by": "time", "max_minutes": 10, "steps": 10**9,
                          "warmup": 10, "lr": 1e-3, "curriculum": [[512, 8], [1024, 4]]})
    pace = tt.Pace(c)
    assert pace.stage(0) == (512, 8) and pace.lr(0) == 0.0 and pace.lr(5) == pytest.approx(5e-4)
    now[0] += 60  # 1 of 10 minutes: warmup over at step 10, the cosine starts from here
    assert pace.lr(10) == pytest.approx(1e-3)
    now[0] += 4 * 60 + 1  # just past half the run: the second stage
    assert pace.stage(11) == (1024, 4)
    assert 0.05e-3 < pace.lr(11) < 1e-3
    now[0] += 10 * 60  # past the end: the last stage and the floor rate
    assert pace.stage(12) == (1024, 4) and pace.lr(12) == pytest.approx(0.05e-3)
    resumed = tt.Pace(c, elapsed=5 * 60 + 1)  # a resumed run continues the clock
    assert resumed.stage(0) == (1024, 4)
    by_step = tt.Pace(OmegaConf.merge(c, {"curriculum_by": "step", "steps": 100}))
    assert by_step.stage(49) == (512, 8) and by_step.stage(50) == (1024, 4)
    assert by_step.lr(100) == pytest.approx(0.05e-3)
    with pytest.raises(ValueError, match="needs max_minutes"):
        tt.Pace(OmegaConf.merge(c, {"max_minutes": None}))


def test_pace_mixed_draws_every_stage_reproducibly():
    """curriculum_by=mixed: each step's stage is drawn (every stage turns up, the same for the
    same seed and step, whatever the clock); the rate follows the clock with max_minutes."""
    from omegaconf import OmegaConf

    tt = _train_tiny()
    stages = [[512, 8], [1024, 4], [2048, 2]]
    c = OmegaConf.create({"curriculum_by": "mixed", "max_minutes": None, "steps": 300,
                          "warmup": 0, "lr": 1e-3, "seed": 3, "curriculum": stages})
    a, b = tt.Pace(c), tt.Pace(c)
    drawn = [a.stage(s) for s in range(300)]
    assert set(drawn) == {tuple(x) for x in stages}
    assert drawn == [b.stage(s) for s in range(300)]
    assert not a.by_time and a.lr(300) == pytest.approx(0.05e-3)  # by step without a clock
    assert tt.Pace(OmegaConf.merge(c, {"max_minutes": 5})).by_time
    with pytest.raises(ValueError, match="curriculum_by must be one of"):
        tt.Pace(OmegaConf.merge(c, {"curriculum_by": "random"}))
