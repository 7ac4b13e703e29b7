"""The PFlash pipeline: drafter scoring -> span selection -> target prefill of kept spans -> decode.

    result = speculative_prefill(drafter, target, ids, preset("pflash"), max_new_tokens=16)
    result.kept_positions, result.tokens, result.timings

Design choices:
- Fused scoring (DESIGN 1, 1.2): the drafter's layer scan computes, per layer, only the tail
  queries' softmax over all keys and folds it into a running max [n_tail, S]; no per-layer K/V is
  kept and the drafter runs no LM head. The last layer stops after its q/k (its attention and
  MLP cannot change the scores). Look-ahead mode (SpecPrefill) is the exception: it needs the
  drafter's KV cache to generate, so it keeps one (see `_lookahead_importance`).
- Drafter attention is block-sparse (select_blocks + kernel, every layer, per head) unless
  `attention_impl="dense"`. "auto" picks the Mosaic kernel on Hopper (16-bit inputs), the Triton
  kernel on other GPUs and the reference on CPU.
- The target prefills the kept tokens at their original positions (or renumbered 0..K-1), as
  one square causal attention call: kept positions are sorted, so index causality is position
  causality. Greedy decode continues at the last position + 1, + 2, ...
- Shape buckets: the target's kept length is padded up to a bucket (pad tokens go after the
  real ones, so causality keeps them out of every real row; the cache length is set to the real
  count so decode never sees them). The drafter pads S to a multiple of its block size only:
  block selection's structural rules (last query blocks dense) refer to the real end.
- Timing: each stage is synchronised (block_until_ready) before its clock stops. The stages are
  drafter_forward (layer scan incl. per-layer score folds), scoring (mean over tail rows,
  pooling, span scores), selection (budget, forced spans, kept positions), target_prefill, and
  first_token (argmax of the last kept token's logits, on the host). Compile time shows up on a
  first call only; benchmarks call twice and report both.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.attention import block_sparse_attention, dense_attention
from pflash_jax.attention.api import resolve_sparse
from pflash_jax.attention.selection import select_blocks, select_blocks_fixed_density
from pflash_jax.models import qwen3
from pflash_jax.models.qwen3 import KVCache, embed, final_logits, layer_finish, layer_qkv
from pflash_jax.pflash.config import PFlashConfig, ScoringConfig
from pflash_jax.pflash.scoring import fold_layer, importance, init_running_max
from pflash_jax.pflash.spans import kept_positions, select_spans, span_scores, target_positions

_importance = jax.jit(importance, static_argnames=("cfg",))
STAGES = ("drafter_forward", "scoring", "selection", "target_prefill", "first_token")
_PAD_POS = np.iinfo(np.int32).max  # position of padded keys: later than every query


@dataclasses.dataclass
class PFlashResult:
    kept_positions: np.ndarray  # int32 [K] sorted original positions of the kept tokens
    tokens: np.ndarray  # int32 [max_new_tokens] greedy continuation (tokens[0] ends TTFT)
    timings: dict  # stage -> seconds, plus "ttft" (sum of STAGES) and "decode"
    importance: np.ndarray  # float32 [S] drafter importance per prompt token
    block_density: float | None  # mean kept fraction of causal blocks in the drafter (None: dense)

    @property
    def n_kept(self) -> int:
        return int(self.kept_positions.shape[0])


@dataclasses.dataclass
class FullResult:
    tokens: np.ndarray
    timings: dict  # target_prefill, first_token, ttft, decode


# ---------------------------------------------------------------- shape buckets
def bucket(n: int, minimum: int = 256) -> int:
    """Round n up so at most ~1/8 of a bucket is padding: steps of 2^(floor(log2 n) - 3)."""
    if n <= minimum:
        return minimum
    step = max(minimum, 1 << (int(math.log2(n)) - 3))
    return -(-n // step) * step


def check_inputs(drafter, target, ids, cfg: PFlashConfig, *, max_new_tokens: int = 1,
                  chunk: int | None = None) -> np.ndarray:
    """Every problem with one PFlash call, reported together; returns the ids as int32."""
    problems = []
    try:
        ids = qwen3.check_ids(ids, min(drafter.config.vocab_size, target.config.vocab_size))
    except ValueError as e:
        raise ValueError(f"speculative_prefill: {e}") from None
    S = ids.shape[0]
    if ids.ndim != 1:
        problems.append(f"ids must be a 1-D prompt, got shape {ids.shape}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        problems.append(f"max_new_tokens must be an int >= 1 (the first token ends TTFT), "
                        f"got {max_new_tokens!r}")
    try:
        qwen3.check_chunk(chunk)
    except ValueError as e:
        problems.append(str(e))
    if drafter.config.vocab_size != target.config.vocab_size:
        problems.append(f"drafter and target vocabularies differ ({drafter.config.vocab_size} "
                        f"vs {target.config.vocab_size}): they must share one tokenizer")
    if S < cfg.selection.span_size:
        problems.append(f"prompt has {S} tokens, shorter than one span "
                        f"(selection.span_size={cfg.selection.span_size})")
    if S < cfg.scoring.n_tail:
        problems.append(f"prompt has {S} tokens, shorter than the tail "
                        f"(scoring.n_tail={cfg.scoring.n_tail})")
    for name, m in (("drafter", drafter), ("target", target)):
        limit = m.config.max_position_embeddings
        if S > limit:
            problems.append(f"prompt has {S} tokens, more than the {name}'s "
                            f"max_position_embeddings={limit}; nothing is truncated silently "
                            f"(for longer prompts enable YaRN: {name}.yarn=true)")
    if problems:
        raise ValueError("speculative_prefill: " + "; ".join(problems))
    return ids


# ---------------------------------------------------------------- drafter
def resolve_impl(impl: str, dtype=None) -> str:
    """The drafter attention `impl` means here: "dense" stays, anything else is a block-sparse
    kernel resolved by `attention.api.resolve_sparse` (the one place "auto" is decided)."""
    return impl if impl == "dense" else resolve_sparse(impl, dtype)


def drafter_attention(cfg: PFlashConfig):
    """(q, k, v) -> (o, density) for one layer of the drafter (DESIGN 1.1)."""
    if cfg.attention_impl == "dense":
        return lambda q, k, v: (dense_attention(q, k, v, impl="auto"), jnp.float32(1.0))

    def attn(q, k, v):
        if cfg.block_density is not None:
            mask = select_blocks_fixed_density(q, k, density=cfg.block_density,
                                               block_size=cfg.block_size)
        else:
            mask = select_blocks(q, k, alpha=cfg.alpha, block_size=cfg.block_size)
        o = block_sparse_attention(q, k, v, mask, impl=cfg.attention_impl,
                                   block_size=cfg.block_size)
        return o, mask.density()
    return attn


def layer_qkv_chunked(layer, x, rope, mcfg, chunk):
    """layer_qkv over sequence chunks with RoPE tables (cos, sin) built once by the caller."""
    cos, sin = rope
    return qwen3._chunked(lambda xc, cc, sc: layer_qkv(layer, xc, None, mcfg, rope=(cc, sc)),
                          chunk, x, cos, sin)


def layer_finish_chunked(layer, x, o, mcfg, chunk):
    return qwen3._chunked(lambda xc, oc: layer_finish(layer, xc, oc, mcfg), chunk, x, o)


def _scoring_qk(qkv, rope: str):
    return (qkv.q_pre, qkv.k_pre) if rope == "nope" else (qkv.q, qkv.k)


@partial(jax.jit, static_argnames=("mcfg", "pcfg", "chunk"))
def drafter_scores(params, mcfg, ids, length, pcfg: PFlashConfig, chunk=None):
    """Fused drafter pass. ids [1, Sb] (padded), length = real S (traced) ->
    (running max float32 [n_tail, Sb], mean block density over the drafter's layers)."""
    scfg: ScoringConfig = pcfg.scoring
    Sb = ids.shape[1]
    T = scfg.n_tail
    positions = jnp.arange(Sb, dtype=jnp.int32)[None]
    k_pos = jnp.where(positions[0] < length, positions[0], _PAD_POS)
    q_pos = length - T + jnp.arange(T, dtype=jnp.int32)
    attn = drafter_attention(pcfg)
    rope = qwen3.rope_tables(mcfg, positions)  # once, outside the layer scan

    def qkv_of(layer, x):
        return layer_qkv_chunked(layer, x, rope, mcfg, chunk)

    def fold(rmax, qkv):
        qs, ks = _scoring_qk(qkv, scfg.rope)
        q_tail = jax.lax.dynamic_slice_in_dim(qs[0], length - T, T, axis=0)
        return fold_layer(rmax, q_tail, ks[0], q_pos, k_pos, scfg)

    def body(carry, layer):
        x, rmax, dens = carry
        qkv = qkv_of(layer, x)
        rmax = fold(rmax, qkv)
        o, d = attn(qkv.q, qkv.k, qkv.v)
        x = layer_finish_chunked(layer, x, o, mcfg, chunk)
        return (x, rmax, dens + d), None

    L = mcfg.num_hidden_layers
    head = jax.tree.map(lambda a: a[:-1], params.layers)
    last = jax.tree.map(lambda a: a[-1], params.layers)
    rmax0 = init_running_max(T, Sb)
    (x, rmax, dens), _ = jax.lax.scan(body, (embed(params, ids), rmax0, jnp.float32(0)), head)
    rmax = fold(rmax, qkv_of(last, x))  # the last layer contributes only its scores
    return rmax, dens / max(L - 1, 1)


# ---------------------------------------------------------------- target
@partial(jax.jit, static_argnames=("cfg", "attn", "chunk", "cache_len"))
def prefill_at(params, cfg, ids, positions, length, *, attn, chunk=None, cache_len=None):
    """Prefill padded ids [1, Tb] at positions; logits of row length-1 and a cache filled to
    `length` (padding rows sit after every real row, so causality keeps them out)."""
    x, cache = qwen3._run_layers(params, cfg, embed(params, ids), positions, attn, chunk,
                                 cache_len)
    last = jax.lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)
    return final_logits(params, cfg, last), KVCache(cache.k, cache.v, length.astype(jnp.int32))


