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
