"""Live parity with transformers wherever torch is installed (the GPU machine; not CPU CI).

Builds a fresh tiny random Qwen3ForCausalLM with the fixture script's recipe, saves it as a
sharded Hugging Face checkpoint, converts and loads it with ours, and compares all outputs.
"""

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pflash_jax.convert import convert  # noqa: E402
from pflash_jax.models import qwen3  # noqa: E402
from pflash_jax.models.loading import load_model  # noqa: E402

from ..tolerances import rel_err  # noqa: E402

SCRIPT = Path(__file__).parents[2] / "scripts" / "make_fixtures.py"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("case", ["gqa4_sharded", "yarn"])
def test_live_parity(case, tmp_path):
    mf = _fixture_module()
    model = mf.build_case(mf.CASES[case], seed=1234)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True, max_shard_size="150KB")
    ref = mf.reference_outputs(model, seed=1234)
    m = load_model(convert(tmp_path / "hf", tmp_path / "ours", dtype="f32"))

    full = qwen3.logits(m, ref["full_ids"])
    assert rel_err(full, ref["full_logits"]) <= 1e-4
    ids, pos = jnp.asarray(ref["pf_ids"])[None], jnp.asarray(ref["pf_pos"])[None]
    assert rel_err(qwen3.forward_jit(m.params, m.config, ids, pos)[0], ref["pf_logits"]) <= 1e-4
    _, cache = qwen3.prefill_jit(m.params, m.config, ids, pos,
                                 cache_len=ids.shape[1] + len(ref["dec_ids"]))
    for t, (tok, p) in enumerate(zip(ref["dec_ids"], ref["dec_pos"], strict=True)):
        lg, cache = qwen3.decode_jit(m.params, m.config, jnp.asarray([tok]), jnp.asarray([p]),
                                     cache)
        assert rel_err(lg[0], ref["dec_logits"][t]) <= 1e-4, f"decode step {t}"
    gen = qwen3.greedy_generate(m, ref["gen_prompt"], len(ref["gen_tokens"]))
    np.testing.assert_array_equal(gen, ref["gen_tokens"])
