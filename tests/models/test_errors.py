"""Every bad input gets one exception that names the file and the tensor or key."""

import json
import shutil

import numpy as np
import pytest

from pflash_jax import convert as convert_mod
from pflash_jax.convert import convert, main
from pflash_jax.models.config import ConfigError
from pflash_jax.models.loading import load_model
from pflash_jax.models.weights import CheckpointError, read_checkpoint, write_safetensors

from .conftest import FIXTURES

CASE = "gqa2_untied_hd32"  # single-file, untied


def _hf_copy(tmp_path, case=CASE):
    d = tmp_path / "hf"
    shutil.copytree(FIXTURES / case, d)
    return d


def _rewrite(d, edit):
    """Load model.safetensors as numpy, let edit(dict) change it, write it back."""
    refs = read_checkpoint(d, [])
    tensors = {k: np.array(r.array()) for k, r in refs.items()}
    edit(tensors)
    write_safetensors(d / "model.safetensors", tensors)


def _convert_error(d, tmp_path):
    with pytest.raises(CheckpointError) as e:
        convert(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(e.value)


def test_missing_unexpected_shape_dtype_all_reported_together(tmp_path):
    d = _hf_copy(tmp_path)

    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        t["model.layers.0.self_attn.rotary.weight"] = np.ones(4, np.float32)
        t["model.layers.0.self_attn.k_proj.weight"] = np.ones((32, 64), np.float32)
        t["model.norm.weight"] = np.ones(64, np.int32)

    _rewrite(d, edit)
    msg = _convert_error(d, tmp_path)
    assert "4 checkpoint problem" in msg
    assert "missing tensor 'model.layers.1.mlp.up_proj.weight'" in msg
    assert "unexpected tensor 'model.layers.0.self_attn.rotary.weight'" in msg
    assert "'model.layers.0.self_attn.k_proj.weight' has shape (32, 64), expected (64, 64)" in msg
    assert "'model.norm.weight' has dtype I32" in msg
    assert str(d / "model.safetensors") in msg


def test_truncated_file(tmp_path):
    d = _hf_copy(tmp_path)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    msg = _convert_error(d, tmp_path)
    assert "truncated" in msg and "model.safetensors" in msg
    assert "'lm_head.weight'" in msg or "'model." in msg  # the tensor that runs off the end


def test_not_a_safetensors_file(tmp_path):
    d = _hf_copy(tmp_path)
    (d / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip file, not safetensors" * 9)
    msg = _convert_error(d, tmp_path)
    assert "not a safetensors file" in msg and "model.safetensors" in msg


def test_missing_shard_named(tmp_path):
    d = _hf_copy(tmp_path, "gqa4_sharded")
    (d / "model-00002-of-00005.safetensors").unlink()
    msg = _convert_error(d, tmp_path)
    assert "model-00002-of-00005.safetensors" in msg and "missing" in msg


def test_config_other_architecture_and_missing_fields(tmp_path):
    d = _hf_copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "qwen3_moe"
    del cfg["intermediate_size"], cfg["num_hidden_layers"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        convert(d, tmp_path / "out")
    msg = str(e.value)
    assert "3 config problem" in msg and str(d / "config.json") in msg
    assert "'qwen3_moe'" in msg and "'intermediate_size'" in msg and "'num_hidden_layers'" in msg


def test_loader_errors_name_tensor_and_file(tmp_path):
    out = convert(FIXTURES / CASE, tmp_path / "conv", dtype="f32")

    def edit(t):
        t["layers.q_proj"] = t["layers.q_proj"][:, :, :8]
        del t["lm_head"]

    _rewrite(out, edit)
    with pytest.raises(CheckpointError) as e:
        load_model(out)
    msg = str(e.value)
    assert "'layers.q_proj' has shape (2, 64, 8), expected (2, 64, 128)" in msg
    assert "missing tensor 'lm_head'" in msg and str(out) in msg


def test_loader_hints_at_unconverted_checkpoint():
    with pytest.raises(CheckpointError, match="run pflash-convert"):
        load_model(FIXTURES / CASE)


def test_conversion_never_half_written(tmp_path, monkeypatch):
    def boom(path, tensors, metadata=None):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "write_safetensors", boom)
    with pytest.raises(KeyboardInterrupt):
        convert(FIXTURES / CASE, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    assert main([str(FIXTURES / CASE), str(tmp_path / "o"), "--dtype", "f32"]) == 0
    assert (tmp_path / "o" / "model.safetensors").exists()
    assert (tmp_path / "o" / "config.json").exists()
    assert main([str(FIXTURES / CASE), str(tmp_path / "o")]) == 1  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert main([str(FIXTURES / CASE), str(tmp_path / "o"), "--overwrite"]) == 0
    assert load_model(tmp_path / "o").params.norm.dtype.name == "bfloat16"
