"""One tolerance table, keyed by dtype name, and an assertion that prints the error.

float32: reductions over a few hundred terms in a different order than the reference.
bfloat16/float16: one rounding of the output (8/11 mantissa bits) plus bf16 P@V accumulation
inputs; values are O(1) after softmax averaging, so absolute error dominates.
"""

import numpy as np

TOL = {
    "float32": {"atol": 2e-5, "rtol": 1e-4},
    "bfloat16": {"atol": 2e-2, "rtol": 2e-2},
    "float16": {"atol": 4e-3, "rtol": 4e-3},
}


def assert_close(actual, expected, dtype=None, what="", **override):
    """Compare with the dtype's tolerance; on failure report max and mean absolute error."""
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    name = str(dtype if dtype is not None else actual.dtype)
    tol = {**TOL.get(name, TOL["float32"]), **override}
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    ok = np.all(err <= tol["atol"] + tol["rtol"] * np.abs(expected))
    assert ok, (
        f"{what}: max abs err {err.max():.3e}, mean abs err {err.mean():.3e} "
        f"(atol {tol['atol']}, rtol {tol['rtol']}, dtype {name})"
    )


def rel_err(actual, expected) -> float:
    """max |a - e| / max |e|: the relative error used for logits parity."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())
