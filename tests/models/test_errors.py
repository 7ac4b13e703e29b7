"""Every bad input gets one exception that names the file and the tensor or key; one root cause
(an unreadable file) gives one message, not one per tensor it would have held."""

import json

import numpy as np
import pytest

from pflash_jax import convert as convert_mod
from pflash_jax.convert import convert, main
from pflash_jax.embedded import open_model
from pflash_jax.models.config import ConfigError
from pflash_jax.models.loading import load_model
from pflash_jax.models.weights import CheckpointError

from .conftest import FIXTURES, edit_config
from .conftest import hf_copy as _hf_copy
from .conftest import rewrite as _rewrite

CASE = "gqa2_untied_hd32"  # single-file, untied


def _convert_error(d, tmp_path):
    with pytest.raises(CheckpointError) as e:
        convert(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(e.value)


def _one_problem(d, tmp_path, error=CheckpointError):
    with pytest.raises(error) as e:
        convert(d, tmp_path / "out")
    assert len(e.value.problems) == 1, e.value.problems
    return e.value.problems[0]


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
    msg = _one_problem(d, tmp_path)  # not one line per tensor that runs off the end
    assert msg.startswith(f"{f}: truncated") and str(len(data) - 1000) in msg
    with pytest.raises(CheckpointError) as e:  # a converted checkpoint: the same one line
        out = convert(FIXTURES / CASE, tmp_path / "conv")
        data = (out / "model.safetensors").read_bytes()
        (out / "model.safetensors").write_bytes(data[:-1000])
        load_model(out)
    assert len(e.value.problems) == 1 and "truncated" in e.value.problems[0]


def test_not_a_safetensors_file(tmp_path):
    d = _hf_copy(tmp_path)
    (d / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip file, not safetensors" * 9)
    msg = _convert_error(d, tmp_path)
    assert "not a safetensors file" in msg and "model.safetensors" in msg


def test_missing_shard_named(tmp_path):
    d = _hf_copy(tmp_path, "gqa4_sharded")
    (d / "model-00002-of-00005.safetensors").unlink()
    msg = _one_problem(d, tmp_path)  # the shard, not each tensor it holds
    assert "model-00002-of-00005.safetensors" in msg and "missing" in msg


def test_absent_weights_file_is_one_message(tmp_path):
    d = _hf_copy(tmp_path)
    (d / "model.safetensors").unlink()
    assert _one_problem(d, tmp_path) == (f"{d}: no model.safetensors or "
                                         f"model.safetensors.index.json")
    with pytest.raises(CheckpointError) as e:  # open_model: the same line, no internal names
        open_model(d)
    assert str(e.value) == f"{d}: no model.safetensors or model.safetensors.index.json"


def _bad_index(d, text):
    (d / "model.safetensors.index.json").write_bytes(text)


@pytest.mark.parametrize("case,break_it,says", [
    ("gqa4_sharded", lambda d: _bad_index(d, b"\xff\xfe not utf-8"), "not a shard index"),
    ("gqa4_sharded", lambda d: _bad_index(d, b'{"weight_map": ["a"]}'), "weight_map must map"),
    ("gqa4_sharded", lambda d: _bad_index(d, b'{"weight_map": {"x": 3}}'), "weight_map must map"),
    (CASE, lambda d: (d / "model.safetensors").unlink() or (d / "model.safetensors").mkdir(),
     "cannot read"),
    (CASE, lambda d: (d / "model.safetensors").write_bytes(
        _header_file({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}})),
     "malformed header entry"),
    (CASE, lambda d: (d / "model.safetensors").write_bytes(
        _header_file({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}})),
     "malformed header entry"),
])
def test_raw_exceptions_become_one_message_naming_the_file(case, break_it, says, tmp_path):
    d = _hf_copy(tmp_path, case)
    break_it(d)
    msg = _one_problem(d, tmp_path)
    assert says in msg and str(d) in msg


