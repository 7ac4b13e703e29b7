"""Persistent variant of the Mosaic GPU block-sparse kernel: BlockSizes(persistent=True) in
mosaic.py (kernel_bench impl=mosaic_persistent / mosaic_persistent3). Opt-in and SLOWER.

Algorithm: one CTA per SM takes the work items (query block, head, batch) of mosaic.py's launch
order (heads fastest, heaviest query blocks first, then batch) round-robin: items cta,
cta + #CTAs, ... Both warpgroup kinds walk the CTA's items in the same order and count K/V
steps globally, so the ring, its barriers' phases and the compute warpgroups' ping-pong run on
across items: the memory warpgroup already copies the next item's first K/V blocks while the
current item finishes, instead of every CTA filling an empty ring. Aimed at low densities,
where a row keeps ~50 blocks and the per-CTA fill / drain is a few percent.

Measured on an H100 (results/kernel_bench/h100/session3_persistent; docs/LOG.md, session 3):
correct, but 17.3 vs 13.6 ms sparse at 128K / density 0.105 (16/8 heads) and 5% slower dense
(122.5 vs 116.6 ms); 3 stages worse still. Static round-robin imbalance is only ~2% by
arithmetic; the per-item Q load and output-store wait, serialised on the compute warpgroups, is
the first suspect. Not profiled yet.

Layout, limits and the per-item work (Q load, online softmax over the kept K/V blocks, output
store; the K/V copies) are mosaic.py's: this file holds only the schedule. mosaic.py's wrapper
validates the call, builds the scratch and launches `kernel` with its `item_ops` bound, so this
file imports nothing from mosaic.py (which dispatches here). The CPU interpreter runs it with 3
CTAs (uneven item counts; tests, race detector included).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl


def kernel(*refs, item_ops, n_ctas: int, n_heads: int, n_blocks: int, n_batch: int,
           heads_per_kv: int, stages: int):
    """The persistent CTA body. refs: mosaic.Refs' fields (inputs, output, scratch), in order;
    item_ops(refs, wg) -> mosaic.ItemOps, the per-item pieces of warpgroup wg."""
    cta = lax.axis_index("cta")
    wg = lax.axis_index("wg")
    n_mine = lax.div(jnp.int32(n_heads * n_blocks * n_batch) - 1 - cta, jnp.int32(n_ctas)) + 1
    ops = item_ops(refs, wg)

    def item_of(k):  # the non-persistent grid's order: heads fastest, heaviest block first
        i = cta + k * n_ctas
        h = lax.rem(i, jnp.int32(n_heads))
        m = n_blocks - 1 - lax.rem(lax.div(i, jnp.int32(n_heads)), jnp.int32(n_blocks))
        return lax.div(i, jnp.int32(n_heads * n_blocks)), h, m

    def compute():
        def one(k, g0):
            b, h, m = item_of(k)
            hm, count = ops.row(b, h, m)
            ops.compute(b, h, m, hm, count, g0, opening=k == 0, closing=k == n_mine - 1)
            return g0 + count

        lax.fori_loop(0, n_mine, one, jnp.int32(0))

    def memory():  # the ring runs on across this CTA's items; g counts K/V steps globally
        def one(k, g0):
            b, h, m = item_of(k)
            kv_h = lax.div(h, jnp.int32(heads_per_kv))
            hm, count = ops.row(b, h, m)

            def load(j, g):
                slot = ops.slot_of(g)
                pl.when(g >= stages)(functools.partial(ops.wait_consumed, slot))
                ops.issue(b, kv_h, m, hm, j, slot)
                return g + 1

            return lax.fori_loop(0, count, load, g0)

        ops.drain(lax.fori_loop(0, n_mine, one, jnp.int32(0)))

    ops.split(compute, memory)


def sm_count() -> int:
    dev = jax.devices()[0]
    n = getattr(dev, "core_count", None)
    if not n:
        raise NotImplementedError(f"BlockSizes(persistent=True) needs the SM count of "
                                  f"{dev.device_kind!r}, which jax does not report")
    return int(n)


def num_ctas(n_items: int, interpret: bool) -> int:
    """One CTA per SM (3 in the interpreter: uneven item counts), never more than items."""
    return min(3 if interpret else sm_count(), n_items)
