"""The output dtype is the source checkpoint's unless asked otherwise, for pflash-convert and
the automatic conversion (open_model) alike, so one checkpoint gives one set of logits."""

import warnings

import ml_dtypes
import numpy as np
import pytest

from pflash_jax.convert import convert, main
from pflash_jax.embedded import open_model
from pflash_jax.models.loading import load_model
from pflash_jax.models.qwen3 import logits
from pflash_jax.models.weights import read_checkpoint

from .conftest import FIXTURES, hf_copy, reference, rewrite

CASE = "gqa2_untied_hd32"
BF16 = ml_dtypes.bfloat16


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PFLASH_CACHE", str(tmp_path / "cache"))


def _cast(d, dtype_of):
    """Rewrite d's tensors, each in dtype_of(name)."""
    rewrite(d, lambda t: t.update({k: v.astype(dtype_of(k)) for k, v in t.items()}))


def _stored(out):
    return {r.dtype for r in read_checkpoint(out, []).values()}


def test_f32_source_stays_f32(tmp_path):
    assert _stored(convert(FIXTURES / CASE, tmp_path / "out")) == {"F32"}  # was bf16
    assert open_model(FIXTURES / CASE).dtype == np.float32


def test_bf16_source_gives_one_set_of_logits(tmp_path):
    d = hf_copy(tmp_path, CASE)
    _cast(d, lambda name: BF16)
    by_cli = load_model(convert(d, tmp_path / "out"))
    auto = open_model(d)  # was converted to f32: other logits than pflash-convert's bf16
    assert by_cli.dtype == auto.dtype == BF16
    ids = reference(CASE)["full_ids"]
    np.testing.assert_array_equal(np.asarray(logits(by_cli, ids)), np.asarray(logits(auto, ids)))


@pytest.mark.parametrize("dtype,code,np_dtype", [("f32", "F32", np.float32),
                                                 ("f16", "F16", np.float16),
                                                 ("bf16", "BF16", BF16)])
def test_explicit_dtype(dtype, code, np_dtype, tmp_path):
    d = hf_copy(tmp_path, CASE)
    _cast(d, lambda name: BF16)
    assert _stored(convert(d, tmp_path / "out", dtype=dtype)) == {code}
    assert open_model(d, dtype=dtype).dtype == np_dtype
    assert open_model(tmp_path / "out", dtype="f32").dtype == np.float32  # converted: a cast


def test_mixed_checkpoint_takes_the_dtype_of_most_bytes(tmp_path):
    d = hf_copy(tmp_path, CASE)
    _cast(d, lambda name: np.float32 if "norm" in name else BF16)  # f32 norms, bf16 matrices
    with pytest.warns(UserWarning, match=r"mix dtypes \['BF16', 'F32'\]; converting all to BF16"):
        out = convert(d, tmp_path / "out")
    assert _stored(out) == {"BF16"}
    with pytest.warns(UserWarning, match="mix dtypes"):
        assert open_model(d).dtype == BF16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit dtype is not a guess: no warning
        assert _stored(convert(d, tmp_path / "f32", dtype="f32")) == {"F32"}


def test_cli_dtype_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--dtype {source,bf16,f32,f16}" in capsys.readouterr().out
    assert main([str(FIXTURES / CASE), str(tmp_path / "a")]) == 0
    assert _stored(tmp_path / "a") == {"F32"}
    assert main([str(FIXTURES / CASE), str(tmp_path / "b"), "--dtype", "f16"]) == 0
    assert _stored(tmp_path / "b") == {"F16"}
