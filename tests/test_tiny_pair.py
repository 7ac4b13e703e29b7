"""The embedded tiny pair is an ordinary HF Qwen3 checkpoint: transformers and our converter +
loader + forward give the same logits (fixture from scripts/make_tiny_pair_fixture.py; live
too wherever torch and transformers are installed)."""

from pathlib import Path

import numpy as np
import pytest

from pflash_jax.embedded import TINY_DIR, open_model
from pflash_jax.models.qwen3 import logits
from tests.tolerances import rel_err

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_pair_logits.npz"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PFLASH_CACHE", str(tmp_path))


@pytest.mark.parametrize("name", ["drafter", "target"])
def test_matches_transformers_fixture(name):
    ref = np.load(FIXTURE)
    model = open_model(TINY_DIR / name, dtype="f32")
    got = np.asarray(logits(model, ref[f"{name}_ids"]))
    err = rel_err(got, ref[f"{name}_logits"])
    assert err <= 1e-4, f"{name}: relative logits error {err:.2e} against transformers"


@pytest.mark.parametrize("name", ["drafter", "target"])
def test_matches_transformers_live(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = transformers.AutoModelForCausalLM.from_pretrained(TINY_DIR / name,
                                                          dtype=torch.float32).eval()
    ids = np.random.default_rng(1).integers(1, m.config.vocab_size, 48)
    with torch.no_grad():
        want = m(torch.from_numpy(ids)[None]).logits[0].numpy()
    got = np.asarray(logits(open_model(TINY_DIR / name, dtype="f32"), ids))
    assert rel_err(got, want) <= 1e-4


def test_pair_shares_a_tokenizer():
    d, t = (open_model(TINY_DIR / n) for n in ("drafter", "target"))
    assert d.config.vocab_size == t.config.vocab_size
    assert d.tokenizer is not None and t.tokenizer is not None
    text = "The special magic piano number is: 1234567."
    assert list(d.tokenizer.encode(text)) == list(t.tokenizer.encode(text))
    assert sum(p.stat().st_size for p in TINY_DIR.rglob("*") if p.is_file()) < 30e6
