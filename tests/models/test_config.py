import dataclasses
import json

import numpy as np
import pytest

from pflash_jax.models.config import PRESETS, ConfigError, Qwen3Config, preset

from .conftest import FIXTURES


def test_presets_match_published_configs():
    c = preset("Qwen/Qwen3-8B")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.intermediate_size, c.vocab_size, c.tie_word_embeddings) == (
        4096, 36, 32, 8, 128, 12288, 151936, False)
    c = preset("0.6b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.tie_word_embeddings) == (1024, 28, 16, 3072, True)
    for c in PRESETS.values():
        assert (c.rms_norm_eps, c.rope_theta, c.max_position_embeddings) == (1e-6, 1e6, 40960)
        hash(c)  # static jit argument
    assert len({hash(c) for c in PRESETS.values()}) == len(PRESETS)


def test_hf_roundtrip_and_yarn():
    c = preset("8b").with_yarn()
    assert Qwen3Config.from_hf_config(json.loads(json.dumps(c.to_hf_config()))) == c
    assert c.max_position_embeddings == 131072
    inv, factor = c.rope_inv_freq()
    assert inv.dtype == np.float32 and inv.shape == (64,)
    np.testing.assert_allclose(factor, 0.1 * np.log(4) + 1)
    base_inv, _ = preset("8b").rope_inv_freq()
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
    good = preset("0.6b").to_hf_config()
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
        preset("8b").hidden_size = 1
