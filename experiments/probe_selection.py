"""Probe: where alpha-mode block selection spends its time at long S, and which rewrites of its
pieces are faster (GPU); fixed-density selection's fused and unfused paths beside it. Every
variant is checked equal to the current code before it is timed.

    python experiments/probe_selection.py --seq 131072 --heads 16 --density 0.1 --out DIR

Prints one table (ms per call, median of repeats) and writes DIR/probe_selection.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax import bench
from pflash_jax.attention import blockmask, selection, selection_triton
from pflash_jax.attention.selection_common import density_budget
from pflash_jax.attention.selection_triton import MassTiles


def block_means_sum(k, block_size: int):
    """Variant: reduce the bf16 blocks with float32 accumulation, no float32 copy of k."""
    B, S, K, H = k.shape
    M = -(-S // block_size)
    kp = k if M * block_size == S else jnp.pad(k, ((0, 0), (0, M * block_size - S), (0, 0),
                                                    (0, 0)))
    sums = kp.reshape(B, M, block_size, K, H).sum(axis=2, dtype=jnp.float32)
    valid = jnp.minimum(block_size, S - jnp.arange(M) * block_size).astype(jnp.float32)
    return sums / valid[None, :, None, None]


def block_means_dot(k, block_size: int):
    """Variant: the block sum as a contraction with a ones vector (a GEMV for XLA)."""
    B, S, K, H = k.shape
    M = -(-S // block_size)
    kp = k if M * block_size == S else jnp.pad(k, ((0, 0), (0, M * block_size - S), (0, 0),
                                                    (0, 0)))
    ones = jnp.ones((block_size,), k.dtype)
    sums = jnp.einsum("bmrkh,r->bmkh", kp.reshape(B, M, block_size, K, H), ones,
                      preferred_element_type=jnp.float32)
    valid = jnp.minimum(block_size, S - jnp.arange(M) * block_size).astype(jnp.float32)
    return sums / valid[None, :, None, None]


def compress_sort(mask):
    """Variant: kept-first ascending order by a stable argsort of the negated mask."""
    M = mask.shape[-1]
    lead = mask.shape[:-1]
    flat = mask.reshape(-1, M)
    counts = jnp.sum(flat, axis=-1, dtype=jnp.int32)
    order = jnp.argsort(~flat, axis=-1, stable=True).astype(jnp.int32)
    n = jnp.arange(M, dtype=jnp.int32)
    last = jnp.take_along_axis(order, jnp.maximum(counts - 1, 0)[:, None], axis=-1)
    indices = jnp.where(n < counts[:, None], order, last)
    return indices.reshape(lead + (M,)), counts.reshape(lead)


def compress_sortkeys(mask):
    """Variant: one int32 sort per row of keys n (kept) / M + n (dropped)."""
    M = mask.shape[-1]
    lead = mask.shape[:-1]
    flat = mask.reshape(-1, M)
    counts = jnp.sum(flat, axis=-1, dtype=jnp.int32)
    n = jnp.arange(M, dtype=jnp.int32)
    keys = jnp.sort(jnp.where(flat, n, n + M), axis=-1)
    last = jnp.take_along_axis(keys, jnp.maximum(counts - 1, 0)[:, None], axis=-1)
    indices = jnp.where(n < counts[:, None], keys, jnp.where(counts[:, None] > 0, last, 0))
    return indices.reshape(lead + (M,)), counts.reshape(lead)


def compress_bits(mask):
    """Variant: pack each row into 32-bit words; output slot j finds its word by comparing
    against the words' running popcounts, then its bit by a 5-step binary select. No scatter,
    no sort: one elementwise pass over the [rows, M] output."""
    M = mask.shape[-1]
    lead = mask.shape[:-1]
    W = -(-M // 32)
    flat = jnp.pad(mask.reshape(-1, M), ((0, 0), (0, W * 32 - M)))
    shifts = jnp.arange(32, dtype=jnp.uint32)
    words = jnp.sum(flat.reshape(-1, W, 32).astype(jnp.uint32) << shifts, axis=-1,
                    dtype=jnp.uint32)  # [R, W]
    pop = jax.lax.population_count(words).astype(jnp.int32)
    incl = jnp.cumsum(pop, axis=-1)
    counts = incl[:, -1]
    j = jnp.arange(M, dtype=jnp.int32)
    last_slot = jnp.maximum(counts - 1, 0)[:, None]
    jj = jnp.minimum(j[None, :], last_slot)  # slots past the count repeat the last kept block
    w = jnp.sum(incl[:, None, :] <= jj[:, :, None], axis=-1, dtype=jnp.int32)  # [R, M]
    w = jnp.minimum(w, W - 1)
    word = jnp.take_along_axis(words, w, axis=-1)
    r = jj - jnp.take_along_axis(incl - pop, w, axis=-1)  # rank of the slot within its word
    pos = jnp.zeros_like(r)
    for s in (16, 8, 4, 2, 1):
        low = ((jnp.uint32(1) << jnp.uint32(s)) - jnp.uint32(1)) << pos.astype(jnp.uint32)
        c = jax.lax.population_count(word & low).astype(jnp.int32)
        go = r >= c
        pos = jnp.where(go, pos + s, pos)
        r = jnp.where(go, r - c, r)
    indices = jnp.where(counts[:, None] > 0, w * 32 + pos, 0)
    return indices.reshape(lead + (M,)), counts.reshape(lead)


def check_fused(fused, base, mass, *, alpha: float) -> None:
    """The fused epilogue against the unfused path. Compiled, its row sum and float32 division
    may round differently from XLA's, so masks may differ only within 1e-5 (relative) of the
    threshold; its compressed layout must be exactly that of its own mask."""
    mass = np.asarray(mass)
    thr = alpha * mass.max(-1, keepdims=True)
    diff = np.asarray(fused.mask) != np.asarray(base.mask)
    far = diff & (np.abs(mass - thr) > 1e-5 * thr)
    print(f"fused vs unfused: {diff.sum()} mask entries differ, {far.sum()} away from the "
          f"threshold (of {diff.size})")
    assert not far.any()
    idx, cnt = jax.jit(blockmask.compress)(fused.mask)
    np.testing.assert_array_equal(np.asarray(fused.counts), np.asarray(cnt))
    np.testing.assert_array_equal(np.asarray(fused.indices), np.asarray(idx))


def fixed_density_threshold(mass, density: float):
    """float [B,N,M,1]: each row's budget-th largest score, the unfused path's threshold among
    its mass-decided blocks (+inf where the structural blocks fill the budget). Default
    structural parameters (sink 2, window 4, last_full 2), as the timed calls use."""
    M = mass.shape[-1]
    structural = np.asarray(selection.structural_mask(M, sink=2, window=4, last_full=2))
    cand = np.tri(M, dtype=bool) & ~structural
    r = np.asarray(density_budget(density, M, sink=2, window=4, last_full=2)) - structural.sum(-1)
    ranked = -np.sort(-np.where(cand, mass, -np.inf), axis=-1)
    nth = np.broadcast_to(np.clip(r - 1, 0, M - 1)[:, None], mass.shape[:-1] + (1,))
    return np.where(r[:, None] > 0, np.take_along_axis(ranked, nth, axis=-1), np.inf)


def check_fixed_fused(fused, base, mass, *, density: float) -> None:
    """check_fused for fixed density: masks may differ only within 1e-5 (relative) of the row's
    reference threshold, rows keep at least their budget, the compressed layout is exact."""
    mass = np.asarray(mass)
    thr = fixed_density_threshold(mass, density)
    diff = np.asarray(fused.mask) != np.asarray(base.mask)
    far = diff & ~(np.isfinite(thr) & (np.abs(mass - thr) <= 1e-5 * thr))
    print(f"fixed density fused vs unfused: {diff.sum()} mask entries differ, {far.sum()} away "
          f"from the threshold (of {diff.size})")
    assert not far.any()
    M = mass.shape[-1]
    assert np.all(np.asarray(fused.counts) >= np.asarray(
        density_budget(density, M, sink=2, window=4, last_full=2)))
    idx, cnt = jax.jit(blockmask.compress)(fused.mask)
    np.testing.assert_array_equal(np.asarray(fused.counts), np.asarray(cnt))
    np.testing.assert_array_equal(np.asarray(fused.indices), np.asarray(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=131072)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--density", type=float, default=0.1, help="fixed-density rows' density")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    kq, kk = jax.random.split(jax.random.key(0))
    shape = (1, a.seq, a.heads, 128)
    q = jax.random.normal(kq, shape, jnp.bfloat16)
    k = jax.random.normal(kk, (1, a.seq, a.kv_heads, 128), jnp.bfloat16)
    rows = []

    def timed(name, fn, *args):
        t = bench.time_fn(fn, *args, repeats=a.repeats)
        rows.append({"piece": name, "ms": 1e3 * t.median_s})

    base_means = jax.jit(selection.block_means, static_argnums=1)
    ref = np.asarray(base_means(k, 128))
    for name, fn in [("block_means (current)", selection.block_means),
                     ("block_means sum(dtype=f32)", block_means_sum),
                     ("block_means einsum ones", block_means_dot)]:
        f = jax.jit(fn, static_argnums=1)
        np.testing.assert_allclose(np.asarray(f(k, 128)), ref, rtol=1e-5, atol=1e-5)
        timed(name, f, k, 128)

    # The unfused path (mass kernel, XLA epilogue over [B,N,M,M], from_dense) is the reference
    # for every variant below, the fused one included.
    unfused = jax.jit(lambda q, k: selection.select_blocks_unfused(q, k, alpha=0.1))
    base = unfused(q, k)
    timed("select_blocks unfused (XLA epilogue + from_dense)", unfused, q, k)
    sel = jax.jit(lambda q, k: selection.select_blocks(q, k, alpha=0.1))
    check_fused(sel(q, k), base, selection.block_mass(q, k, block_size=128), alpha=0.1)
    timed("select_blocks (current: fused epilogue kernel)", sel, q, k)
    # Fixed density (random-weight speed runs): the unfused path sorts every [M] row of the
    # dense mass; the fused one finds the threshold by bisection in the select kernel.
    fixed_unfused = jax.jit(lambda q, k, d: selection.select_blocks_fixed_density_unfused(
        q, k, density=d))
    fixed = jax.jit(lambda q, k, d: selection.select_blocks_fixed_density(q, k, density=d))
    d = jnp.float32(a.density)
    check_fixed_fused(fixed(q, k, d), fixed_unfused(q, k, d),
                      selection.block_mass(q, k, block_size=128), density=a.density)
    timed(f"select_blocks_fixed_density {a.density} unfused (sort + from_dense)", fixed_unfused,
          q, k, d)
    timed(f"select_blocks_fixed_density {a.density} (current: fused select kernel)", fixed,
          q, k, d)
    chunks = jax.jit(lambda q, k: selection_triton.mass_chunks(q, k, block_size=128,
                                                               interpret=False))
    timed("mass kernel alone (fused total minus this = epilogue kernel)", chunks, q, k)
    # The mass kernel's tiles (selection_triton.MASS_TILES is the default): same output, other
    # speed.
    e0, c0 = chunks(q, k)
    for chunk, warps, stages in [(c, w, s) for c in (64, 128) for w in (4, 8) for s in (1, 2, 3)]:
        tiles = MassTiles(chunk=chunk, num_warps=warps, num_stages=stages)
        f = jax.jit(lambda q, k, t=tiles: selection_triton.mass_chunks(
            q, k, block_size=128, interpret=False, tiles=t))
        e, c = f(q, k)
        if chunk == e0.shape[-1]:  # other chunks lay e out differently
            np.testing.assert_allclose(np.asarray(e), np.asarray(e0), rtol=1e-3, atol=1e-6)
        timed(f"mass kernel chunk={chunk} warps={warps} stages={stages}", f, q, k)
    mask = base.mask
    for name, fn in [("compress (current)", blockmask.compress),
                     ("compress argsort", compress_sort), ("compress sortkeys", compress_sortkeys),
                     ("compress bits", compress_bits)]:
        f = jax.jit(fn)
        idx, cnt = f(mask)
        np.testing.assert_array_equal(np.asarray(cnt), np.asarray(base.counts))
        np.testing.assert_array_equal(np.asarray(idx), np.asarray(base.indices))
        timed(name, f, mask)

    # BlockMask.from_dense looks compress up in blockmask's namespace: swapping it there swaps
    # the unfused path's compression.
    saved = blockmask.compress
    for name, comp in [("unfused select + compress sortkeys", compress_sortkeys),
                       ("unfused select + compress bits", compress_bits)]:
        blockmask.compress = comp
        jax.clear_caches()  # the jitted selection functions would reuse their old traces
        f = jax.jit(lambda q, k: selection.select_blocks_unfused(q, k, alpha=0.1))
        out = f(q, k)
        np.testing.assert_array_equal(np.asarray(out.indices), np.asarray(base.indices))
        timed(name, f, q, k)
        blockmask.compress = saved
        jax.clear_caches()

    prov = bench.provenance()
    print(f"# selection probe ({prov['device']}, jax {prov['jax']}, commit {prov['commit']}), "
          f"S={a.seq}, {a.heads}/{a.kv_heads} heads, alpha 0.1, density {a.density}, random bf16")
    for r in rows:
        print(f"| {r['piece']} | {r['ms']:.3f} |")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        bench.write_metrics(a.out / "probe_selection.json",
                            {"seq": a.seq, "density": a.density, "rows": rows})


if __name__ == "__main__":
    main()
