"""The one timing helper, plus the provenance every metrics.json carries.

Rules (docs/design.md section 7): compile outside the timed region, block until ready, report the
median of several repeats, never time on zeros, and time the baseline in the same process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    first_call_s: float  # compile + first run
    repeats: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def block(x):
    """block_until_ready on every array leaf of a pytree; returns x."""
    return jax.block_until_ready(x)


def time_fn(fn: Callable[..., Any], *args, warmup: int = 1, repeats: int = 5, **kwargs) -> Timing:
    """Time `fn(*args, **kwargs)`: first call (compile) separately, then the median of repeats."""
    t0 = time.perf_counter()
    block(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        block(fn(*args, **kwargs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), first, repeats)


def git_commit() -> str:
    """$PFLASH_COMMIT when set (the GPU machine gets a copy of the working tree whose .git may
    lag behind: the device calls pass the real commit), else the commit of the working tree
    (with '+dirty' when it has changes), else 'unknown'."""
    if os.environ.get("PFLASH_COMMIT"):
        return os.environ["PFLASH_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("PFLASH_COMMIT", "unknown")


def device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", d.platform)


def provenance() -> dict:
    """Card, software versions and commit: attached to every recorded result."""
    import jaxlib

    return {
        "device": device_name(),
        "platform": jax.default_backend(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "act_quant": os.environ.get("PFLASH_ACT_QUANT", "fused"),  # models/act_quant.py
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def peak_memory_bytes(device=None) -> int | None:
    """Peak memory in use by this process on `device` (default: the first), None where the
    backend does not report it (the CPU)."""
    stats = (device or jax.devices()[0]).memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def host_peak_bytes() -> int | None:
    """Peak resident host memory of this process so far (ru_maxrss; None where unavailable)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def write_metrics(path: str | os.PathLike, metrics: dict) -> Path:
    """Write metrics + provenance as JSON atomically (tmp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"provenance": provenance(), **metrics}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