def _prefill_and_decode(target, ids, positions, max_new_tokens, chunk, timings, attn=None,
                        eos_id=None):
    """Shared tail of both paths: prefill (timed), first token (timed), decode (timed)."""
    n = ids.shape[0]
    nb = bucket(n)
    ids_p = np.zeros(nb, np.int32)
    ids_p[:n] = ids
    pos_p = np.empty(nb, np.int32)
    pos_p[:n] = positions
    pos_p[n:] = positions[-1] + 1 + np.arange(nb - n)  # increasing, never read by real rows
    cfg = target.config
    t0 = time.perf_counter()
    lg, cache = prefill_at(target.params, cfg, jnp.asarray(ids_p)[None], jnp.asarray(pos_p)[None],
                           jnp.int32(n), attn=attn or "auto", chunk=chunk,
                           cache_len=nb + max(max_new_tokens - 1, 0))
    jax.block_until_ready(lg)
    t1 = time.perf_counter()
    tok = int(np.argmax(np.asarray(lg[0])))
    t2 = time.perf_counter()
    timings.update(target_prefill=t1 - t0, first_token=t2 - t1)
    out, pos = [tok], int(positions[-1])
    for _ in range(max_new_tokens - 1):
        if tok == eos_id:
            break
        pos += 1
        lg, cache = qwen3.decode_jit(target.params, cfg, jnp.asarray([tok], jnp.int32),
                                     jnp.asarray([pos], jnp.int32), cache)
        tok = int(np.argmax(np.asarray(lg[0])))
        out.append(tok)
    timings["decode"] = time.perf_counter() - t2
    return np.asarray(out, np.int32)


