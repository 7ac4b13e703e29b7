"""The run job's options mean what they say, and a user's mistake gets one clear line.

Issue 13: a preset's own values must win over option defaults (selection=specprefill used to
run a block-sparse drafter), YaRN works for checkpoints loaded by path, bad values are refused
before any compute, and CLI errors print no traceback and leave no empty output folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from pflash_jax import run_config
from pflash_jax.run import load, model_name, pflash_config, read_prompt
from pflash_jax.run_config import ModelSpec

REPO = Path(__file__).resolve().parents[2]
run_config.register()


def _config(*overrides):
    with initialize_config_dir(str(REPO / "pflash_jax" / "configs"), version_base=None):
        return run_config.to_run_config(compose("config", overrides=list(overrides)))


# ---------------------------------------------------------------- item 1: presets win
@pytest.mark.parametrize("overrides,impl,alpha", [
    (["selection=specprefill"], "dense", 0.12),        # SpecPrefill's drafter is dense
    (["selection=pflash"], "auto", 0.12),               # PFlash's is block-sparse
    (["selection=specprefill", "attention=triton"], "triton", 0.12),  # the user's choice wins
    (["selection=specprefill", "attention.impl=auto", "attention.alpha=0.1"], "auto", 0.1),
    (["selection=pflash", "attention=dense"], "dense", 0.12),
])
def test_preset_attention_wins_unless_set(overrides, impl, alpha):
    p = pflash_config(_config(*overrides))
    assert (p.attention_impl, p.alpha) == (impl, alpha), (overrides, p)


@pytest.mark.parametrize("name", ["pflash", "pflash_qa", "specprefill"])
def test_composed_preset_equals_the_preset(name):
    """Every option the run job leaves unset is the preset's own value, positions included
    (pflash, pflash_qa: renumbered; specprefill: original)."""
    from pflash_jax.pflash.config import preset

    got = pflash_config(_config(f"selection={name}")).to_dict()
    want = preset(name).to_dict()
    differ = {k for k in want if got[k] != want[k]}
    assert not differ, {k: (got[k], want[k]) for k in differ}


def test_attention_qk_fp8_reaches_the_config():
    """attention.qk=fp8 sets PFlashConfig.attention_qk; unset, the preset's "model"; on a
    dense drafter the config refuses it, naming the option."""
    assert pflash_config(_config()).attention_qk == "model"
    assert pflash_config(_config("attention.qk=fp8")).attention_qk == "fp8"
    with pytest.raises(ValueError, match="attention_qk='fp8'"):
        pflash_config(_config("selection=specprefill", "attention.qk=fp8"))


def test_attention_pv_fp8_reaches_the_config():
    """attention.pv=fp8 (with attention.qk=fp8) sets PFlashConfig.attention_pv; alone it is
    refused, naming both options."""
    assert pflash_config(_config()).attention_pv == "model"
    cfg = pflash_config(_config("attention.qk=fp8", "attention.pv=fp8"))
    assert (cfg.attention_qk, cfg.attention_pv) == ("fp8", "fp8")
    with pytest.raises(ValueError, match="attention_pv='fp8' needs attention_qk='fp8'"):
        pflash_config(_config("attention.pv=fp8"))


def test_run_default_renumbers_and_original_positions_stay_an_option():

    assert pflash_config(_config()).selection.positions == "renumbered"
    assert pflash_config(_config("selection.positions=original")).selection.positions == "original"


def test_specprefill_run_has_a_dense_drafter(tmp_path):
    """End to end: the metrics of a specprefill run record no block density (dense drafter)."""
    p = _cli(["selection=specprefill", "task.seq_len=512", "max_new_tokens=2",
              f"metrics_dir={tmp_path}/m"], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["pflash_config"]["attention_impl"] == "dense"
    assert m["cases"][0]["block_density"] is None, m["cases"][0]["block_density"]


# ---------------------------------------------------------------- item 4: YaRN for any model
def test_yarn_applies_to_a_checkpoint_loaded_by_path():
    from pflash_jax.embedded import TINY_DIR

    path = str(TINY_DIR / "target")
    plain = load(ModelSpec(path=path), "target")
    yarn = load(ModelSpec(path=path, yarn=True), "target")
    assert plain.config.rope_scaling is None
    assert yarn.config.rope_scaling is not None and yarn.config.rope_scaling.factor == 4.0
    assert yarn.config.max_position_embeddings == 4 * 32768
    # the rotary tables differ, so the model really runs with YaRN
    inv_plain, _ = plain.config.rope_inv_freq()
    inv_yarn, factor = yarn.config.rope_inv_freq()
    assert factor > 1 and not np.allclose(inv_plain, inv_yarn)


def test_model_name_follows_the_checkpoint():
    assert model_name(ModelSpec(path="/ckpt/Qwen3-8B", embedded="target")) == "Qwen3-8B"
    assert model_name(ModelSpec(embedded="target")) == "tiny_target"
    assert model_name(ModelSpec(preset="qwen3-8b", random_init=True)) == "qwen3-8b"
    assert model_name(ModelSpec(name="mine", path="/x/y")) == "mine"
    # the composed default and a path override
    c = _config("target.path=/ckpt/Qwen3-8B")
    assert model_name(c.target) == "Qwen3-8B" and model_name(c.drafter) == "tiny_drafter"


# ---------------------------------------------------------------- item 6: bad values
@pytest.mark.parametrize("override,key", [
    ("repeats=-1", "repeats"), ("max_new_tokens=0", "max_new_tokens"), ("chunk=0", "chunk"),
    ("task.seq_len=0", "task.seq_len"), ("task.n_cases=0", "task.n_cases"),
    ("task=file", "task.prompt_file"), ("target.yarn_factor=0.5", "target.yarn_factor"),
    ("drafter.dtype=fp8", "drafter.dtype"),
])
def test_bad_run_values_are_refused(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _config(override)


def _random_model(seed=0, layers=2, vocab=101):
    from pflash_jax.models.config import Qwen3Config
    from pflash_jax.models.loading import Model
    from pflash_jax.models.params import init_params

    cfg = Qwen3Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, tie_word_embeddings=True, max_position_embeddings=4096)
    return Model(cfg, init_params(cfg, jax.random.key(seed), jnp.float32, std=0.2))


@pytest.mark.parametrize("ids,match", [
    (np.array([1, 2, 101], np.int32), "out of range"),      # one id == vocab: used to be NaN
    (np.array([1, -1, 3], np.int32), "out of range"),
    (np.array([1, 2**31 + 5], np.int64), "out of range"),    # used to wrap into range
    (np.array([], np.int32), "empty"),
    (np.array([1.0, 2.0]), "integer"),
])
def test_logits_refuses_bad_ids(ids, match):
    from pflash_jax import logits

    with pytest.raises(ValueError, match=match):
        logits(_random_model(), ids)


def test_pipeline_refuses_bad_calls():
    from pflash_jax.pflash.config import preset
    from pflash_jax.pflash.pipeline import full_prefill, speculative_prefill

    d, t = _random_model(1), _random_model(2)
    ids = np.random.default_rng(0).integers(0, 101, 256)
    cfg = preset("pflash", attention_impl="reference", block_size=64)
    for kw, match in [({"max_new_tokens": 0}, "max_new_tokens"), ({"chunk": 0}, "chunk")]:
        with pytest.raises(ValueError, match=match):
            speculative_prefill(d, t, ids, cfg, **kw)
        with pytest.raises(ValueError, match=match):
            full_prefill(t, ids, **kw)
    with pytest.raises(ValueError, match="empty"):
        full_prefill(t, np.array([], np.int64))
    with pytest.raises(ValueError, match="out of range"):
        speculative_prefill(d, t, np.concatenate([ids, [2**33]]), cfg)


def test_one_layer_drafter_reports_no_block_density():
    """A 1-layer drafter's only layer gives Q/K to the scores and runs no attention, so there
    is no block density to report (it used to say 0.000)."""
    from pflash_jax.pflash.config import preset
    from pflash_jax.pflash.pipeline import drafter_pass

    ids = np.random.default_rng(0).integers(0, 101, 256)
    cfg = preset("pflash", attention_impl="reference", block_size=64)
    assert drafter_pass(_random_model(1, layers=1), ids, cfg).block_density is None
    dens = drafter_pass(_random_model(1, layers=3), ids, cfg).block_density
    assert dens is not None and 0 < dens <= 1


# ---------------------------------------------------------------- items 10-12: the CLI
def _cli(args, tmp_path, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    env.pop("PFLASH_DEBUG", None)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "pflash_jax.run", *args], cwd=work, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _bad_files(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    return latin, binary


@pytest.mark.parametrize("case", ["file_without_prompt", "latin1", "binary", "missing_prompt",
                                  "missing_ckpt", "bad_value", "keep_ratio", "gpu_kernel"])
def test_cli_user_error_is_one_line(tmp_path, case):
    latin, binary = _bad_files(tmp_path)
    args, expect = {
        "file_without_prompt": (["task=file"], "task.prompt_file"),
        "latin1": (["task=file", f"task.prompt_file={latin}"], str(latin)),
        "binary": (["task=file", f"task.prompt_file={binary}"], str(binary)),
        "missing_prompt": ([f"task.prompt_file={tmp_path}/nope.txt"], "nope.txt"),
        "missing_ckpt": ([f"target.path={tmp_path}/no_ckpt"], "target.path"),
        "bad_value": (["repeats=-1"], "repeats"),
        "keep_ratio": (["selection.keep_ratio=2"], "keep_ratio"),
        # the 3090 profile picks the Triton kernel, which needs a GPU: said before loading
        "gpu_kernel": (["device_profile=rtx3090"], "attention.impl=triton: needs a CUDA GPU"),
    }[case]
    p = _cli(args, tmp_path)
    err = p.stdout + p.stderr
    assert p.returncode != 0, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert expect in err, err[-2000:]
    # Hydra's run folder is removed when the job wrote nothing
    assert not (tmp_path / "cwd" / "outputs").exists(), list((tmp_path / "cwd").rglob("*"))


def test_prompt_file_reader_names_the_file(tmp_path):
    latin, binary = _bad_files(tmp_path)
    for path, match in [(latin, "not UTF-8"), (binary, "binary"), (tmp_path, "directory")]:
        with pytest.raises(ValueError if path != tmp_path else FileNotFoundError,
                           match=match) as e:
            read_prompt(path)
        assert str(path) in str(e.value)
    good = tmp_path / "p.txt"
    good.write_text("héllo", encoding="utf-8")
    assert read_prompt(good) == "héllo"


def test_cli_output_is_clean(tmp_path):
    """Progress drawn once, no TPU INFO line, a prompt file's full-prefill answer, and --help
    without internal schema entries."""
    prompt = tmp_path / "prompt.txt"

    prompt.write_text(" ".join(["the grass is green and the sky is blue."] * 60))
    p = _cli(["task=file", f"task.prompt_file={prompt}", "max_new_tokens=3",
              f"metrics_dir={tmp_path}/m"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert "TPU" not in out, out[-2000:]
    # a run with per-case summaries numbers them instead of redrawing a bar around each
    assert "cases x cells" not in out and "[1/1] prompt" in p.stdout, out[-2000:]
    assert "full answer:" in p.stdout
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert "full_answer" in m["cases"][0] and "pflash_answer" in m["cases"][0]
    h = _cli(["--help"], tmp_path)
    assert h.returncode == 0 and "_schema" not in h.stdout, h.stdout[:2000]
