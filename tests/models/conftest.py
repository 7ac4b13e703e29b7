"""Shared helpers for model tests: fixture cases and float32-exact matmuls."""

from pathlib import Path

import jax
import numpy as np
import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "models"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").exists())


@pytest.fixture(autouse=True)
def _highest_precision(request):
    # GPUs run float32 matmuls in TF32 by default; parity with transformers needs full fp32.
    # bf16 GPU tests (cuDNN attention) keep the default.
    if request.node.get_closest_marker("gpu"):
        yield
        return
    with jax.default_matmul_precision("highest"):
        yield


def reference(case: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / case / "reference.npz"))


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """case -> converted float32 checkpoint directory (converted once per session)."""
    from pflash_jax.convert import convert

    root = tmp_path_factory.mktemp("converted")
    return {case: convert(FIXTURES / case, root / case, dtype="f32") for case in CASES}


def hf_copy(tmp_path, case="gqa2_untied_hd32", name="hf"):
    """A writable copy of a fixture HF checkpoint (default: single-file, untied)."""
    import shutil

    d = tmp_path / name
    shutil.copytree(FIXTURES / case, d)
    (d / "reference.npz").unlink()
    return d


def rewrite(d, edit):
    """Load d/model.safetensors as numpy, let edit(dict) change it in place, write it back."""
    from pflash_jax.models.weights import read_checkpoint, write_safetensors

    refs = read_checkpoint(d, [])
    tensors = {k: np.array(r.array()) for k, r in refs.items()}
    edit(tensors)
    write_safetensors(d / "model.safetensors", tensors)


def edit_config(d, **changes):
    """Set (or, with value ...: delete) keys of d/config.json."""
    import json

    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
