import dataclasses
import json

import numpy as np
import pytest

from pflash_jax.models.config import MODEL_PRESETS, ConfigError, Qwen3Config, model_preset

from .conftest import FIXTURES


def test_presets_match_published_configs():
    c = model_preset("Qwen/Qwen3-8B")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (
        4096, 36, 32, 8, 128, 12288, 151936, False)
    c = model_preset("0.6b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.tie_word_embeddings) == (1024, 28, 16, 3072, True)
    for c in MODEL_PRESETS.values():
        assert (c.rms_norm_eps, c.rope_theta, c.max_position_embeddings) == (1e-6, 1e6, 40960)
        hash(c)  # static jit argument
    assert len({hash(c) for c in MODEL_PRESETS.values()}) == len(MODEL_PRESETS)


def test_hf_roundtrip_and_yarn():
    c = model_preset("8b").with_yarn()
    assert Qwen3Config.from_hf_config(json.loads(json.dumps(c.to_hf_config()))) == c
    assert c.max_position_embeddings == 131072
    inv, factor = c.rope_inv_freq()
    assert inv.dtype == np.float32 and inv.shape == (64,)
    np.testing.assert_allclose(factor, 0.1 * np.log(4) + 1)
    base_inv, _ = model_preset("8b").rope_inv_freq()
    # High frequencies extrapolate (unchanged), low frequencies interpolate (divided by 4).
    np.testing.assert_allclose(inv[:8], base_inv[:8], rtol=1e-6)
    np.testing.assert_allclose(inv[-4:], base_inv[-4:] / 4, rtol=1e-6)


def test_legacy_and_v5_rope_keys_agree():
    v5 = json.loads((FIXTURES / "yarn" / "config.json").read_text())
    legacy = {k: v for k, v in v5.items() if k != "rope_parameters"}
    legacy["rope_theta"] = v5["rope_parameters"]["rope_theta"]
    legacy["rope_scaling"] = {k: v for k, v in v5["rope_parameters"].items() if k != "rope_theta"}
    assert Qwen3Config.from_hf_config(v5) == Qwen3Config.from_hf_config(legacy)
    assert Qwen3Config.from_hf_config(v5).rope_scaling.factor == 4.0


def _problems(d, source="cfg.json"):
    with pytest.raises(ConfigError) as e:
        Qwen3Config.from_hf_config(d, source)
    return str(e.value)


def test_refuses_other_architecture_unknown_keys_and_missing_fields():
    good = model_preset("0.6b").to_hf_config()
    msg = _problems({**good, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    assert "cfg.json" in msg and "model_type" in msg and "'llama'" in msg
    msg = _problems({**good, "qk_layernorm_scale": 2.0, "hidden_act": "gelu"})
    assert "'qk_layernorm_scale'" in msg and "hidden_act" in msg and "2 config problem" in msg
    bad = {k: v for k, v in good.items() if k not in ("hidden_size", "vocab_size")}
    msg = _problems(bad)
    assert "'hidden_size'" in msg and "'vocab_size'" in msg
    msg = _problems({**good, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert "rope_type='llama3'" in msg
    msg = _problems({**good, "use_sliding_window": True})
    assert "use_sliding_window" in msg


def test_config_file_errors_name_the_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        Qwen3Config.from_file(p)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        model_preset("8b").hidden_size = 1


@pytest.mark.parametrize("key,value", [
    ("tie_word_embeddings", "false"),  # a string: used to be taken as true
    ("tie_word_embeddings", 0),
    ("rms_norm_eps", "1e-6"),  # used to convert, then fail at the first forward
    ("rms_norm_eps", True),
    ("rope_theta", "1e6"),
    ("hidden_size", True),  # a bool is not an int
    ("hidden_size", 64.0),
    ("num_key_value_heads", "8"),
    ("max_position_embeddings", -1),
    ("attention_bias", 0),  # equals False, but is not JSON false
    ("partial_rotary_factor", True),  # equals 1.0, but is not a number
])
def test_wrongly_typed_values_are_refused(key, value, tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({**model_preset("0.6b").to_hf_config(), key: value}))
    with pytest.raises(ConfigError) as e:
        Qwen3Config.from_file(p)
    assert e.value.problems == [e.value.problems[0]], "one bad value, one message"
    msg = str(e.value)
    assert str(p) in msg and f"{key}={value!r}" in msg


@pytest.mark.parametrize("field,value", [("factor", "abc"), ("factor", True), ("factor", 0),
                                         ("beta_fast", "32"), ("truncate", "yes"),
                                         ("original_max_position_embeddings", 1.5),
                                         ("rope_type", 3)])
def test_rope_fields_typed(field, value, tmp_path):
    cfg = model_preset("8b").with_yarn().to_hf_config()
    cfg["rope_scaling"][field] = value
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        Qwen3Config.from_file(p)
    assert len(e.value.problems) == 1
    assert f"{p}: rope_scaling.{field}={value!r}" in str(e.value)


def test_numbers_accepted_as_transformers_would():
    good = model_preset("0.6b").to_hf_config()
    c = Qwen3Config.from_hf_config({**good, "rms_norm_eps": 0, "rope_theta": 10000,
                                    "partial_rotary_factor": 1})
    assert c.rms_norm_eps == 0.0 and isinstance(c.rms_norm_eps, float)
    assert c.rope_theta == 10000.0 and isinstance(c.rope_theta, float)
    c = Qwen3Config.from_hf_config({**good, "num_key_value_heads": None, "head_dim": None})
    assert (c.num_key_value_heads, c.head_dim) == (16, 1024 // 16)


@pytest.mark.parametrize("missing", ["hidden_size", "num_attention_heads", "vocab_size"])
def test_missing_required_field_is_one_message(missing, tmp_path):
    # head_dim null makes the parser derive it from hidden_size / num_attention_heads: a
    # missing one used to escape as a raw KeyError.
    cfg = {**model_preset("0.6b").to_hf_config(), "head_dim": None, "num_key_value_heads": None}
    del cfg[missing]
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        Qwen3Config.from_file(p)
    assert e.value.problems == [f"{p}: missing required key {missing!r}"]


def test_unreadable_config_files(tmp_path):
    p = tmp_path / "config.json"
    p.write_bytes(b"\xff\xfe{\x00")  # not UTF-8: used to escape as UnicodeDecodeError
    with pytest.raises(ConfigError, match="config.json: cannot read a JSON config"):
        Qwen3Config.from_file(p)
    with pytest.raises(ConfigError, match="cannot read"):
        Qwen3Config.from_file(tmp_path / "absent.json")
    bad = {**model_preset("0.6b").to_hf_config(), "layer_types": "full_attention"}
    p.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="layer_types='full_attention' must be a list"):
        Qwen3Config.from_file(p)
