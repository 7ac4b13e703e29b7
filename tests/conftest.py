"""Test setup: CPU by default (kernels run with interpret=True); GPU tests opt in.

GPU tests carry the `gpu` marker and run only with PFLASH_TEST_GPU=1 (on the device machine).
Without it JAX is pinned to the CPU, so interpret-mode Pallas kernels never try to compile for
a GPU that happens to be present.
"""

import os

import pytest

GPU = os.environ.get("PFLASH_TEST_GPU") == "1"
SLOW = os.environ.get("PFLASH_SLOW") == "1"
if not GPU:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="GPU test: set PFLASH_TEST_GPU=1 on a CUDA machine")
    skip_slow = pytest.mark.skip(reason="slow test: set PFLASH_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not SLOW:
            item.add_marker(skip_slow)
