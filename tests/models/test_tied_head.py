"""A tied config (tie_word_embeddings=true) whose file stores its own lm_head.weight: like
transformers 5 we use the stored head (the model is untied) and warn; nothing is dropped."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import pflash_jax
from pflash_jax.convert import convert, main
from pflash_jax.embedded import open_model
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.weights import (
    CheckpointError,
    hf_to_ours,
    read_checkpoint,
    read_hf,
    read_hf_checkpoint,
)

from ..tolerances import rel_err
from .conftest import hf_copy, reference, rewrite

CASE = "gqa1_tied"


def _with_stored_head(tmp_path):
    d = hf_copy(tmp_path, CASE)
    head = np.random.default_rng(0).normal(0, 0.05, (512, 64)).astype(np.float32)

    def edit(t):
        t["lm_head.weight"] = head

    rewrite(d, edit)
    return d, head


def test_stored_head_is_used_with_a_warning(tmp_path):
    d, head = _with_stored_head(tmp_path)
    with pytest.warns(UserWarning, match=r"model\.safetensors: stores its own 'lm_head.weight'"):
        out = convert(d, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    m = pflash_jax.load_model(out)
    assert not m.config.tie_word_embeddings
    np.testing.assert_array_equal(np.asarray(m.params.lm_head), head.T)
    ref = reference(CASE)  # made by transformers with the head tied to embed_tokens
    err = rel_err(pflash_jax.logits(m, ref["full_ids"]), ref["full_logits"])
    assert err > 0.1, "the stored head must be used, not the embedding"


def test_stored_copy_of_the_embedding_gives_the_tied_logits(tmp_path):
    """A stored head equal to embed_tokens must reproduce the tied reference: the stored head
    is used in the right orientation."""
    d = hf_copy(tmp_path, CASE)
    rewrite(d, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
    with pytest.warns(UserWarning, match="lm_head.weight"):
        m = pflash_jax.load_model(convert(d, tmp_path / "out"))
    assert m.params.lm_head is not None
    ref = reference(CASE)
    err = rel_err(pflash_jax.logits(m, ref["full_ids"]), ref["full_logits"])
    assert err <= 1e-4, f"relative error {err:.2e}"


def test_open_model_and_cli_agree(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PFLASH_CACHE", str(tmp_path / "cache"))
    d, head = _with_stored_head(tmp_path)
    with pytest.warns(UserWarning, match="lm_head.weight"):
        m = open_model(d)
    np.testing.assert_array_equal(np.asarray(m.params.lm_head), head.T)
    assert main([str(d), str(tmp_path / "cli")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("pflash-convert: warning: ") and err.count("\n") == 1
    assert str(d / "model.safetensors") in err


def test_read_hf_unties_the_config(tmp_path):
    d, _ = _with_stored_head(tmp_path)
    with pytest.warns(UserWarning):
        cfg, refs = read_hf(d)
    assert not cfg.tie_word_embeddings and "lm_head.weight" in refs


def test_never_dropped_silently_with_a_fixed_tied_config(tmp_path):
    # Callers that fix the config (train_tiny's init_from) get an error, not a dropped head.
    d, _ = _with_stored_head(tmp_path)
    cfg = Qwen3Config.from_file(d / "config.json")
    problems = []
    refs = read_hf_checkpoint(d, cfg, problems)
    assert problems == [f"{d / 'model.safetensors'}: stores 'lm_head.weight' but the config "
                        f"ties the head to embed_tokens"]
    with pytest.raises(CheckpointError, match="'lm_head.weight' would not be converted"):
        hf_to_ours(refs, cfg, jnp.float32)
    assert "lm_head.weight" in read_checkpoint(d, [])
