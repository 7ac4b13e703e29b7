"""Block-sparse causal flash-attention forward: Pallas on the Mosaic GPU backend (Hopper, sm_90).

Algorithm: one CTA per (query block, query head, batch row), where a query block is one
selection block (block_size rows, 128 in production). The CTA runs three warpgroups in the
FlashAttention-3 layout of jax's `ops/gpu/attention_mgpu.py`:
- a memory warpgroup reads the selection row's compressed kept list (BlockMask.indices /
  counts, plain int32 inputs in GMEM) and TMA-copies only the kept K/V blocks into a ring of
  `stages` shared-memory slots, each slot guarded by a "loaded" barrier (TMA -> compute) and a
  "consumed" barrier (compute -> TMA);
- two compute warpgroups each own block_size / 2 query rows of the block (64 in production, the
  wgmma M tile). Both walk the same kept list, so one K/V copy feeds both. Per kept block:
  S = Q K^T by wgmma (Q, K from shared memory), online softmax in float32 (exp2 of
  s * log2(e) * scale - max * log2(e) * scale, one FMA a logit), then acc += P V by wgmma.
  A "schedule" barrier ping-pongs the two warpgroups so one's softmax overlaps the other's
  matmuls (as attention_mgpu).
- the compiled default (GPU_DEFAULT, BlockSizes(overlap=True)) pipelines each warpgroup's own
  steps instead (FlashAttention-3's intra-warpgroup overlap): the diagonal block goes first,
  then step j issues S_j = Q K_j^T and P_{j-1} V_{j-1} back to back and runs S_j's softmax
  while the P @ V is in flight, with three K/V slots and no schedule barrier (both measured
  best: GPU_DEFAULT's comment). BlockSizes() keeps the ping-pong pipeline described above.
The causal diagonal block is the LAST kept entry of a causal row (BlockMask invariant): all
earlier entries run unmasked, the last one gets the exact per-token mask (key position <= query
position and < S). Padded keys sit only in the last block, which is always a row's last entry
when kept, so the same mask hides them. causal=False masks the last entry for padding only.

Layout: q/o [B, S, N, H], k/v [B, S, K, H] (S padded inside to a multiple of block_size). Query
head h reads kv head h // G (GQA, G = N // K). CTA order (BlockSizes.order): "heads" runs query
heads fastest (the G heads of a kv group side by side, sharing K/V blocks in L2), then query
blocks heaviest first (the last query blocks keep the most blocks), then batch; "kv_group" runs
a group's G heads fastest, then query blocks heaviest first, then kv heads, then batch, so the
CTAs in flight read one kv head's K/V. A sparse row's kept blocks are scattered: at density 0.1
and 128K a layer reads ~54 GB of K/V tiles (16 heads), ~11 ms from HBM alone on an H200, so
where the tiles come from matters. "auto" (default) takes kv_group where one kv head's K/V
fits half the L2 and the mask is per head (32K: 1.02 vs 1.29 ms), heads otherwise (128K:
12.12 vs 12.52 ms; dense, one shared mask: 2% faster).

Persistent variant (BlockSizes(persistent=True), opt-in, measured slower): mosaic_persistent.py,
one CTA per SM walking these same work items with the K/V ring running on across them. It is
built from this file's per-item pieces (`item_ops`), which this kernel is written in too.

P @ V variants (BlockSizes.pv), the one Hopper-vs-interpreter difference:
- "registers" (GPU default, FA3): P stays in registers as wgmma's A operand and the output
  accumulator is updated in place (pl.run_state over a preinitialised plgpu.ACC).
- "smem": P is stored to a per-warpgroup shared-memory tile (then commit_smem) and fed to wgmma
  from there, into a fresh accumulator that is added to acc in registers. It costs one 16 KB
  tile store per step and a register add, and it is the variant the CPU runs: the Mosaic GPU
  interpreter (plgpu.InterpretGPUParams) of jax 0.11.2 supports neither a register A operand
  nor pl.run_state nor stores into an accumulator ref. interpret=True therefore defaults to
  "smem"; the "registers" variant has never run on the CPU.

fp8 Q/K (opt-in: q and k float8_e4m3fn, v bf16/f16, and `qk_scale`, the runtime factor that
dequantizes the logits): Q K^T runs as fp8 wgmma (both operands K-major, as fp8 wgmma needs),
the softmax folds qk_scale into its one FMA, P @ V stays 16-bit, and the output gets its own
tile (the fp8 Q tile is half its size). 17% faster at 128K on an H100 (results/fp8_qk_h100).

fp8 P @ V (opt-in, with fp8 Q/K: v float8_e4m3fn and `v_scale`): V is stored as V^T tiles (the
K-major B operand fp8 wgmma needs) and P goes to the tensor cores as e4m3, relabelled into
wgmma's 8-bit operand layout in registers (`relabel_8bit`, `pv_token_order`). Compiled, it
runs the ping-pong pipeline (GPU_DEFAULT_FP8_PV; results/fp8_pv_h100).

Limits: V bfloat16 or float16 (or e4m3 with e4m3 Q/K), Q/K the same or e4m3 (wgmma operands;
float32 is rejected, no silent downcast);
head dim a multiple of 64 (64 and 128 tested); T == S (prefill); forward only. On the GPU
block_size must be 128 (compute warpgroups of 64 rows; 256 would need 128-row warpgroups whose
accumulators do not fit the register budget); the interpreter accepts any block_size divisible
by 16. Every row keeps at least its diagonal block (BlockMask invariant), so counts >= 1.
Shared memory at block_size 128, H 128, bf16: Q 32 KB + K/V 64 KB per stage (+ P 32 KB for
"smem"): 2 stages fit Hopper's 227 KB, 3 stages only with pv="registers" (GPU_DEFAULT's 3: 224 KB).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.mosaic import gpu as mgpu
from jax.experimental.mosaic.gpu import utils as mgpu_utils
from jax.experimental.pallas import mosaic_gpu as plgpu

from pflash_jax.attention import mosaic_persistent
from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.numerics import MASK_VALUE

LOG2E = math.log2(math.e)
KV_GROUP_BYTES = 24 << 20  # order="auto": kv_group while one kv head's K + V is at most this
#                            (about half the 50 MB L2 of an H100 / H200)
COMPUTE_WGS = 2  # compute warpgroups per CTA (FA3 ping-pong); a third one issues the TMA copies


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Pipeline knobs. The tiles themselves are fixed by the selection block: each compute
    warpgroup owns block_size / 2 query rows and a K/V step is one kept selection block."""

    stages: int = 2  # K/V shared-memory slots in flight (>= 2 with the schedule barrier)
    pv: Literal["registers", "smem"] | None = None  # None: "registers" on GPU, "smem" interpret
    schedule_barrier: bool = True  # ping-pong the two compute warpgroups (FA3)
    compute_registers: int = 232  # setmaxnreg for compute / memory warpgroups:
    memory_registers: int = 40  # 2 * 232 + 40 = 504 regs x 128 threads fits the 64K file
    # mosaic_persistent.py's kernel instead: one CTA per SM walking the work items round-robin
    # with the K/V ring running on across them (opt-in, measured slower; see that file).
    persistent: bool = False
    # CTA launch order (non-persistent grid): "kv_group" runs every query block of one kv
    # head's group before the next kv head (the CTAs in flight read one kv head's K/V);
    # "heads": query heads fastest (the CTAs in flight read every kv head's K/V). "auto":
    # kv_group for per-head masks whose one kv head's K/V fits half the L2 (KV_GROUP_BYTES),
    # else heads. Measured (results/kernel_bench/order_h200, H200, 16/8 heads, density 0.1):
    # 32K (16 MiB a kv head) 1.02 vs 1.29 ms; 128K (64 MiB) 12.52 vs 12.12 ms; dense
    # (one shared mask) 2% slower with kv_group at both lengths.
    order: Literal["auto", "kv_group", "heads"] = "auto"
    # FA3's intra-warpgroup pipelining (opt-in, pv="registers" only, not persistent): each step
    # issues the next block's Q K^T and the previous block's P @ V back to back and runs the
    # softmax while P @ V is in flight; the diagonal block goes first (module docstring).
    overlap: bool = False
    # How the overlapped pipeline's two compute warpgroups take turns (with schedule_barrier):
    # "rendezvous": both meet after issuing their matmuls and after their softmax (the
    # non-overlapped kernel's ping-pong); "token" (overlap only, FA3's): a warpgroup waits for
    # its turn before issuing its matmuls and hands the turn over once they are issued, its
    # softmax free to run beside the other's.
    schedule: Literal["rendezvous", "token"] = "rendezvous"


