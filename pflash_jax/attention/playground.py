"""Package side of notebooks/kernel_playground.py: check an inline kernel against the reference,
and time it against cuDNN on a GPU.

A kernel under test is any callable `fn(q, k, v, block_mask) -> o` with the contract of
`block_sparse_attention` for causal prefill: q [B,S,N,H], k/v [B,S,K,H], block_mask a BlockMask
(`.mask` bool [B,N,M,M], `.indices`/`.counts` compressed rows, `.block_size`, `.seq_len`),
output [B,S,N,H] in q's dtype.

Design choices:
- `check_kernel` runs every case, then raises one AssertionError naming each failing case with
  its max and mean absolute error (a broken kernel usually fails several cases; seeing which
  ones points at the bug: only "diagonal" -> the causal mask, only "S % block" -> padding).
- Inputs are fresh normal draws (never zeros: zeros hide a wrong softmax), from a seed per case.
- The cases cover the shapes kernels get wrong: the causal diagonal alone, every block kept
  (= dense attention), random sparse rows, GQA, S not a multiple of the block, batch > 1, the
  FlashPrefill selection itself, and bf16.
- Tolerances in one table keyed by dtype (tests/tolerances.py), compared in float32 on the real
  rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.attention.api import block_sparse_attention, dense_attention
from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.attention.selection import select_blocks, select_blocks_fixed_density

# Max absolute error allowed against the float32 reference, by input dtype. float32: the kernel's
# online softmax reorders sums (and may use exp2), ~1e-6 on unit-scale outputs. bf16: inputs are
# rounded to bf16 before both paths; p is cast to bf16 before P @ V in a flash kernel (8 bits).
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2, "float16": 5e-3}

MASK_KINDS = ("diagonal", "full", "random", "selected")


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """One check: shapes, block size, which block mask, input dtype.

    mask: "diagonal" (only the causal diagonal block: the per-token causal mask alone),
    "full" (every causal block: must equal dense attention), "random" (each causal block kept
    with probability `density`, diagonal always), "selected" (FlashPrefill `select_blocks` with
    `alpha` on these very q/k).
    """

    name: str
    S: int
    N: int = 4
    K: int = 2
    H: int = 32
    block_size: int = 32
    mask: str = "random"
    density: float = 0.4
    alpha: float = 0.12
    batch: int = 1
    dtype: str = "float32"

    def __post_init__(self):
        if self.mask not in MASK_KINDS:
            raise ValueError(f"CheckCase.mask must be one of {MASK_KINDS}, got {self.mask!r}")
        if self.N % self.K:
            raise ValueError(f"CheckCase {self.name!r}: N={self.N} not a multiple of K={self.K}")
        if self.dtype not in TOLERANCE:
            raise ValueError(f"CheckCase.dtype must be one of {tuple(TOLERANCE)}")


DEFAULT_CASES: tuple[CheckCase, ...] = (
    CheckCase("causal diagonal only", S=128, mask="diagonal"),
    CheckCase("all blocks (= dense)", S=128, mask="full"),
    CheckCase("random blocks", S=256, mask="random"),
    CheckCase("GQA 4 q heads : 1 kv head", S=192, N=4, K=1, mask="random", density=0.5),
    CheckCase("S % block != 0", S=200, mask="random", density=0.5),
    CheckCase("batch 2, FlashPrefill selection", S=320, batch=2, mask="selected"),
    CheckCase("bf16", S=160, mask="random", dtype="bfloat16"),
)

# Even smaller, for CI and quick edits (PFLASH_NB_SMALL=1): still every failure mode above.
SMALL_CASES: tuple[CheckCase, ...] = (
    CheckCase("causal diagonal only", S=64, mask="diagonal"),
    CheckCase("all blocks (= dense)", S=96, mask="full"),
    CheckCase("GQA 4:1, random blocks", S=128, N=4, K=1, mask="random", density=0.5),
    CheckCase("S % block != 0, batch 2", S=104, batch=2, mask="random", density=0.5),
    CheckCase("bf16", S=96, mask="random", dtype="bfloat16"),
)


def random_qkv(B: int, S: int, N: int, K: int, H: int, dtype="float32", *, seed: int = 0):
    """Standard-normal q [B,S,N,H], k/v [B,S,K,H] (never zeros), in `dtype`.

    Drawn with NumPy: jax.random would compile a sampler per shape (about a second on a CPU)."""
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dt)
                 for shape in ((B, S, N, H), (B, S, K, H), (B, S, K, H)))


_from_dense = jax.jit(BlockMask.from_dense, static_argnames=("block_size", "seq_len", "causal"))


def random_block_mask(B: int, N: int, S: int, block_size: int, density: float, *,
                      seed: int = 0) -> BlockMask:
    """Each causal block kept with probability `density`; the diagonal always (BlockMask)."""
    M = -(-S // block_size)
    keep = np.random.default_rng(seed).random((B, N, M, M)) < density
    return _from_dense(jnp.asarray(keep), block_size=block_size, seq_len=S)


def case_inputs(case: CheckCase, seed: int = 0):
    """(q, k, v, block_mask) for one case."""
    q, k, v = random_qkv(case.batch, case.S, case.N, case.K, case.H, case.dtype, seed=seed)
    if case.mask == "selected":
        return q, k, v, select_blocks(q, k, alpha=case.alpha, block_size=case.block_size)
    density = {"diagonal": 0.0, "full": 1.0}.get(case.mask, case.density)
    # uniform in [0, 1): density 0 keeps nothing (then the diagonal is added), 1 keeps all.
    return q, k, v, random_block_mask(case.batch, case.N, case.S, case.block_size, density,
                                      seed=seed + 1)


def reference(q, k, v, block_mask: BlockMask):
    """The spec: dense float32-softmax attention restricted to the expanded block mask."""
    return block_sparse_attention(q, k, v, block_mask, impl="reference",
                                  block_size=block_mask.block_size)


def package_kernel(q, k, v, block_mask: BlockMask):
    """The package's Pallas/Triton kernel (interpret mode off the GPU), for comparison."""
    return block_sparse_attention(q, k, v, block_mask, impl="triton",
                                  block_size=block_mask.block_size,
                                  interpret=jax.default_backend() != "gpu")