def full_prefill(target, ids, *, max_new_tokens: int = 1, chunk: int | None = None,
                 attn: str | None = None, eos_id: int | None = None) -> FullResult:
    """The baseline: prefill of all S tokens (dense attention "auto": Mosaic on Hopper, cuDNN on
    other GPUs), then greedy decode (stopping after eos_id when given)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ValueError(f"full_prefill: max_new_tokens must be an int >= 1, got "
                         f"{max_new_tokens!r}")
    qwen3.check_chunk(chunk)
    ids = qwen3.check_ids(ids, target.config.vocab_size, "full_prefill: ids")
    timings: dict = {}
    tokens = _prefill_and_decode(target, ids, np.arange(ids.shape[0], dtype=np.int32),
                                 max_new_tokens, chunk, timings, attn, eos_id)
    timings["ttft"] = timings["target_prefill"] + timings["first_token"]
    return FullResult(tokens, timings)


# ---------------------------------------------------------------- the pipeline
def _lookahead_importance(drafter, ids: np.ndarray, cfg: PFlashConfig, chunk):
    """SpecPrefill look-ahead: queries of the last prompt token and n_tail - 1 greedily
    generated drafter tokens, each over the prompt keys of every layer. Keeps the drafter's
    KV cache (SpecPrefill does too) and the scoring keys of every layer."""
    from pflash_jax.pflash.lookahead import lookahead_running_max

    return lookahead_running_max(drafter, ids, cfg, chunk=chunk)


@dataclasses.dataclass
class DrafterPass:
    """What the drafter contributes, before any span choice: per-token importance. Span size
    and keep ratio only act after it, so a sweep over them reuses one pass per prompt."""

    importance: np.ndarray  # float32 [S]
    block_density: float | None  # mean kept fraction of causal blocks (None: dense drafter)
    timings: dict  # drafter_forward, importance (the scoring stage before span pooling)


def drafter_pass(drafter, ids, cfg: PFlashConfig, *, chunk: int | None = None) -> DrafterPass:
    """The drafter stage of PFlash on one prompt (1-D ids): forward + token importance."""
    ids = np.asarray(ids, np.int32)
    S = ids.shape[0]
    t0 = time.perf_counter()
    if cfg.scoring.tail_mode == "lookahead":
        rmax, density, Sb = _lookahead_importance(drafter, ids, cfg, chunk)
    else:
        Sb = -(-S // cfg.block_size) * cfg.block_size
        ids_p = np.zeros(Sb, np.int32)
        ids_p[:S] = ids
        rmax, density = drafter_scores(drafter.params, drafter.config, jnp.asarray(ids_p)[None],
                                       jnp.int32(S), cfg, chunk=chunk)
    jax.block_until_ready(rmax)
    t1 = time.perf_counter()
    imp = np.asarray(_importance(rmax, cfg.scoring, length=jnp.int32(S)))[:S]
    t2 = time.perf_counter()
    # None when no layer ran block-sparse attention: a dense drafter, or a 1-layer drafter
    # (its only layer contributes Q/K to the scores and runs no attention at all).
    sparse = (density is not None and cfg.attention_impl != "dense"
              and drafter.config.num_hidden_layers > 1)
    dens = float(density) if sparse else None
    return DrafterPass(imp, dens, {"drafter_forward": t1 - t0, "importance": t2 - t1})


def prefill_selected(target, ids, dp: DrafterPass, cfg: PFlashConfig, *,
                     max_new_tokens: int = 1, chunk: int | None = None,
                     target_attn: str | None = None,
                     eos_id: int | None = None) -> PFlashResult:
    """The rest of PFlash given a drafter pass: span scores, selection under cfg.selection,
    target prefill of the kept tokens, greedy decode. Timings count the drafter pass too."""
    ids = np.asarray(ids, np.int32)
    S = ids.shape[0]
    timings = {"drafter_forward": dp.timings["drafter_forward"]}
    t1 = time.perf_counter()
    scores = span_scores(dp.importance, cfg.selection.span_size)
    t2 = time.perf_counter()
    kept = kept_positions(select_spans(scores, cfg.selection), cfg.selection.span_size, S)
    t3 = time.perf_counter()
    timings.update(scoring=dp.timings["importance"] + t2 - t1, selection=t3 - t2)
    positions = target_positions(kept, cfg.selection.positions)
    tokens = _prefill_and_decode(target, ids[kept], positions, max_new_tokens, chunk, timings,
                                 target_attn, eos_id)
    timings["ttft"] = sum(timings[s] for s in STAGES)
    return PFlashResult(kept, tokens, timings, dp.importance, dp.block_density)


def speculative_prefill(drafter, target, ids, cfg: PFlashConfig, *, max_new_tokens: int = 1,
                        chunk: int | None = None, target_attn: str | None = None,
                        eos_id: int | None = None) -> PFlashResult:
    """Run PFlash on one prompt (1-D ids): `drafter_pass` then `prefill_selected`. See the
    module docstring for stages and choices. Greedy decoding stops after eos_id when given
    (tokens then ends with it)."""
    ids = check_inputs(drafter, target, ids, cfg, max_new_tokens=max_new_tokens, chunk=chunk)
    dp = drafter_pass(drafter, ids, cfg, chunk=chunk)
    return prefill_selected(target, ids, dp, cfg, max_new_tokens=max_new_tokens, chunk=chunk,
                            target_attn=target_attn, eos_id=eos_id)