@dataclasses.dataclass(frozen=True)
class KernelParams:
    """The static parameters of one launch (the wrapper derives them from the shapes and the
    BlockSizes); `item_ops` builds the kernels' pieces from them."""

    scale: float  # 1 / sqrt(H)
    causal: bool
    seq_len: int  # S before padding
    block: int  # selection block: query rows per CTA, key rows per K/V step
    n_blocks: int  # M
    heads_per_kv: int  # G
    stages: int  # K/V ring slots
    pv: str  # "registers" or "smem"
    compute_registers: int
    memory_registers: int
    shared_mask: bool  # one mask row for every head ([B, 1, M, M])
    overlap: bool = False  # BlockSizes.overlap
    schedule: str = "rendezvous"  # BlockSizes.schedule; "none" without BlockSizes.schedule_barrier
    qk_scaled: bool = False  # read a runtime factor of the logits from Refs.scales[0] (fp8 Q/K)
    # fp8 P @ V: V arrives as V^T tiles ([B, K, H, S_pad] in GMEM, tokens permuted within each
    # 16 when P is a register operand: `pv_token_order`), P is cast to e4m3 at 2^P_SHIFT times
    # its value, and the output is scaled by Refs.scales[1] (V's dequantization factor).
    v_fp8: bool = False


class Refs(NamedTuple):
    """The kernels' refs in plgpu.kernel's order: inputs, output, then scratch."""

    idx: Any  # [B, N, M, M] int32 GMEM  kept key blocks per selection row (ascending, padded);
    #           [B, 1, M, M] when shared_mask (one pattern for every head, e.g. dense causal)
    cnt: Any  # [B, N, M]    int32 GMEM  kept counts ([B, 1, M] when shared_mask)
    q: Any  # [B, S_pad, N, H] GMEM
    k: Any  # [B, S_pad, K, H] GMEM
    v: Any  # [B, S_pad, K, H] GMEM
    scales: Any  # [2] float32 GMEM  the logits' dequantization factor (read when qk_scaled),
    #             V's (read when v_fp8)
    o: Any  # [B, S_pad, N, H] GMEM
    q_smem2: Any  # [2, bq, H]  this CTA's query rows, one tile per compute warpgroup; reused
    #               for the output tile when q has the output's dtype
    k_smem: Any  # [stages, block, H]  the K ring
    v_smem: Any  # [stages, block, H]  the V ring ([stages, H, block] V^T tiles when v_fp8)
    p_smem2: Any  # [2, bq, block] P tiles (pv="smem"), else None
    o_smem2: Any  # [2, bq, H] output tiles when Q's dtype is not the output's (fp8 Q), else
    #               None: the Q tile is reused
    k_loaded: Any  # [stages] barriers: TMA -> compute
    v_loaded: Any  # [stages]
    q_loaded: Any  # [2]
    k_consumed: Any  # [stages] barriers: both compute warpgroups done with a slot -> TMA
    v_consumed: Any  # [stages]
    schedule: Any  # the compute warpgroups' ping-pong barrier (schedule "token": [2], one
    #              per warpgroup, arrived at by the other one)


