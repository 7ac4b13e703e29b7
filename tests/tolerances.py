"""One tolerance table, keyed by dtype name, and an assertion that prints the error.

float32: reductions over a few hundred terms in a different order than the reference.
bfloat16/float16: one rounding of the output (8/11 mantissa bits) plus bf16 P@V accumulation
inputs; values are O(1) after softmax averaging, so absolute error dominates.

Whole-model outputs (logits, KV caches) of two runs that round their intermediates differently
(other kernels, fusions or summation orders) are compared with `assert_rel_close` in units of the
dtype's epsilon EPS: the caller states how many and why.
"""

import numpy as np

TOL = {
    "float32": {"atol": 2e-5, "rtol": 1e-4},
    "bfloat16": {"atol": 2e-2, "rtol": 2e-2},
    "float16": {"atol": 4e-3, "rtol": 4e-3},
}


# Machine epsilon, the spacing of floats just above 1.0: 2^-(explicit mantissa bits).
EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}


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


def assert_rel_close(actual, expected, dtype, ulps: float, what=""):
    """rel_err(actual, expected) <= ulps * EPS[dtype]; on failure report max and mean error."""
    name = str(dtype)
    err = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    scale = float(np.abs(np.asarray(expected, np.float64)).max())
    limit = ulps * EPS[name]
    assert err.max() <= limit * scale, (
        f"{what}: max abs err {err.max():.3e} = {err.max() / scale / EPS[name]:.2f} eps of max "
        f"|expected| {scale:.3e}, mean abs err {err.mean():.3e} (limit {ulps} eps, {name})"
    )
