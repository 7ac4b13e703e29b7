"""The drafter's per-layer scoring fold on Pallas' Triton backend (importance.fold_layer with
ScoringConfig.fold_impl="triton"; docs/design.md 1.2):

    running_max[t, j] <- max(running_max[t, j], max_n p[n, t, j]),
    p[n, t, j] = softmax_j(q[t, n] . k[j, n // G] / sqrt(H))   float32, causal per row

exactly `jnp.maximum(running_max, importance._head_max(...))` for every pooling but "per_row"
(that one pools each probability row before the max and keeps the XLA path). The XLA path
materialises [N, T, S] float32 logits and makes several passes over them; here the logits
exist only in registers, one [R, BS] tile at a time, and k is read twice (once per pass).

Pass 1 (`_stats_kernel`), one program per (key tile i, kv head): the logits of the kv head's G
query heads against the tile's BS keys, one [R, H] x [H, BS] dot, and per (head, row) the
tile's max logit c and sum of exp(logit - c) over its visible keys (c = MASK_VALUE, sum 0 when
none is visible). `fold_max_triton` combines the tiles in jnp (log-sum-exp: m = max c,
l = sum of sum * exp(c - m)) into each row's global max m and normaliser l.
Pass 2 (`_fold_kernel`), one program per key tile: for each kv head in turn the same logits
again, p = exp(logit - m) / l (0 where masked), the max over the G heads of the group, then
over the kv heads, then with the running max tile; it writes the new running max [Tp, BS].

Layout: rows of a kv head are stacked head-major, r = g * Tp + t (R = G * Tp rows, Tp = the
next power of two >= T, raised so that R >= 16: Triton shapes are powers of two and its dot
wants 16 rows); pad rows get query position int32 min, so they see no key. q [K, R, H],
k [S, K, H] read in place (the last tile's rows past S are masked loads, never padded copies),
k_pos padded to a whole number of tiles with PAD_POSITION, running max [Tp, Sp] (a copy only
when T or S is ragged: Qwen3-0.6B's T = 8, G = 2 and a bucketed S, a multiple of 128, need
none).

Numerics: logits accumulate in float32 from the inputs' dtype (bf16 x bf16 products are exact
in float32, so only the summation order differs from XLA's einsum; float32 inputs use
Precision.HIGHEST, as tail_probs does); the softmax is float32. Masked keys get probability
exactly 0, as in the reference. Not yet timed on a GPU: FOLD_TILES are untuned guesses.

Limits: G = N // K and H powers of two, H >= 16 (Triton dot); every row must see at least one
key (as tail_probs requires; a row that sees none gets 0 here, 1/S there); an sm_80+ GPU or
interpret=True.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pflash_jax.numerics import MASK_VALUE, SOFTMAX_DTYPE

# Key position given to the keys past S of the last tile (as drafter.PAD_POSITION: later than
# every query) and query position of the pad rows (earlier than every key).
_LATEST = jnp.iinfo(jnp.int32).max
_EARLIEST = jnp.iinfo(jnp.int32).min


@dataclasses.dataclass(frozen=True)
class FoldTiles:
    """The fold kernels' knobs. block_s: keys per tile (power of two >= 16), lowered until
    R * block_s <= max_tile (the logit tile's float32 entries, which live in registers);
    num_warps / num_stages: Triton launch parameters of both passes."""

    block_s: int = 128
    max_tile: int = 16384
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_s", "max_tile"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"FoldTiles.{name} must be a power of two >= 16, got {v}")


# Untuned: not yet timed on a GPU.
FOLD_TILES = FoldTiles()


def supports(q_tail, k) -> None:
    """Raises NotImplementedError saying why the kernels cannot take these shapes."""
    T, N, H = q_tail.shape
    K = k.shape[1]
    G = N // K
    if N % K or G & (G - 1):
        raise NotImplementedError(f"needs N // K a power of two, got N={N}, K={K}")
    if H < 16 or H & (H - 1):
        raise NotImplementedError(f"needs a head dim that is a power of two >= 16, got {H}")


def _rows(T: int, G: int) -> int:
    """Tp: rows per query head, so that R = G * Tp is a power of two >= 16."""
    return max(pl.next_power_of_2(T), -(-16 // G))


def _in_range(seq_len: int, BS: int):
    """[BS] bool: which of the tile's keys exist (only the last tile has keys past S); None
    when S is a whole number of tiles (static: then no load is masked). Read at the kernel's
    top level: the interpreter has no program_id inside a loop body."""
    if seq_len % BS == 0:
        return None
    return pl.program_id(0) * BS + jnp.arange(BS) < seq_len


def _logits(q, k_ref, kpos, qpos, in_range, *, scale: float):
    """[R, BS] float32 logits of one kv head's rows against the tile, and where they count."""
    if in_range is None:
        k = k_ref[...]
    else:  # rows past S are never read (k is not padded: that would copy it)
        k = plgpu.load(k_ref, mask=jnp.broadcast_to(in_range[:, None], k_ref.shape), other=0)
    s = plgpu.dot(q, k, trans_b=True, precision=lax.Precision.HIGHEST) * scale
    return s, kpos[None, :] <= qpos[:, None]  # keys past S carry _LATEST: never visible


def _stats_kernel(q_ref, qpos_ref, k_ref, kpos_ref, c_ref, e_ref, *, seq_len: int,
                  scale: float):
    # q_ref    [R, H]   one kv head's query rows, r = g * Tp + t
    # qpos_ref [R]      their positions (_EARLIEST on pad rows)
    # k_ref    [BS, H]  the tile's keys of this kv head (rows past S not loaded)
    # kpos_ref [BS]     their positions (_LATEST past S)
    # c_ref    [R]      out: the tile's max visible logit per row (MASK_VALUE if none)
    # e_ref    [R]      out: sum over the tile's visible keys of exp(logit - c)
    in_range = _in_range(seq_len, kpos_ref.shape[0])
    s, visible = _logits(q_ref[...], k_ref, kpos_ref[...], qpos_ref[...], in_range,
                         scale=scale)
    s = jnp.where(visible, s, MASK_VALUE)
    c = jnp.max(s, axis=1)
    c_ref[...] = c
    e_ref[...] = jnp.sum(jnp.where(visible, jnp.exp(s - c[:, None]), 0.0), axis=1)


def _fold_kernel(q_ref, qpos_ref, m_ref, l_ref, k_ref, kpos_ref, rmax_ref, out_ref, *,
                 seq_len: int, scale: float, groups: int):
    # q_ref    [K, R, H]   every kv head's query rows
    # qpos_ref [R]         their positions (_EARLIEST on pad rows)
    # m_ref    [K, R]      each row's global max logit (pass 1)
    # l_ref    [K, R]      each row's normaliser sum_j exp(logit - m)
    # k_ref    [BS, K, H]  the tile's keys, all kv heads (rows past S not loaded)
    # kpos_ref [BS]        their positions (_LATEST past S)
    # rmax_ref [Tp, BS]    the running max tile
    # out_ref  [Tp, BS]    out: the new running max tile (aliases rmax)
    K, R, _ = q_ref.shape
    qpos, kpos = qpos_ref[...], kpos_ref[...]
    in_range = _in_range(seq_len, kpos.shape[0])
    Tp = R // groups

    def head(kh, acc):
        s, visible = _logits(q_ref[kh], k_ref.at[:, kh, :], kpos, qpos, in_range, scale=scale)
        # The reference's float32 steps: exp(logit - row max) / row sum; masked keys exactly 0
        # (the pad rows' m is MASK_VALUE and l 0: where() drops their inf/nan).
        p = jnp.where(visible, jnp.exp(s - m_ref[kh][:, None]) / l_ref[kh][:, None], 0.0)
        if groups > 1:  # max over the G query heads of this kv head: rows g * Tp + t
            p = jnp.max(p.reshape(groups, Tp, p.shape[1]), axis=0)
        return jnp.maximum(acc, p)

    out_ref[...] = lax.fori_loop(0, K, head, rmax_ref[...])


@functools.partial(jax.jit, static_argnames=("interpret", "tiles"))
def fold_max_triton(running_max, q_tail, k, q_pos, k_pos, *, interpret: bool = False,
                    tiles: FoldTiles = FOLD_TILES):
    """jnp.maximum(running_max, max over heads of tail_probs(q_tail, k, q_pos, k_pos)) [T, S]
    float32, through the two kernels (module docstring). q_tail [T, N, H], k [S, K, H],
    q_pos [T], k_pos [S] int, running_max [T, S] float32."""
    T, N, H = q_tail.shape
    S, K, Hk = k.shape
    if Hk != H:
        raise ValueError(f"q_tail head dim {H} != k head dim {Hk}")
    supports(q_tail, k)
    G = N // K
    Tp = _rows(T, G)
    R = G * Tp
    BS = max(16, min(tiles.block_s, tiles.max_tile // R, pl.next_power_of_2(S)))
    n_tiles = -(-S // BS)
    Sp = n_tiles * BS
    scale = 1.0 / math.sqrt(H)
    dtype = jnp.promote_types(q_tail.dtype, k.dtype)
    k = k.astype(dtype)
    # q [T, N, H] -> [K, G, Tp, H] -> [K, R, H]: kv head kh's rows g * Tp + t.
    q = q_tail.astype(dtype).reshape(T, K, G, H).transpose(1, 2, 0, 3)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, Tp - T), (0, 0))).reshape(K, R, H)
    qpos = jnp.tile(jnp.pad(q_pos.astype(jnp.int32), (0, Tp - T), constant_values=_EARLIEST),
                    G)
    kpos = jnp.pad(k_pos.astype(jnp.int32), (0, Sp - S), constant_values=_LATEST)
    params = plgpu.CompilerParams(num_warps=tiles.num_warps, num_stages=tiles.num_stages)

    c, e = pl.pallas_call(
        functools.partial(_stats_kernel, seq_len=S, scale=scale),
        grid=(n_tiles, K),
        in_specs=[
            pl.BlockSpec((None, R, H), lambda i, h: (h, 0, 0)),
            pl.BlockSpec((R,), lambda i, h: (0,)),
            pl.BlockSpec((BS, None, H), lambda i, h: (i, h, 0)),
            pl.BlockSpec((BS,), lambda i, h: (i,)),
        ],
        out_specs=[pl.BlockSpec((None, None, R), lambda i, h: (i, h, 0))] * 2,
        out_shape=[jax.ShapeDtypeStruct((n_tiles, K, R), SOFTMAX_DTYPE)] * 2,
        compiler_params=params,
        interpret=interpret,
        name="pflash_fold_stats",
    )(q, qpos, k, kpos)
    # Log-sum-exp combine over tiles. A tile that sees nothing (c = MASK_VALUE, e = 0) adds
    # exactly 0; a row that sees nothing at all keeps m = MASK_VALUE, l = 0.
    m = jnp.max(c, axis=0)
    l = jnp.sum(e * jnp.exp(c - m), axis=0)

    rmax = running_max.astype(SOFTMAX_DTYPE)
    if (Tp, Sp) != (T, S):
        rmax = jnp.pad(rmax, ((0, Tp - T), (0, Sp - S)))
    out = pl.pallas_call(
        functools.partial(_fold_kernel, seq_len=S, scale=scale, groups=G),
        grid=(n_tiles,),
        in_specs=[
            pl.BlockSpec((K, R, H), lambda i: (0, 0, 0)),
            pl.BlockSpec((R,), lambda i: (0,)),
            pl.BlockSpec((K, R), lambda i: (0, 0)),
            pl.BlockSpec((K, R), lambda i: (0, 0)),
            pl.BlockSpec((BS, K, H), lambda i: (i, 0, 0)),
            pl.BlockSpec((BS,), lambda i: (i,)),
            pl.BlockSpec((Tp, BS), lambda i: (0, i)),
        ],
        out_specs=pl.BlockSpec((Tp, BS), lambda i: (0, i)),
        out_shape=jax.ShapeDtypeStruct((Tp, Sp), SOFTMAX_DTYPE),
        input_output_aliases={6: 0},
        compiler_params=params,
        interpret=interpret,
        name="pflash_fold_max",
    )(q, qpos, m, l, k, kpos, rmax)
    return out if (Tp, Sp) == (T, S) else out[:T, :S]