class ItemOps(NamedTuple):
    """One warpgroup's pieces of a work item (query block m, head h, batch row b): what this
    file's kernel and mosaic_persistent.py's are written in. The persistent kernel gets them
    passed in (`item_ops`): it cannot import this file, which dispatches to it."""

    split: Callable  # (compute, memory): run compute() on the compute warpgroups, memory() on
    #                  the memory warpgroup, each with its register budget
    row: Callable  # (b, h, m) -> (hm, count): the item's mask head and kept count
    compute: Callable  # (b, h, m, hm, count, g0=None, opening=True, closing=True): the item's
    #                    attention on a compute warpgroup (docstring of item_ops)
    issue: Callable  # (b, kv_h, m, hm, j, slot): TMA-copy kept block j's K and V into slot
    wait_consumed: Callable  # (slot): wait until both compute warpgroups are done with slot
    drain: Callable  # (total): observe the last steps' "consumed" phases
    slot_of: Callable  # (g) -> ring slot of K/V step g


def item_ops(refs, wg, cfg: KernelParams) -> ItemOps:
    """The ItemOps of warpgroup wg over the kernel's refs (Refs' fields, in order)."""
    r = Refs(*refs)
    bq = cfg.block // COMPUTE_WGS
    p_dtype = r.v.dtype  # P: V's dtype (Q and K may be fp8, and V too)

    def slot_of(j):
        return lax.rem(j, jnp.int32(cfg.stages))

    def schedule_sync():
        if cfg.schedule != "none":
            plgpu.barrier_arrive(r.schedule)
            plgpu.barrier_wait(r.schedule)

    def split(compute, memory):
        @pl.when(wg < COMPUTE_WGS)
        def _compute():
            plgpu.set_max_registers(cfg.compute_registers, action="increase")
            compute()

        @pl.when(wg == COMPUTE_WGS)
        def _memory():
            plgpu.set_max_registers(cfg.memory_registers, action="decrease")
            memory()

    def row(b, h, m):
        hm = 0 if cfg.shared_mask else h  # the mask row's head
        return hm, r.cnt[b, hm, m]

    def mask_block(s, kv0, q0):
        """The exact per-token mask of the block whose keys start at kv0 (key < S, and key <=
        query when causal) on this warpgroup's logits s, whose query rows start at q0; a
        no-op on a block before the diagonal."""
        rows = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
        cols = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
        k_pos = cols + kv0
        ok = k_pos < cfg.seq_len
        if cfg.causal:
            ok = ok & (k_pos <= rows + q0)
        return jnp.where(ok, s, MASK_VALUE)

    def write_out(acc, l_i, q_smem, b, q0, h):
        """o = acc / l through the Q tile (all wgmmas reading Q have completed; an fp8 Q has
        its own output tile) to GMEM; with fp8 V times V's scale."""
        if cfg.v_fp8:  # acc is in units of V's fp8 values: times V's scale
            l_i = l_i / r.scales[1]
        out = acc / lax.broadcast_in_dim(l_i, acc.shape, [0])
        o_smem = q_smem if r.o_smem2 is None else r.o_smem2.at[wg]
        o_smem[...] = out.astype(r.o.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, r.o.at[b, pl.ds(q0, bq), h])
        plgpu.wait_smem_to_gmem(0)  # (and a persistent CTA's next Q may overwrite the tile)

    def load_q(b, h, m):
        """This warpgroup's Q tile of item (b, h, m) into shared memory -> (tile, first row)."""
        q_smem = r.q_smem2.at[wg]
        q0 = m * cfg.block + wg * bq  # first query row of this warpgroup
        plgpu.copy_gmem_to_smem(r.q.at[b, pl.ds(q0, bq), h], q_smem, r.q_loaded.at[wg])
        plgpu.barrier_wait(r.q_loaded.at[wg])
        return q_smem, q0

    def initial_state():
        """(output accumulator 0, running max MASK_VALUE, running sum 0) in wgmma layouts."""
        return (plgpu.layout_cast(jnp.zeros((bq, r.q.shape[-1]), jnp.float32),
                                  plgpu.Layout.WGMMA),
                plgpu.layout_cast(jnp.full((bq,), MASK_VALUE, jnp.float32),
                                  plgpu.Layout.WGMMA.reduce(1)),
                plgpu.layout_cast(jnp.zeros((bq,), jnp.float32), plgpu.Layout.WGMMA.reduce(1)))

    def logit_factor():
        """c with softmax(s * scale) = exp2(s * c - ...): static, times the runtime
        dequantization factor of fp8 Q/K (positive, so it commutes with the running max)."""
        c = cfg.scale * LOG2E
        return r.scales[0] * c if cfg.qk_scaled else c

    def softmax(s, m_i, l_i, qk_scale):
        """One online-softmax step on raw logits s -> (P in V's dtype, new max, new sum, the
        correction the output accumulator is multiplied by). The running max is kept in raw
        units (scale > 0 commutes with max), so the scale enters once, as one FMA per element
        inside exp2's argument: s * c - m * c, not a multiply of every logit, then a subtract.
        qk_scale: logit_factor(). With fp8 V, P is 2^P_SHIFT times the probabilities (the
        shift rides in the same FMA; the sum carries it too, so acc / l is unchanged) and goes
        to the tensor cores as e4m3 (`p_operand`)."""
        m_new = jnp.maximum(m_i, s.max(axis=1))
        corr = jnp.exp2((m_i - m_new) * qk_scale)
        offset = m_new * qk_scale
        if cfg.v_fp8:
            offset = offset - P_SHIFT
        p = jnp.exp2(s * qk_scale - lax.broadcast_in_dim(offset, s.shape, [0]))
        return p_operand(p), m_new, l_i * corr + p.sum(axis=1), corr

    def p_operand(p):
        """P (float32, wgmma accumulator layout) as the P @ V wgmma's A operand: V's dtype; an
        fp8 P in registers is also relabelled into wgmma's 8-bit operand layout
        (`relabel_8bit`: no data moves, P's columns come out permuted and V^T's tokens were
        permuted to match)."""
        p = p.astype(p_dtype)
        if cfg.v_fp8 and cfg.pv == "registers":
            p = relabel_8bit(p)
        return p

    def v_operand(slot):
        """The P @ V wgmma's B operand: the V tile ([block, H]), or the V^T tile transposed
        (fp8 wgmma takes K-major operands only, so an fp8 V is stored [H, block])."""
        return r.v_smem.at[slot].T if cfg.v_fp8 else r.v_smem.at[slot]

    def compute(b, h, m, hm, count, g0=None, opening=True, closing=True):
        """One (query block, head, batch) item. g0: global step of its first K/V block in the
        ring (persistent CTAs); opening / closing: whether this item starts / ends the CTA's
        ping-pong (bool, or a traced flag for persistent CTAs)."""
        if cfg.overlap:
            return overlapped(b, h, m, hm, count)
        q_smem, q0 = load_q(b, h, m)
        H = q_smem.shape[-1]
        c = logit_factor()

        def step(j, carry, masked: bool, kv0=None):
            acc, m_i, l_i = carry
            slot = slot_of(j if g0 is None else g0 + j)
            plgpu.barrier_wait(r.k_loaded.at[slot])

            def qk(acc_ref):
                plgpu.wgmma(acc_ref, q_smem, r.k_smem.at[slot].T)
                schedule_sync()  # let the other warpgroup issue its matmul meanwhile
                return acc_ref[...]

            s = pl.run_scoped(qk, plgpu.ACC((bq, cfg.block), jnp.float32))
            plgpu.barrier_arrive(r.k_consumed.at[slot])
            if masked:
                s = mask_block(s, kv0, q0)
            p16, m_new, l_i, corr = softmax(s, m_i, l_i, c)
            acc = acc * lax.broadcast_in_dim(corr, acc.shape, [0])
            schedule_sync()  # softmax done: the other warpgroup's turn on the tensor cores
            plgpu.barrier_wait(r.v_loaded.at[slot])
            if cfg.pv == "registers":
                def pv_mm(acc_ref):
                    plgpu.wgmma(acc_ref, p16, v_operand(slot))

                acc = pl.run_state(pv_mm)(plgpu.ACC.init(acc))
            else:
                p_smem = r.p_smem2.at[wg]
                p_smem[...] = p16
                plgpu.commit_smem()  # make the tile visible to the tensor cores (async proxy)

                def pv_mm(acc_ref):
                    plgpu.wgmma(acc_ref, p_smem, v_operand(slot))
                    return acc_ref[...]

                acc = acc + pl.run_scoped(pv_mm, plgpu.ACC((bq, H), jnp.float32))
            plgpu.barrier_arrive(r.v_consumed.at[slot])
            return acc, m_new, l_i

        pl.when(_and(wg == 1, opening))(schedule_sync)  # warpgroup 0 goes first
        carry = lax.fori_loop(0, count - 1, functools.partial(step, masked=False),
                              initial_state())
        last = count - 1
        kv0 = r.idx[b, hm, m, last] * cfg.block  # the diagonal block when causal
        acc, _, l_i = step(last, carry, masked=True, kv0=kv0)
        pl.when(_and(wg == 0, closing))(schedule_sync)  # balance wg 1's opening arrival
        write_out(acc, l_i, q_smem, b, q0, h)

    def overlapped(b, h, m, hm, count):
        """compute() with FA3's intra-warpgroup pipelining (BlockSizes.overlap). Step 0 is the
        diagonal block (the kept list's last entry, masked); step j >= 1 is kept entry j - 1,
        unmasked. Step j issues S_j = Q K_j^T and then P_{j-1} V_{j-1} into the output
        accumulator, waits for S_j only (wgmma groups complete in order), runs S_j's softmax
        while the P @ V is in flight, then rescales. The online softmax does not depend on the
        order of the blocks (up to rounding), so the diagonal going first changes no result."""
        q_smem, q0 = load_q(b, h, m)
        H = q_smem.shape[-1]
        c = logit_factor()
        token = cfg.schedule == "token"

        def before_issue():  # token: wait for this warpgroup's turn
            if token:
                plgpu.barrier_wait(r.schedule.at[wg])

        def after_issue():  # token: hand the turn to the other warpgroup
            if token:
                plgpu.barrier_arrive(r.schedule.at[1 - wg])
            else:
                schedule_sync()

        def after_softmax():
            if not token:
                schedule_sync()

        # Warpgroup 0 goes first: "rendezvous" offsets warpgroup 1 by one meeting, "token"
        # gives warpgroup 0 the first turn.
        if token:
            pl.when(wg == 1)(lambda: plgpu.barrier_arrive(r.schedule.at[0]))
        else:
            pl.when(wg == 1)(schedule_sync)
        slot0 = slot_of(0)
        plgpu.barrier_wait(r.k_loaded.at[slot0])

        def qk0(s_ref):
            before_issue()
            plgpu.wgmma(s_ref, q_smem, r.k_smem.at[slot0].T)
            after_issue()
            return s_ref[...]

        s = pl.run_scoped(qk0, plgpu.ACC((bq, cfg.block), jnp.float32))
        plgpu.barrier_arrive(r.k_consumed.at[slot0])
        acc, m0, l0 = initial_state()
        p16, m_i, l_i, _ = softmax(mask_block(s, r.idx[b, hm, m, count - 1] * cfg.block, q0),
                                   m0, l0, c)
        after_softmax()

        def step(j, carry):
            acc, m_i, l_i, p_prev = carry
            slot, prev = slot_of(j), slot_of(j - 1)
            plgpu.barrier_wait(r.k_loaded.at[slot])

            def body(s_ref, o_ref):
                o_ref[...] = acc
                plgpu.barrier_wait(r.v_loaded.at[prev])
                before_issue()
                plgpu.wgmma(s_ref, q_smem, r.k_smem.at[slot].T)
                plgpu.wgmma(o_ref, p_prev, v_operand(prev))
                after_issue()  # the other warpgroup's turn to issue
                s = plgpu.wgmma_accumulator_load(s_ref, wait_n=1)  # S_j done, P @ V may run
                plgpu.barrier_arrive(r.k_consumed.at[slot])
                p16, m_new, l_new, corr = softmax(s, m_i, l_i, c)
                o = o_ref[...]  # P_{j-1} V_{j-1} done
                # Release V before the next rendezvous: with two ring slots the other
                # warpgroup's next K load waits for it.
                plgpu.barrier_arrive(r.v_consumed.at[prev])
                after_softmax()
                return o * lax.broadcast_in_dim(corr, o.shape, [0]), m_new, l_new, p16

            return pl.run_scoped(body, plgpu.ACC((bq, cfg.block), jnp.float32),
                                 plgpu.ACC((bq, H), jnp.float32))

        acc, m_i, l_i, p16 = lax.fori_loop(1, count, step, (acc, m_i, l_i, p16))
        last = slot_of(count - 1)
        plgpu.barrier_wait(r.v_loaded.at[last])

        def pv_mm(acc_ref):
            plgpu.wgmma(acc_ref, p16, v_operand(last))

        acc = pl.run_state(pv_mm)(plgpu.ACC.init(acc))
        plgpu.barrier_arrive(r.v_consumed.at[last])
        # Balance warpgroup 1's opening arrival ("token": observe its last hand-over).
        if token:
            pl.when(wg == 0)(lambda: plgpu.barrier_wait(r.schedule.at[0]))
        else:
            pl.when(wg == 0)(schedule_sync)
        write_out(acc, l_i, q_smem, b, q0, h)

    def issue(b, kv_h, m, hm, j, slot):
        if cfg.overlap:  # step 0 is the diagonal (last kept entry), step j entry j - 1
            j = lax.select(j == 0, r.cnt[b, hm, m] - 1, j - 1)
        rows = pl.ds(r.idx[b, hm, m, j] * cfg.block, cfg.block)
        plgpu.copy_gmem_to_smem(r.k.at[b, rows, kv_h], r.k_smem.at[slot], r.k_loaded.at[slot])
        v_tile = r.v.at[b, kv_h, :, rows] if cfg.v_fp8 else r.v.at[b, rows, kv_h]
        plgpu.copy_gmem_to_smem(v_tile, r.v_smem.at[slot], r.v_loaded.at[slot])

    def wait_consumed(slot):
        # The slot held step g - stages: reuse it once both warpgroups are done with it.
        plgpu.barrier_wait(r.k_consumed.at[slot])
        plgpu.barrier_wait(r.v_consumed.at[slot])

    def drain(total):
        def one(g, _):
            # Observe the last steps' "consumed" phases too. The hardware does not need it (the
            # CTA ends), but the interpreter rejects a barrier freed with unobserved phases.
            plgpu.barrier_wait(r.k_consumed.at[slot_of(g)])
            plgpu.barrier_wait(r.v_consumed.at[slot_of(g)])

        lax.fori_loop(jnp.maximum(total - cfg.stages, 0), total, one, None)

    return ItemOps(split, row, compute, issue, wait_consumed, drain, slot_of)


