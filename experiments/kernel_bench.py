"""Block-sparse attention kernel benchmark (issue 3), Hydra-configured
(pflash_jax/configs/kernel_bench.yaml).

Per (S, density) cell, in one process on one card: fixed-density selection time, alpha-mode
selection time, Triton sparse forward time, cuDNN dense causal time, effective TFLOP/s on the kept
blocks, and speedups over cuDNN with and without selection. Optionally first sweeps kernel tiles
and measures GQA list sharing. Writes metrics.json and table.md into `out_dir`.

FLOP convention (the cuDNN baselines' in docs/LOG.md): a full block costs 4 b^2 H per head
(QK^T and PV), a diagonal block half of that, so density 1.0 has exactly the dense causal FLOPs and
"fraction of cuDNN" = t_cudnn / t_sparse at density 1.0.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from pflash_jax import bench  # noqa: E402
from pflash_jax.attention import dense_attention, select_blocks, select_blocks_fixed_density  # noqa: E402
from pflash_jax.attention import mosaic as mg  # noqa: E402
from pflash_jax.attention import triton as tr  # noqa: E402
from pflash_jax.attention.blockmask import BlockMask  # noqa: E402
from pflash_jax.attention.selection import block_mass, block_means, structural_mask  # noqa: E402
from pflash_jax.attention.selection_triton import block_mass_triton  # noqa: E402


def inputs(S, cfg, seed=0):
    if cfg.get("inputs", "random") == "drafter":
        return drafter_inputs(S, cfg, seed)
    dt = jnp.dtype(cfg.dtype)
    ks = jax.random.split(jax.random.PRNGKey(seed + S), 3)
    q = jax.random.normal(ks[0], (cfg.batch, S, cfg.num_heads, cfg.head_dim), dt)
    k = jax.random.normal(ks[1], (cfg.batch, S, cfg.num_kv_heads, cfg.head_dim), dt)
    v = jax.random.normal(ks[2], (cfg.batch, S, cfg.num_kv_heads, cfg.head_dim), dt)
    return q, k, v


def drafter_inputs(S, cfg, seed=0):
    """q, k, v of layer `inputs_layer` of a random-init `inputs_model` (YaRN x4, as the speed
    rows' drafter) on random ids: the kernel's inputs as the drafter makes them, whose
    fixed-density masks differ from random q/k's (issue 17: the kernel runs ~10% slower inside
    the drafter pass than on random inputs). Earlier layers run with dense attention."""
    import dataclasses

    from pflash_jax.models import qwen3
    from pflash_jax.models.config import model_preset
    from pflash_jax.models.params import init_params

    mcfg = model_preset(cfg.inputs_model).with_yarn()
    if (mcfg.num_attention_heads, mcfg.num_key_value_heads, mcfg.head_dim) != (
            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) or cfg.batch != 1:
        raise ValueError(f"inputs=drafter: {cfg.inputs_model} has {mcfg.num_attention_heads} / "
                         f"{mcfg.num_key_value_heads} heads of {mcfg.head_dim}; set num_heads, "
                         f"num_kv_heads, head_dim to match and batch=1")
    mcfg = dataclasses.replace(mcfg, num_hidden_layers=int(cfg.inputs_layer) + 1,
                               vocab_size=cfg.get("inputs_vocab") or mcfg.vocab_size)
    params = init_params(mcfg, jax.random.key(1), jnp.dtype(cfg.dtype))
    ids = jax.random.randint(jax.random.key(seed + S), (1, S), 0, mcfg.vocab_size)
    positions = jnp.arange(S, dtype=jnp.int32)[None]
    shapes = [(1, S, n, mcfg.head_dim) for n in (mcfg.num_attention_heads,
                                                  mcfg.num_key_value_heads,
                                                  mcfg.num_key_value_heads)]

    @jax.jit
    def run(params, ids):
        state = tuple(jnp.zeros(sh, jnp.dtype(cfg.dtype)) for sh in shapes)
        out = qwen3.scan_layers(
            params, mcfg, qwen3.embed(params, ids), positions,
            lambda qkv, _: (dense_attention(qkv.q, qkv.k, qkv.v, impl="auto"), None),
            hook=lambda st, qkv, _: ((qkv.q, qkv.k, qkv.v), None), state=state,
            last_qkv_only=True)
        return out.state

    return run(params, ids)


def kept_flops(bm, head_dim):
    """4 b^2 H per kept off-diagonal block, half for the (always kept) diagonal."""
    b = bm.block_size
    diag = bm.mask.shape[0] * bm.mask.shape[1] * bm.num_blocks
    return 4.0 * b * b * head_dim * (float(jnp.sum(bm.counts)) - 0.5 * diag)


def dense_flops(S, cfg):
    return 2.0 * S * S * cfg.num_heads * cfg.head_dim * cfg.batch


def tile_sizes(c):
    """[block_q, block_k, num_warps, num_stages(, group_heads)] -> BlockSizes."""
    return tr.BlockSizes(block_q=int(c[0]), block_k=int(c[1]), num_warps=int(c[2]),
                         num_stages=int(c[3]), group_heads=bool(c[4]) if len(c) > 4 else False)


INTERPRET = False  # set from cfg.interpret in main (CPU smoke runs only)
IMPL = "triton"  # set from cfg.impl in main: triton | mosaic | mosaic3 | mosaic_smem (Hopper)
# Mosaic kernel knobs per impl name: "mosaic" is the default pipeline (mosaic.GPU_DEFAULT
# compiled: overlapped, 3 K/V slots), "mosaic_pingpong" the ping-pong one it replaced
# (BlockSizes()), "mosaic_smem" ping-pong with P through shared memory, "mosaic3" ping-pong
# with a three-slot K/V ring, "mosaic_persistent" one CTA per SM with the K/V ring running
# across work items ("mosaic_persistent3": three slots); "mosaic_heads" / "mosaic_kvgroup" the
# default pipeline in one forced CTA order (results/kernel_bench/order_h200).
MOSAIC = {"mosaic": None, "mosaic_pingpong": mg.BlockSizes(),
          "mosaic3": mg.BlockSizes(stages=3),
          "mosaic_persistent": mg.BlockSizes(persistent=True),
          "mosaic_persistent3": mg.BlockSizes(persistent=True, stages=3),
          "mosaic_smem": mg.BlockSizes(pv="smem"),
          "mosaic_heads": dataclasses.replace(mg.GPU_DEFAULT, order="heads"),
          "mosaic_kvgroup": dataclasses.replace(mg.GPU_DEFAULT, order="kv_group")}


def sparse_fn(sizes):
    if IMPL in MOSAIC:  # Triton tiles do not apply: the Mosaic kernel's tiles are the block
        return jax.jit(lambda q, k, v, bm: mg.block_sparse_attention(
            q, k, v, bm, block_sizes=MOSAIC[IMPL], interpret=INTERPRET))
    return jax.jit(lambda q, k, v, bm: tr.block_sparse_attention(q, k, v, bm, block_sizes=sizes,
                                                                 interpret=INTERPRET))


def fixed_mask(q, k, density, cfg):
    return select_blocks_fixed_density(q, k, density=float(density), block_size=cfg.block_size,
                                       **cfg.selection)


def tune(cfg):
    rows, totals = [], {}
    cells = {}
    for S, d in cfg.tune.cells:
        q, k, v = inputs(int(S), cfg)
        cells[(S, d)] = (q, k, v, bench.block(fixed_mask(q, k, d, cfg)))
    for c in cfg.tune.candidates:
        sizes = tile_sizes(c)
        total = 0.0
        for (S, d), (q, k, v, bm) in cells.items():
            try:
                t = bench.time_fn(sparse_fn(sizes), q, k, v, bm, repeats=3).median_s
            except Exception as e:  # a tile shape Triton rejects (e.g. shared memory) is skipped
                print(f"tune {list(c)} S={S} d={d}: FAILED {type(e).__name__}: {str(e)[:200]}")
                t = float("inf")
            rows.append({"tiles": list(c), "seq_len": S, "density": d, "sparse_ms": 1e3 * t})
            print(f"tune {list(c)} S={S} d={d}: {1e3 * t:.2f} ms", flush=True)
            total += t
        totals[tuple(c)] = total
    best = min(totals, key=totals.get)
    del cells
    return {"cells": rows, "best": list(best)}, tile_sizes(best)


def gqa_share(cfg, sizes):
    S = int(cfg.gqa_share.seq_len)
    q, k, v = inputs(S, cfg, seed=7)
    # Structured inputs: each query block leans towards a direction (shared by the heads of a
    # kv group, plus a per-head part) and key blocks get random offsets, so block masses are
    # uneven the way trained attention is (pure noise makes every block look alike).
    G = cfg.num_heads // cfg.num_kv_heads
    B, K, H, b = cfg.batch, cfg.num_kv_heads, cfg.head_dim, cfg.block_size
    M = S // b
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(99), 3)
    qoff = (jax.random.normal(k1, (B, M, 1, K, 1, H))
            + 0.7 * jax.random.normal(k2, (B, M, 1, K, G, H)))
    q = (0.6 * q.astype(jnp.float32).reshape(B, M, b, K, G, H) + qoff).reshape(q.shape)
    koff = jax.random.normal(k3, (B, M, 1, K, H))
    k = (k.astype(jnp.float32).reshape(B, M, b, K, H) + 1.5 * koff).reshape(k.shape)
    q, k = q.astype(cfg.dtype), k.astype(cfg.dtype)
    own = block_mass(q, k, block_size=cfg.block_size, impl="xla")
    out = []
    for mode in cfg.gqa_share.modes:
        sel = jax.jit(lambda q, k, mode=mode: select_blocks(
            q, k, alpha=cfg.alpha, block_size=cfg.block_size, share=mode, **cfg.selection))
        t_sel = bench.time_fn(sel, q, k, repeats=3).median_s
        bm = sel(q, k)
        t_fwd = bench.time_fn(sparse_fn(sizes), q, k, v, bm, repeats=3).median_s
        kept_mass = float(jnp.mean(jnp.sum(own * bm.mask, axis=-1)))
        row = {"mode": mode, "seq_len": S, "alpha": cfg.alpha, "density": float(bm.density()),
               "kept_mass": kept_mass, "selection_ms": 1e3 * t_sel, "sparse_ms": 1e3 * t_fwd}
        print("gqa_share", row, flush=True)
        out.append(row)
    return out


def selection_breakdown(cfg):
    """Where alpha-mode selection time goes, at the largest S: block means, the mass kernel
    (with its XLA epilogue), threshold + structural blocks, and BlockMask compression."""
    S = int(max(cfg.seq_lens))
    q, k, _ = inputs(S, cfg)
    b = cfg.block_size
    mass_fn = jax.jit(lambda q, k: block_mass_triton(q, k, block_size=b, interpret=INTERPRET))
    mass = bench.block(mass_fn(q, k))
    M = mass.shape[-1]
    sel = dict(cfg.selection)

    def threshold(mass):
        keep = mass >= cfg.alpha * jnp.max(mass, axis=-1, keepdims=True)
        return keep | structural_mask(M, **sel)

    keep = bench.block(jax.jit(threshold)(mass))
    parts = {
        "block_means": (jax.jit(lambda k: block_means(k, b)), (k,)),
        "mass_kernel_and_epilogue": (mass_fn, (q, k)),
        "threshold_structural": (jax.jit(threshold), (mass,)),
        "blockmask_from_dense": (jax.jit(lambda m: BlockMask.from_dense(m, block_size=b,
                                                                        seq_len=S)), (keep,)),
    }
    out = {"seq_len": S}
    for name, (fn, args) in parts.items():
        out[name + "_ms"] = 1e3 * bench.time_fn(fn, *args, repeats=cfg.repeats).median_s
    print("selection_breakdown", out, flush=True)
    return out


def rotated_lists(bm):
    """bm with each row's off-diagonal kept blocks visited in a rotated order (start offset
    (37 m + 11 h) mod (count - 1)); the diagonal stays last, as the kernels require. The same
    blocks and values: a different order of K/V tile loads only (issue 17's mask probe: do rows
    that keep the same columns slow each other down by loading them in lockstep?)."""
    idx, counts = bm.indices, bm.counts
    B, N, M, _ = idx.shape
    off_n = jnp.maximum(counts - 1, 1)[..., None]  # [B, N, M, 1]
    m = jnp.arange(M)[None, None, :, None]
    h = jnp.arange(N)[None, :, None, None]
    j = jnp.arange(M)[None, None, None, :]
    src = jnp.where(j < counts[..., None] - 1, (j + 37 * m + 11 * h) % off_n, j)
    return dataclasses.replace(bm, indices=jnp.take_along_axis(idx, src, axis=-1))


def mask_probe(cfg, sparse, q, k, v, bm):
    """Times the cell's kernel (a) on random normal q, k, v with the same mask and (b) on the
    same inputs with rotated kept-block lists: separates the data's effect on the kernel's time
    from the mask's (inputs=drafter runs slower than random inputs at equal density)."""
    rq, rk, rv = inputs(int(q.shape[1]), OmegaConf.merge(cfg, {"inputs": "random"}), seed=3)
    t_vals = bench.time_fn(sparse, rq, rk, rv, bm, repeats=cfg.repeats)
    t_rot = bench.time_fn(sparse, q, k, v, bench.block(jax.jit(rotated_lists)(bm)),
                          repeats=cfg.repeats)
    # How alike the rows' lists are: the share of kept entries in each head's 5% most kept
    # columns (random masks: about 0.05-0.1; vertical stripes: near 1).
    per_col = jnp.sum(bm.mask, axis=-2)  # [B, N, M]
    top = max(1, bm.num_blocks // 20)
    share = jnp.sum(jax.lax.top_k(per_col, top)[0], axis=-1) / jnp.sum(per_col, axis=-1)
    return {"sparse_ms_random_values": 1e3 * t_vals.median_s,
            "sparse_ms_rotated_lists": 1e3 * t_rot.median_s,
            "top5pct_column_share": float(jnp.mean(share))}


def run_grid(cfg, sizes):
    rows = []
    dense = jax.jit(lambda q, k, v: dense_attention(q, k, v, impl=cfg.dense_impl))
    sparse = sparse_fn(sizes)
    for S in cfg.seq_lens:
        q, k, v = inputs(int(S), cfg)
        t_dense = bench.time_fn(dense, q, k, v, repeats=cfg.repeats)
        sel_alpha = jax.jit(lambda q, k: select_blocks(q, k, alpha=cfg.alpha,
                                                       block_size=cfg.block_size, **cfg.selection))
        t_alpha = bench.time_fn(sel_alpha, q, k, repeats=cfg.repeats)
        alpha_density = float(sel_alpha(q, k).density())
        sel_xla = jax.jit(lambda q, k: select_blocks(q, k, alpha=cfg.alpha, impl="xla",
                                                     block_size=cfg.block_size, **cfg.selection))
        t_alpha_xla = bench.time_fn(sel_xla, q, k, repeats=3)
        for d in cfg.densities:
            sel = jax.jit(lambda q, k, d=d: fixed_mask(q, k, d, cfg))
            t_sel = bench.time_fn(sel, q, k, repeats=cfg.repeats)
            bm = bench.block(sel(q, k))
            t_sp = bench.time_fn(sparse, q, k, v, bm, repeats=cfg.repeats)
            fl = kept_flops(bm, cfg.head_dim)
            row = {
                "seq_len": int(S), "density_target": float(d), "density": float(bm.density()),
                "selection_ms": 1e3 * t_sel.median_s, "selection_alpha_ms": 1e3 * t_alpha.median_s,
                "selection_alpha_xla_ms": 1e3 * t_alpha_xla.median_s,
                "alpha_density": alpha_density,
                "sparse_ms": 1e3 * t_sp.median_s, "sparse_compile_s": t_sp.first_call_s,
                "cudnn_ms": 1e3 * t_dense.median_s,
                "sparse_tflops": fl / t_sp.median_s / 1e12,
                "cudnn_tflops": dense_flops(int(S), cfg) / t_dense.median_s / 1e12,
                "speedup": t_dense.median_s / t_sp.median_s,
                # production path: alpha-mode selection (Triton mass kernel) + sparse forward
                "speedup_incl_selection": t_dense.median_s / (t_sp.median_s + t_alpha.median_s),
                # the cell as run: fixed-density selection (mass kernel + a per-row sort)
                "speedup_incl_fixed_selection": t_dense.median_s / (t_sp.median_s
                                                                    + t_sel.median_s),
            }
            row["fraction_of_cudnn_throughput"] = row["sparse_tflops"] / row["cudnn_tflops"]
            if cfg.get("mask_probe"):
                row.update(mask_probe(cfg, sparse, q, k, v, bm))
            print({k_: round(v_, 3) if isinstance(v_, float) else v_ for k_, v_ in row.items()},
                  flush=True)
            rows.append(row)
        del q, k, v
    return rows


def table(metrics) -> str:
    p = metrics["provenance"] if "provenance" in metrics else bench.provenance()
    kc = metrics["kernel"]
    lines = [
        f"# Block-sparse attention kernel bench ({p['device']}, jax {p['jax']}, "
        f"commit {p['commit']})",
        "",
        f"Qwen3-0.6B attention: B={metrics['config']['batch']}, "
        f"{metrics['config']['num_heads']} q / {metrics['config']['num_kv_heads']} kv heads, "
        f"H={metrics['config']['head_dim']}, {metrics['config']['dtype']}; selection block "
        f"{metrics['config']['block_size']}; {metrics['config'].get('impl', 'triton')} "
        f"kernel {kc}. Fixed-density masks (structural "
        f"blocks always kept). 'alpha sel' = alpha={metrics['config']['alpha']} selection with the "
        f"Triton mass kernel (the production path; its density on these random inputs is "
        f"irrelevant to its time), 'xla sel' = the same in plain jnp, 'fixed sel' = the "
        f"fixed-density selection that built the cell's mask. 'incl sel' = cuDNN / (sparse + "
        f"alpha sel); 'incl fixed' = cuDNN / (sparse + fixed sel).",
        "",
        "| S | density | fixed sel ms | alpha sel ms | xla sel ms | sparse ms | cuDNN ms | "
        "sparse TFLOP/s | cuDNN TFLOP/s | frac of cuDNN | speedup | incl sel | incl fixed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in metrics["grid"]:
        lines.append(
            f"| {r['seq_len']} | {r['density']:.3f} | {r['selection_ms']:.2f} | "
            f"{r['selection_alpha_ms']:.2f} | {r['selection_alpha_xla_ms']:.2f} | "
            f"{r['sparse_ms']:.2f} | {r['cudnn_ms']:.2f} | "
            f"{r['sparse_tflops']:.0f} | {r['cudnn_tflops']:.0f} | "
            f"{r['fraction_of_cudnn_throughput']:.2f} | {r['speedup']:.2f} | "
            f"{r['speedup_incl_selection']:.2f} | {r['speedup_incl_fixed_selection']:.2f} |")
    probed = [r for r in metrics["grid"] if "sparse_ms_rotated_lists" in r]
    if probed:
        lines += ["", "Mask probe (mask_probe=true): the same mask on random normal q/k/v, and "
                  "the same inputs with each row's kept blocks visited in a rotated order; "
                  "column share = kept entries in each head's 5% most kept columns.", "",
                  "| S | density | sparse ms | random values ms | rotated lists ms | "
                  "column share |", "|---|---|---|---|---|---|"]
        for r in probed:
            lines.append(f"| {r['seq_len']} | {r['density']:.3f} | {r['sparse_ms']:.2f} | "
                         f"{r['sparse_ms_random_values']:.2f} | "
                         f"{r['sparse_ms_rotated_lists']:.2f} | "
                         f"{r['top5pct_column_share']:.2f} |")
    if metrics.get("gqa_share"):
        lines += ["", "GQA list sharing (alpha mode, structured random inputs):", "",
                  "| mode | S | density | kept own-head mass | selection ms | sparse ms |",
                  "|---|---|---|---|---|---|"]
        for r in metrics["gqa_share"]:
            lines.append(f"| {r['mode']} | {r['seq_len']} | {r['density']:.3f} | "
                         f"{r['kept_mass']:.3f} | {r['selection_ms']:.2f} | {r['sparse_ms']:.2f} |")
    if metrics.get("selection_breakdown"):
        sb = metrics["selection_breakdown"]
        lines += ["", f"Alpha-mode selection breakdown at S={sb['seq_len']} (ms): " + ", ".join(
            f"{k_[:-3]} {v_:.2f}" for k_, v_ in sb.items() if k_.endswith("_ms"))]
    return "\n".join(lines) + "\n"


@hydra.main(config_path="../pflash_jax/configs", config_name="kernel_bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global INTERPRET, IMPL
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    INTERPRET = bool(cfg.interpret)
    IMPL = str(cfg.impl)
    if IMPL not in ("triton", *MOSAIC) or (IMPL != "triton" and cfg.tune.enabled):
        raise ValueError(f"impl={IMPL!r}: expected triton or one of {sorted(MOSAIC)} "
                         f"(tune is Triton tiles only)")
    print(bench.provenance(), flush=True)
    sizes = tile_sizes([cfg.kernel.block_q, cfg.kernel.block_k, cfg.kernel.num_warps,
                        cfg.kernel.num_stages, cfg.kernel.group_heads])
    metrics = {"config": OmegaConf.to_container(cfg)}
    if cfg.tune.enabled:
        metrics["tune"], sizes = tune(cfg)
        print("best tiles", metrics["tune"]["best"], flush=True)
    metrics["kernel"] = [sizes.block_q, sizes.block_k, sizes.num_warps, sizes.num_stages,
                         sizes.group_heads]
    if IMPL in MOSAIC:
        metrics["kernel"] = [IMPL, str(MOSAIC[IMPL])]
    if cfg.gqa_share.enabled:
        metrics["gqa_share"] = gqa_share(cfg, sizes)
    if cfg.selection_breakdown:
        metrics["selection_breakdown"] = selection_breakdown(cfg)
    metrics["grid"] = run_grid(cfg, sizes)
    out = Path(hydra.utils.to_absolute_path(cfg.out_dir))
    path = bench.write_metrics(out / "metrics.json", metrics)
    md = table({**metrics, "provenance": bench.provenance()})
    (out / "table.md").write_text(md)
    print(f"wrote {path}\n\n{md}", flush=True)


if __name__ == "__main__":
    main()
