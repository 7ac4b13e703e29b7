"""The embedded default models (the tiny trained pair) and loading from either format.

`open_model(path)` accepts a converted directory or a Hugging Face Qwen3 directory; an HF one
is converted once into the conversion cache, then loaded. The tiny pair ships as HF
checkpoints in pflash_jax/assets/tiny/{drafter,target} (docs/design.md section 5), so it goes
through exactly the converter and loader a user's real Qwen3 would.

The conversion cache (where, key, eviction, never half-written) is described in
pflash_jax/convert.py; `open_model` uses it through `convert.cached_conversion`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from pflash_jax.convert import cached_conversion
from pflash_jax.models.loading import Model, load_model
from pflash_jax.models.params import Placement
from pflash_jax.models.weights import DTYPES, read_header_json

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_DIR = ASSETS / "tiny"
def is_hf_checkpoint(path: Path) -> bool:
    """HF Qwen3 checkpoints name tensors 'model.layers...'; converted ones 'layers....'.
    Unreadable weights count as converted: the loader then reports the file, once."""
    index = path / "model.safetensors.index.json"
    names = {}
    if index.exists():
        with contextlib.suppress(OSError, ValueError):
            names = json.loads(index.read_text())
        names = names.get("weight_map", {}) if isinstance(names, dict) else {}
    else:
        parsed = read_header_json(path / "model.safetensors", [])
        names = parsed[0] if parsed else {}
    return isinstance(names, dict) and any(n.startswith("model.") for n in names)


# ---------------------------------------------------------------- loading
def open_model(path: str | os.PathLike, *, dtype: str | None = None,
               quantize: str | None = None, place: Placement | None = None) -> Model:
    """Load a converted checkpoint, converting an HF checkpoint first (cached).

    dtype: None keeps the checkpoint's own dtype; "bf16", "f32" or "f16" converts (HF) or casts
    (an already converted folder) to it.
    quantize: None, "int8", "int4" or "fp8": the layer projections are quantized on the host
    while loading (`load_model`), so the full-precision model never sits on the device.
    place: where the tensors go (`load_model`; e.g. sharding.Placement); None: the default
    device.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (expected a Qwen3 checkpoint directory)")
    if not is_hf_checkpoint(path):
        from pflash_jax.convert import OUT_DTYPES, check_dtype

        check_dtype(dtype)
        cast = None if dtype in (None, "source") else DTYPES[OUT_DTYPES[dtype]]
        return load_model(path, dtype=cast, quantize=quantize, place=place)
    return load_model(cached_conversion(path, dtype), quantize=quantize, place=place)


def tiny_pair(dtype: str | None = None) -> tuple[Model, Model]:
    """(drafter, target): the embedded tiny trained pair (stored in float32)."""
    missing = [n for n in ("drafter", "target") if not (TINY_DIR / n / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"embedded tiny model(s) {missing} missing under {TINY_DIR}: train them with "
            f"`python experiments/train_tiny.py` (see README)")
    return (open_model(TINY_DIR / "drafter", dtype=dtype),
            open_model(TINY_DIR / "target", dtype=dtype))