# The column permutation `relabel_8bit` applies within every 16 columns: 8-bit position c holds
# P's column PV_PERM[c]. Derived from the two layouts' register maps (a thread's two wgmma-layout
# pairs {2j, 2j+1} and {8+2j, 9+2j} become the 8-bit layout's quadruple 4j..4j+3) and checked
# against jax's layout definitions in tests/attention/test_block_sparse_mosaic.py.
PV_PERM = (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15)


def relabel_8bit(p):
    """An fp8 [64, n] array in the wgmma accumulator layout, re-read in wgmma's 8-bit A-operand
    layout (WGMMA_8BIT) without moving data: each thread's four registers of two e4m3 values
    become two of four. Both layouts give a thread the same rows, so the result is P with its
    columns permuted within every 16 by PV_PERM, and P @ V is exact when V's rows (tokens) are
    permuted the same way (`pv_token_order`, applied once per call to V^T). A real relayout
    would need a warp shuffle per register (jax 0.11.2 has none for this pair); FA3's fp8 path
    avoids it the same way."""
    p = plgpu.layout_cast(p, plgpu.Layout.WGMMA)
    shape = tuple(p.shape)

    @plgpu.inline_mgpu(arg_types=(plgpu.Layout.WGMMA,),
                       return_type=plgpu.ShapeDtypeStruct(shape, p.dtype,
                                                          layout=plgpu.Layout.WGMMA_8BIT))
    def relabel(_ctx, x):
        old = x.registers  # [.., column tile of 8, .., row half, ..] vector<2 x e4m3>
        new_shape = mgpu.WGMMA_LAYOUT_8BIT.registers_shape(shape)  # column tiles of 16
        assert old.shape[1] == 2 * new_shape[1] and old.shape[2:] == new_shape[2:], (
            old.shape, new_shape)
        new = np.empty(new_shape, dtype=object)
        for idx in np.ndindex(new_shape):
            pair = [old[(idx[0], 2 * idx[1] + i, *idx[2:])] for i in range(2)]
            new[idx] = mgpu_utils.vector_concat(pair)
        return mgpu.FragmentedArray(_registers=new, _layout=mgpu.WGMMA_LAYOUT_8BIT,
                                    _is_signed=None)

    return relabel(p)