def compare(got, want, dtype: str) -> dict:
    """Max / mean absolute error in float32 and whether it is within TOLERANCE[dtype]."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    if got.shape != want.shape:
        return {"max_err": math.inf, "mean_err": math.inf, "ok": False,
                "note": f"shape {got.shape} != expected {want.shape}"}
    err = np.abs(got - want)
    max_err = float(np.max(err)) if np.all(np.isfinite(got)) else math.inf
    mean_err = float(np.mean(err)) if np.isfinite(max_err) else math.inf
    tol = TOLERANCE[dtype]
    return {"max_err": max_err, "mean_err": mean_err, "ok": max_err <= tol, "tol": tol,
            "note": "" if np.isfinite(max_err) else "non-finite output"}


def check_kernel(fn: Callable, cases: Sequence[CheckCase] = DEFAULT_CASES, *, seed: int = 0,
                 verbose: bool = True) -> list[dict]:
    """Run `fn(q, k, v, block_mask)` on every case against the reference.

    Returns one dict per case (name, shapes, density, max_err, mean_err, ok). Raises
    AssertionError listing every failing case with its max and mean error, or its exception.
    """
    rows, failures = [], []
    for i, case in enumerate(cases):
        q, k, v, bm = case_inputs(case, seed=seed + 17 * i)
        want = reference(q, k, v, bm)
        row = {"case": case.name, "B": case.batch, "S": case.S, "N": case.N, "K": case.K,
               "H": case.H, "block": case.block_size, "dtype": case.dtype,
               "density": float(bm.density())}
        try:
            got = jax.block_until_ready(fn(q, k, v, bm))
        except Exception as e:  # a kernel that does not even run is a failed case, not a crash
            row.update(max_err=math.inf, mean_err=math.inf, ok=False,
                       note=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        else:
            if getattr(got, "dtype", None) != q.dtype:
                row.update(max_err=math.inf, mean_err=math.inf, ok=False,
                           note=f"output dtype {getattr(got, 'dtype', None)} != {q.dtype}")
            else:
                row.update(compare(got, want, case.dtype))
        rows.append(row)
        if not row["ok"]:
            failures.append(row)
    if verbose:
        print(format_rows(rows))
    if failures:
        lines = [f"  {r['case']} (B={r['B']} S={r['S']} N={r['N']} K={r['K']} {r['dtype']}): "
                 f"max err {r['max_err']:.3g}, mean err {r['mean_err']:.3g}"
                 f"{', tol ' + format(r['tol'], '.0e') if 'tol' in r else ''}"
                 f"{' - ' + r['note'] if r.get('note') else ''}" for r in failures]
        raise AssertionError(f"kernel mismatch against the reference in {len(failures)} of "
                             f"{len(rows)} cases:\n" + "\n".join(lines))
    return rows


def format_rows(rows: list[dict]) -> str:
    out = [f"{'case':34s} {'B':>2s} {'S':>5s} {'N:K':>5s} {'dtype':>9s} {'blocks kept':>11s} "
           f"{'max err':>9s} {'mean err':>9s}  ok"]
    for r in rows:
        out.append(f"{r['case'][:34]:34s} {r['B']:>2d} {r['S']:>5d} {r['N']:>2d}:{r['K']:<2d} "
                   f"{r['dtype']:>9s} {r['density']:>11.2f} {r['max_err']:>9.2e} "
                   f"{r['mean_err']:>9.2e}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(out)


# ---------------------------------------------------------------- timing (GPU only)
def gpu_available() -> bool:
    return jax.default_backend() == "gpu"


def time_against_cudnn(kernels: dict[str, Callable], *, S: int = 16384, N: int = 16, K: int = 8,
                       H: int = 128, block_size: int = 128, density: float = 0.1,
                       dtype: str = "bfloat16", repeats: int = 10, seed: int = 0) -> list[dict]:
    """Median time of each kernel on a fixed-density mask vs cuDNN dense causal attention.

    Same process, same inputs, compile excluded (pflash_jax.bench.time_fn). The mask comes from
    `select_blocks_fixed_density` on the random q/k, so the kept density is `density` per row
    (structural blocks included). Returns rows with ms and speedup over cuDNN.
    """
    from pflash_jax import bench

    if not gpu_available():
        raise RuntimeError("time_against_cudnn needs a GPU (cuDNN); the backend is "
                           f"{jax.default_backend()!r}")
    q, k, v = random_qkv(1, S, N, K, H, dtype, seed=seed)
    bm = bench.block(select_blocks_fixed_density(q, k, density=density, block_size=block_size))
    cudnn = jax.jit(lambda q, k, v: dense_attention(q, k, v, impl="cudnn"))
    t_dense = bench.time_fn(cudnn, q, k, v, repeats=repeats)
    rows = [{"kernel": "cuDNN dense (jax.nn.dot_product_attention)", "ms": 1e3 * t_dense.median_s,
             "speedup": 1.0, "density": 1.0}]
    kept = float(bm.density())
    for name, fn in kernels.items():
        t = bench.time_fn(jax.jit(fn), q, k, v, bm, repeats=repeats)
        rows.append({"kernel": name, "ms": 1e3 * t.median_s,
                     "speedup": t_dense.median_s / t.median_s, "density": kept})
    print(f"S={S} N={N} K={K} H={H} {dtype}, block {block_size}, kept {kept:.3f} of the causal "
          f"blocks, on {bench.device_name()}")
    for r in rows:
        print(f"  {r['kernel']:44s} {r['ms']:9.3f} ms   {r['speedup']:5.2f}x vs cuDNN")
    return rows
