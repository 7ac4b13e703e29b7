"""The embedded default models (the tiny trained pair) and loading from either format.

`open_model(path)` accepts a converted directory or a Hugging Face Qwen3 directory; an HF one
is converted once into a cache folder keyed by its files' sizes and mtimes
($PFLASH_CACHE, default ~/.cache/pflash_jax), then loaded. The tiny pair ships as HF
checkpoints in pflash_jax/assets/tiny/{drafter,target} (DESIGN section 5), so it goes through
exactly the converter and loader a user's real Qwen3 would.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pflash_jax.models.loading import Model, load_model

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_DIR = ASSETS / "tiny"


def cache_root() -> Path:
    return Path(os.environ.get("PFLASH_CACHE", Path.home() / ".cache" / "pflash_jax"))


def is_hf_checkpoint(path: Path) -> bool:
    """HF Qwen3 checkpoints name tensors 'model.layers...'; converted ones 'layers....'."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = json.loads(index.read_text()).get("weight_map", {})
    else:
        from pflash_jax.models.weights import read_header

        names = read_header(path / "model.safetensors", [])
    return any(n.startswith("model.") for n in names)


def _fingerprint(path: Path, dtype: str) -> str:
    h = hashlib.sha256(dtype.encode())
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def open_model(path: str | os.PathLike, *, dtype: str = "f32") -> Model:
    """Load a converted checkpoint, converting an HF checkpoint first (cached)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (expected a Qwen3 checkpoint directory)")
    if not is_hf_checkpoint(path):
        return load_model(path)
    from pflash_jax.convert import convert

    out = cache_root() / "converted" / f"{path.name}-{_fingerprint(path, dtype)}"
    if not out.exists():
        convert(path, out, dtype=dtype)
    return load_model(out)


def tiny_pair(dtype: str = "f32") -> tuple[Model, Model]:
    """(drafter, target): the embedded tiny trained pair."""
    missing = [n for n in ("drafter", "target") if not (TINY_DIR / n / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"embedded tiny model(s) {missing} missing under {TINY_DIR}: train them with "
            f"`python experiments/train_tiny.py` (see README)")
    return (open_model(TINY_DIR / "drafter", dtype=dtype),
            open_model(TINY_DIR / "target", dtype=dtype))