def pv_token_order(v8t, permuted: bool):
    """fp8 V^T [B, K, H, S_pad] with its tokens in the order the kernel's P columns come in:
    PV_PERM within every 16 when P is a register operand (`relabel_8bit`), as is otherwise.
    PV_PERM is c = 4j + 2a + b -> 2j + 8a + b: a reshape and a swap, fused into the transpose."""
    if not permuted:
        return v8t
    *lead, S = v8t.shape
    x = v8t.reshape(*lead, S // 16, 2, 4, 2)  # token 16g + 8a + 2j + b
    return jnp.swapaxes(x, -3, -2).reshape(*lead, S)  # position 16g + 4j + 2a + b


def _kernel(*refs, cfg: KernelParams, order: str, n_kv: int):
    """One CTA per (query block, head, batch) item; refs: Refs' fields, in order. The grid's
    first axis is the fastest (see BlockSizes.order)."""
    if order == "heads":  # grid (N, M, B)
        b = lax.axis_index("batch")
        h = lax.axis_index("heads")
    else:  # "kv_group": grid (G, M, K * B), a kv head's G query heads side by side
        kb = lax.axis_index("kv_batch")
        b = lax.div(kb, jnp.int32(n_kv))
        h = lax.rem(kb, jnp.int32(n_kv)) * cfg.heads_per_kv + lax.axis_index("group_head")
    m = cfg.n_blocks - 1 - lax.axis_index("q_blocks")  # heaviest query blocks first
    wg = lax.axis_index("wg")
    ops = item_ops(refs, wg, cfg)
    hm, count = ops.row(b, h, m)

    def memory():
        kv_h = lax.div(h, jnp.int32(cfg.heads_per_kv))
        for j in range(cfg.stages):  # fill the ring
            pl.when(j < count)(functools.partial(ops.issue, b, kv_h, m, hm, jnp.int32(j), j))

        def refill(j, _):
            slot = ops.slot_of(j)
            ops.wait_consumed(slot)
            ops.issue(b, kv_h, m, hm, j, slot)

        lax.fori_loop(jnp.int32(cfg.stages), count, refill, None)
        ops.drain(count)

    ops.split(functools.partial(ops.compute, b, h, m, hm, count), memory)


def resolve_order(order: str, seq_len: int, head_dim: int, itemsize: int,
                  shared_mask: bool) -> str:
    """BlockSizes.order with "auto" decided: "kv_group" for a per-head mask whose one kv head's
    K and V (2 * seq_len * head_dim * itemsize bytes) fit KV_GROUP_BYTES, else "heads"."""
    if order != "auto":
        return order
    fits = 2 * seq_len * head_dim * itemsize <= KV_GROUP_BYTES
    return "kv_group" if fits and not shared_mask else "heads"


def _and(cond, flag):
    """cond & flag, where flag is True (static: no extra op) or a traced bool."""
    return cond if flag is True else cond & flag


def _smem(shape, dtype):
    """Shared-memory tile in the swizzled layout wgmma and TMA want (minor dim 16 B multiple)."""
    swizzle = plgpu.find_swizzle(shape[-1] * jnp.dtype(dtype).itemsize * 8)
    tiling = plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize))
    return plgpu.SMEM(shape, dtype, transforms=(tiling, plgpu.SwizzleTransform(swizzle)))


