"""The conversion cache (convert.py): keyed by content and dtype, never serves a half-written
entry, evicts what a retrained folder left behind, and can be listed and cleared."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from pflash_jax import convert as convert_module
from pflash_jax.convert import MARKER, cache_entries, content_key, main
from pflash_jax.embedded import open_model
from pflash_jax.models.qwen3 import logits

from .conftest import hf_copy, reference, rewrite

CASE = "gqa1_tied"  # has tokenizer files


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PFLASH_CACHE", str(root))
    return root / "converted"


def _names():
    return [d.name for d, _ in cache_entries()]


def test_touch_reuses_the_entry(tmp_path):
    d = hf_copy(tmp_path, CASE)
    open_model(d)
    first = _names()
    for f in d.iterdir():
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    open_model(d)
    (tmp_path / "elsewhere").mkdir()
    open_model(d.rename(tmp_path / "elsewhere" / d.name))  # a move too
    assert _names() == first and len(first) == 1


def test_new_content_new_entry_and_the_old_one_evicted(tmp_path):
    d = hf_copy(tmp_path, CASE)
    before = np.asarray(open_model(d).params.norm)
    old = _names()
    rewrite(d, lambda t: t.update({"model.norm.weight": t["model.norm.weight"] * 2}))
    after = np.asarray(open_model(d).params.norm)
    np.testing.assert_array_equal(after, before * 2)  # the new content is served
    assert len(_names()) == 1 and _names() != old  # and the stale copy is gone


def test_tokenizer_is_part_of_the_key(tmp_path):
    d = hf_copy(tmp_path, CASE)
    key = content_key(d, "F32")
    tok = json.loads((d / "tokenizer.json").read_text())
    (d / "tokenizer.json").write_text(json.dumps(tok, indent=1))
    assert content_key(d, "F32") != key


def test_dtype_is_part_of_the_key_and_the_source_dtype_is_stored(tmp_path):
    d = hf_copy(tmp_path, CASE)
    rewrite(d, lambda t: t.update({k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()}))
    assert open_model(d).dtype == ml_dtypes.bfloat16  # stored as bf16: no doubled copy
    assert open_model(d, dtype="f32").dtype == np.float32
    entries = dict((info["dtype"], e) for e, info in cache_entries())
    assert sorted(entries) == ["bf16", "f32"]
    src = (d / "model.safetensors").stat().st_size
    size = {k: (e / "model.safetensors").stat().st_size for k, e in entries.items()}
    assert size["bf16"] < 1.1 * src and size["f32"] > 1.8 * src


def test_half_written_entry_is_never_served(tmp_path, cache):
    d = hf_copy(tmp_path, CASE)
    entry = cache / f"{d.name}-f32-{content_key(d, 'F32')}"
    entry.mkdir(parents=True)  # a run killed after the rename, before the marker
    (entry / "config.json").write_text((d / "config.json").read_text())
    (entry / "model.safetensors").write_bytes(b"partial")
    m = open_model(d)  # converted again, not the partial file
    assert json.loads((entry / MARKER).read_text())["source"] == str(d.resolve())
    assert _names() == [entry.name]
    ref = reference(CASE)
    np.testing.assert_allclose(np.asarray(logits(m, ref["full_ids"])), ref["full_logits"],
                               rtol=1e-4, atol=1e-4)


def test_list_and_clear_cache(tmp_path, capsys, cache):
    d = hf_copy(tmp_path, CASE)
    open_model(d)
    (cache / "old-format-0123456789abcdef").mkdir()  # no marker: listed as half-written
    assert main(["--list-cache"]) == 0
    out = capsys.readouterr().out
    name = f"{d.name}-f32-{content_key(d, 'F32')}"
    assert f"{name}  f32   from {d.resolve()}" in out and "KB" in out
    assert "half-written" in out and "total, 2 entries" in out
    assert main(["--clear-cache"]) == 0
    assert capsys.readouterr().out.startswith("removed 2 entries (")
    assert cache_entries() == [] and list(cache.iterdir()) == []
    assert main(["--list-cache"]) == 0
    assert "total, 0 entries" in capsys.readouterr().out


def test_help_documents_the_cache(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "$PFLASH_CACHE" in out and "--list-cache" in out and "--clear-cache" in out
    assert "PFLASH_CACHE" in convert_module.__doc__


def test_content_sample_of_a_large_file(tmp_path):
    """Beyond the first and last MiB the key samples 16 blocks: a change there is seen, one
    byte between them is not (the documented limit of a sampled key)."""
    from pflash_jax.models.weights import write_safetensors

    d = tmp_path / "big"
    d.mkdir()
    data = np.random.default_rng(0).normal(size=(16 << 20) // 4).astype(np.float32)  # 16 MiB
    write_safetensors(d / "model.safetensors", {"w": data})
    key = content_key(d, "F32")
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    start = len(raw) - data.nbytes
    step = data.nbytes // 16
    unsampled = start + 7 * step + step // 2  # mid-way between two sampled blocks
    raw[unsampled] ^= 0xFF
    f.write_bytes(raw)
    assert content_key(d, "F32") == key
    raw[start + 8 * step + 10] ^= 0xFF  # inside the 9th sampled block
    f.write_bytes(raw)
    assert content_key(d, "F32") != key
    assert content_key(d, "BF16") != content_key(d, "F32")