def _header_file(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + b"\0" * 4


def test_both_single_file_and_index_refused(tmp_path):
    d = _hf_copy(tmp_path, "gqa4_sharded")
    (d / "model.safetensors").write_bytes((d / "model-00001-of-00005.safetensors").read_bytes())
    assert "both model.safetensors and model.safetensors.index.json" in _one_problem(d, tmp_path)


def test_tensor_in_two_shards_not_dropped(tmp_path):
    d = _hf_copy(tmp_path, "gqa4_sharded")
    one, five = (d / f"model-0000{i}-of-00005.safetensors" for i in (1, 5))
    from pflash_jax.models.weights import read_header, write_safetensors

    tensors = {k: np.array(r.array()) for k, r in read_header(five, []).items()}
    tensors |= {k: np.array(r.array()) for k, r in read_header(one, []).items()}
    write_safetensors(five, tensors)
    msg = _convert_error(d, tmp_path)
    assert "is also stored in model-00001-of-00005.safetensors" in msg


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
    with pytest.raises(CheckpointError, match="run pflash-convert") as e:
        load_model(FIXTURES / CASE)
    assert len(e.value.problems) == 1  # not every missing and unexpected name


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
    assert main([str(FIXTURES / CASE), str(tmp_path / "o")]) == 2  # exists, no --overwrite
    assert capsys.readouterr().err == (f"pflash-convert: error: {tmp_path / 'o'} exists "
                                       f"(pass --overwrite to replace it)\n")
    assert main([str(FIXTURES / CASE), str(tmp_path / "o"), "--overwrite", "--dtype",
                 "bf16"]) == 0
    assert load_model(tmp_path / "o").params.norm.dtype.name == "bfloat16"
    assert main([str(tmp_path / "o"), str(tmp_path / "o"), "--overwrite"]) == 2
    assert "would replace the source" in capsys.readouterr().err
    assert (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.parametrize("debug", [False, True])
def test_cli_bad_checkpoint_one_line_exit_2(debug, tmp_path, capsys, monkeypatch):
    d = _hf_copy(tmp_path)
    edit_config(d, num_attention_heads=..., head_dim=None)  # used to be a raw KeyError
    if debug:
        monkeypatch.setenv("PFLASH_DEBUG", "1")
    else:
        monkeypatch.delenv("PFLASH_DEBUG", raising=False)
    assert main([str(d), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    line = (f"pflash-convert: error: {d / 'config.json'}: missing required key "
            f"'num_attention_heads'\n")
    if debug:
        assert err.startswith("Traceback") and err.endswith(line)
    else:
        assert err == line
    assert not (tmp_path / "o").exists()


def test_cli_truncated_file_one_line(tmp_path, capsys):
    d = _hf_copy(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main([str(d), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and "embed_tokens" not in err


def test_converting_a_converted_checkpoint_is_one_message(tmp_path):
    out = convert(FIXTURES / CASE, tmp_path / "conv")
    with pytest.raises(CheckpointError) as e:
        convert(out, tmp_path / "again")
    assert e.value.problems == [f"{out}: already converted (tensor names 'layers.*'): load it "
                                f"with load_model or open_model"]


def test_cli_write_error_one_line(tmp_path, monkeypatch, capsys):
    def full_disk(path, tensors, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(convert_mod, "write_safetensors", full_disk)
    assert main([str(FIXTURES / CASE), str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"pflash-convert: error: [Errno 28] converting "
                                       f"{FIXTURES / CASE} into {tmp_path / 'o'}: No space left "
                                       f"on device\n")
    assert list(tmp_path.iterdir()) == []


def test_open_model_bad_index_is_one_message(tmp_path):
    d = _hf_copy(tmp_path, "gqa4_sharded")
    (d / "model.safetensors.index.json").write_text("[1, 2]")  # used to raise AttributeError
    with pytest.raises(CheckpointError) as e:
        open_model(d)
    assert len(e.value.problems) == 1 and "not a shard index" in str(e.value)