def _check_device(interpret: bool):
    if interpret:
        return
    dev = jax.devices()[0]
    cc = getattr(dev, "compute_capability", None)
    if dev.platform != "gpu" or cc is None or not str(cc).startswith("9"):
        raise NotImplementedError(
            f"impl='mosaic' (Pallas Mosaic GPU: TMA + wgmma) needs a Hopper GPU (sm_90), got "
            f"{dev.device_kind!r} ({dev.platform}, compute capability {cc}); use impl='triton', "
            f"or interpret=True to run the Mosaic GPU interpreter on the CPU")


# The compiled kernel's default pipeline (block_sizes=None on a GPU): overlapped, three K/V
# slots, no schedule barrier. Measured against the ping-pong BlockSizes() in one process
# (results/kernel_bench/overlap_h200, H200): 3.6% faster dense at 128K (16/8 heads, 633 vs
# 610 TFLOP/s), 3.1% at density 0.1 with 32/8 heads and ~1.2% with 16/8; the overlapped
# pipeline WITH the rendezvous barrier was 4-6% slower than ping-pong, with the "token"
# hand-over 0-2% slower.
GPU_DEFAULT = BlockSizes(overlap=True, stages=3, schedule_barrier=False)


# fp8 P @ V's compiled default: the ping-pong pipeline (P in registers, two K/V slots). With
# both matmuls in fp8 the softmax is the longer half of a step, and the other warpgroup's
# matmuls hide it better than the overlapped pipeline does: at 128K, density 0.1, 16/8 heads
# on an H100 (results/fp8_pv_h100/variants, one process) 9.21-9.41 ms against GPU_DEFAULT's
# 10.70-10.87 ms (4 slots 9.60, kv_group 9.44); with fp8 Q/K and a bf16 V both were 11.2 ms.
GPU_DEFAULT_FP8_PV = BlockSizes()


def default_block_sizes(interpret: bool, v_fp8: bool = False) -> BlockSizes:
    """What block_sizes=None means: GPU_DEFAULT compiled (GPU_DEFAULT_FP8_PV with an fp8 V),
    BlockSizes() (P through shared memory, ping-pong) in the interpreter, which runs neither
    register A operands nor the overlapped pipeline."""
    if interpret:
        return BlockSizes()
    return GPU_DEFAULT_FP8_PV if v_fp8 else GPU_DEFAULT


