"""Test setup: CPU by default (kernels run with interpret=True); GPU tests opt in.

GPU tests carry the `gpu` marker and run only with PFLASH_TEST_GPU=1 (on the device machine).
Without it JAX is pinned to the CPU, so interpret-mode Pallas kernels never try to compile for
a GPU that happens to be present.
"""

import os
import shutil
import tempfile

import pytest

GPU = os.environ.get("PFLASH_TEST_GPU") == "1"
SLOW = os.environ.get("PFLASH_SLOW") == "1"
if not GPU:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole session, this process and every
# subprocess the tests start (pflash-run, the scripts): they compile the same tiny-pair
# functions again and again, and a cold session cache alone cut the subprocess-heavy tests by
# a quarter (244 -> 183 s, docs/LOG.md 2026-12-03). Set before jax is imported; a user's own
# JAX_COMPILATION_CACHE_DIR wins. Removed at the end of the session.
_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="pflash-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if _CACHE is not None:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="GPU test: set PFLASH_TEST_GPU=1 on a CUDA machine")
    skip_slow = pytest.mark.skip(reason="slow test: set PFLASH_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not GPU:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not SLOW:
            item.add_marker(skip_slow)