FP8_QK = jnp.dtype(jnp.float8_e4m3fn)  # the fp8 Q/K (and V) operands wgmma takes here
P_SHIFT = 8.0  # fp8 P @ V: P goes to e4m3 as 2^P_SHIFT times the probabilities (docstring)


@functools.partial(jax.jit, static_argnames=("causal", "block_sizes", "interpret",
                                             "out_dtype"))
def block_sparse_attention(q, k, v, block_mask: BlockMask, *, causal: bool = True,
                           block_sizes: BlockSizes | None = None,
                           interpret: bool | plgpu.InterpretGPUParams = False,
                           qk_scale=None, v_scale=None, out_dtype=None):
    """q [B,S,N,H], k/v [B,S,K,H] bf16/f16, BlockMask over M = ceil(S/bs) -> [B,S,N,H] v.dtype.

    fp8 Q/K: q and k float8_e4m3fn (wgmma's fp8 operands; Q K^T is K-major on both sides, the
    only layout fp8 wgmma takes), v bf16/f16. qk_scale: the float32 factor that dequantizes the
    logits (q ~= q8 * a, k ~= k8 * b: qk_scale = a * b), required with fp8 Q/K, a runtime
    value (traced scalar) read by every CTA; None otherwise. The output then has V's dtype.

    fp8 P @ V (with fp8 Q/K): v float8_e4m3fn too (v ~= v8 * v_scale, v_scale required, a
    runtime float32 scalar). V is transposed here to [B, K, H, S] (fp8 wgmma's B operand must
    be K-major) with its tokens reordered to match P's register layout (`pv_token_order`), one
    XLA transpose per call; P goes to the tensor cores as e4m3 at 2^8 times the probabilities
    (e4m3's normal range starts at 2^-6: the shift keeps probabilities down to 2^-14 normal;
    rows are rescaled to their running max, so P <= 1 before the shift). out_dtype: the output's
    dtype (default: V's, bfloat16 for an fp8 V).

    block_sizes None: `default_block_sizes` (compiled: the overlapped pipeline; the ping-pong
    one with an fp8 V). interpret=True (or an InterpretGPUParams, e.g. with
    detect_races=True) runs the Mosaic GPU interpreter on the CPU, with the pv="smem" variant
    by default. A mask with one head ([B, 1, M, M])
    applies to every query head.
    """
    if interpret is True:
        interpret = plgpu.InterpretGPUParams()
    interpret = interpret or None
    _check_device(interpret is not None)
    if block_sizes is None:
        block_sizes = default_block_sizes(interpret is not None,
                                          jnp.dtype(v.dtype) == FP8_QK)
    B, S, N, H = q.shape
    K = k.shape[2]
    bs = block_mask.block_size
    dtype = jnp.dtype(v.dtype)  # P and (unless fp8) Q and K
    fp8 = jnp.dtype(q.dtype) == FP8_QK
    v_fp8 = dtype == FP8_QK
    if v_fp8:
        if not fp8:
            raise ValueError(f"an fp8 V needs fp8 Q/K too (P @ V and Q K^T share the operand "
                             f"width in wgmma's pipeline here), got q {q.dtype}")
        if v_scale is None:
            raise ValueError("an fp8 V needs v_scale, the float32 factor that dequantizes it "
                             "(v ~= v8 * v_scale)")
    elif v_scale is not None:
        raise ValueError(f"v_scale is for an fp8 V; v is {v.dtype}")
    if dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and not v_fp8:
        raise NotImplementedError(f"impl='mosaic' runs bfloat16 or float16 (wgmma operands), "
                                  f"got {dtype.name}; cast, or use impl='triton'")
    out_dtype = jnp.dtype(out_dtype or (jnp.bfloat16 if v_fp8 else dtype))
    if out_dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"out_dtype must be bfloat16 or float16, got {out_dtype.name}")
    if fp8:
        if k.dtype != q.dtype:
            raise ValueError(f"fp8 Q/K: q is {q.dtype} but k is {k.dtype}; quantize both")
        if qk_scale is None:
            raise ValueError("fp8 Q/K needs qk_scale, the float32 factor that dequantizes "
                             "q8 . k8 into logits (the product of q's and k's scales)")
    elif q.dtype != dtype or k.dtype != dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype} (Q/K may "
                         f"be {FP8_QK.name} with a bfloat16/float16 V)")
    qk_scaled = qk_scale is not None
    scales = jnp.stack([jnp.asarray(1.0 if x is None else x, jnp.float32).reshape(())
                        for x in (qk_scale, v_scale)])
    if H % 64:
        raise ValueError(f"head dim {H} must be a multiple of 64 (128-byte swizzled tiles)")
    if N % K:
        raise ValueError(f"query heads N={N} must be a multiple of kv heads K={K}")
    if interpret is None and bs != 128:
        raise ValueError(f"impl='mosaic' on the GPU needs block_size 128 (two 64-row wgmma "
                         f"warpgroups per query block), got {bs}")
    if bs % (16 * COMPUTE_WGS):
        raise ValueError(f"block_size {bs} must be a multiple of {16 * COMPUTE_WGS}")
    M = block_mask.num_blocks
    shared_mask = block_mask.shape[1] == 1 and N > 1
    if block_mask.shape != (B, 1 if shared_mask else N, M, M) or M != -(-S // bs):
        raise ValueError(f"block mask {block_mask.shape} does not fit q {q.shape} with "
                         f"block_size {bs}")
    pv = block_sizes.pv or ("registers" if interpret is None else "smem")
    if interpret is not None and pv == "registers":
        raise ValueError("pv='registers' (register A operand, pl.run_state) does not run in the "
                         "Mosaic GPU interpreter; use pv='smem' or pv=None with interpret=True")
    if block_sizes.overlap and (pv != "registers" or block_sizes.persistent):
        raise ValueError(f"BlockSizes(overlap=True) runs with pv='registers' (GPU only) and "
                         f"without persistent=True; got pv={pv!r}, "
                         f"persistent={block_sizes.persistent}")
    if block_sizes.schedule not in ("rendezvous", "token"):
        raise ValueError(f"BlockSizes.schedule must be 'rendezvous' or 'token', got "
                         f"{block_sizes.schedule!r}")
    if block_sizes.schedule == "token" and not block_sizes.overlap:
        raise ValueError("BlockSizes(schedule='token') is the overlapped pipeline's; set "
                         "overlap=True too")
    schedule = block_sizes.schedule if block_sizes.schedule_barrier else "none"
    if block_sizes.stages < (2 if block_sizes.schedule_barrier else 1):
        # With one slot, warpgroup 0's next load waits for warpgroup 1's P @ V, which waits
        # (schedule barrier) for warpgroup 0's next Q K^T: a deadlock.
        raise ValueError(f"stages={block_sizes.stages}: the schedule barrier needs >= 2 stages")
    stages = min(block_sizes.stages, M)  # a row keeps at most M blocks
    S_pad = M * bs
    if S_pad != S:
        pad = ((0, 0), (0, S_pad - S), (0, 0), (0, 0))
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    if v_fp8:  # V^T tiles: [B, K, H, S_pad], tokens in P's column order
        # The barrier keeps the transpose a fusion of its own: fused into V's producers (the
        # drafter's V GEMM epilogue and quantization) XLA emitted a 1.14 ms loop transpose per
        # layer at 128K on an H100, against ~0.26 ms for quantize + transpose alone
        # (results/fp8_pv_h100/profile, probe_v_layout.log).
        v = pv_token_order(jnp.transpose(lax.optimization_barrier(v), (0, 2, 3, 1)),
                           permuted=pv == "registers")
    bq = bs // COMPUTE_WGS
    own_o = jnp.dtype(q.dtype) != out_dtype  # the Q tile cannot hold the output
    scratch = [
        _smem((COMPUTE_WGS, bq, H), q.dtype),  # Q tiles, then O tiles (unless own_o)
        _smem((stages, bs, H), k.dtype),  # K ring
        _smem((stages, H, bs) if v_fp8 else (stages, bs, H), dtype),  # V (V^T) ring
        _smem((COMPUTE_WGS, bq, bs), dtype) if pv == "smem" else None,  # P tiles
        _smem((COMPUTE_WGS, bq, H), out_dtype) if own_o else None,  # O tiles
        plgpu.Barrier(num_barriers=stages),  # k_loaded
        plgpu.Barrier(num_barriers=stages),  # v_loaded
        plgpu.Barrier(num_barriers=COMPUTE_WGS),  # q_loaded
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),  # k_consumed
        plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),  # v_consumed
        (plgpu.Barrier(num_barriers=COMPUTE_WGS) if schedule == "token"
         else plgpu.Barrier(num_arrivals=COMPUTE_WGS)),  # schedule
    ]
    cfg = KernelParams(
        scale=1.0 / math.sqrt(H), causal=causal, seq_len=S, block=bs, n_blocks=M,
        heads_per_kv=N // K, stages=stages, pv=pv, schedule=schedule,
        compute_registers=block_sizes.compute_registers,
        memory_registers=block_sizes.memory_registers, shared_mask=shared_mask,
        overlap=block_sizes.overlap, qk_scaled=qk_scaled, v_fp8=v_fp8)
    order = resolve_order(block_sizes.order, S_pad, H, dtype.itemsize, shared_mask)
    if block_sizes.persistent:
        n_ctas = mosaic_persistent.num_ctas(N * M * B, interpret=interpret is not None)
        kernel = functools.partial(
            mosaic_persistent.kernel, item_ops=functools.partial(item_ops, cfg=cfg),
            n_ctas=n_ctas, n_heads=N, n_blocks=M, n_batch=B, heads_per_kv=N // K, stages=stages)
        grid, grid_names = (n_ctas,), ("cta",)
    elif order == "heads":
        kernel = functools.partial(_kernel, cfg=cfg, order="heads", n_kv=K)
        grid, grid_names = (N, M, B), ("heads", "q_blocks", "batch")
    elif order == "kv_group":
        kernel = functools.partial(_kernel, cfg=cfg, order="kv_group", n_kv=K)
        grid, grid_names = (N // K, M, K * B), ("group_head", "q_blocks", "kv_batch")
    else:
        raise ValueError(f"BlockSizes.order must be 'auto', 'kv_group' or 'heads', got "
                         f"{block_sizes.order!r}")
    out = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((B, S_pad, N, H), out_dtype),
        scratch_types=scratch,
        grid=grid,
        grid_names=grid_names,
        num_threads=COMPUTE_WGS + 1,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=interpret,
        kernel_name="block_sparse_attention_mgpu",
    )(block_mask.indices, block_mask.counts, q, k, v, scales)
    return out[:, :S]


def dense_attention(q, k, v, *, causal: bool = True, block_sizes: BlockSizes | None = None,
                    interpret: bool | plgpu.InterpretGPUParams = False):
    """Dense (causal) prefill attention through the same kernel: every block up to the diagonal,
    as one [1, 1, M, M] pattern shared by all heads (4 MiB of indices at 128K, not per head).
    q [B,S,N,H], k/v [B,S,K,H] with T == S -> [B,S,N,H]."""
    B, S = q.shape[:2]
    if k.shape[1] != S:
        raise ValueError(f"impl='mosaic' dense attention is prefill only (T == S), got "
                         f"T={S}, S={k.shape[1]}")
    bs = 128
    M = -(-S // bs)
    full = jnp.ones((B, 1, M, M), bool)
    bm = BlockMask.from_dense(full, block_size=bs, seq_len=S, causal=causal)
    return block_sparse_attention(q, k, v, bm, causal=causal, block_sizes=block_sizes,
                                  interpret=interpret)
