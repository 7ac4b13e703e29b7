"""The drafter stage of PFlash: one forward over the prompt -> per-token importance.

    dp = drafter_pass(drafter, ids, preset("pflash"))   # dp.importance float32 [S]

Design choices:
- Fused scoring (docs/design.md 1, 1.2): the drafter runs the model's one layer scan
  (`qwen3.scan_layers`) with a per-layer hook that folds the tail queries' softmax over all keys
  into a running max [n_tail, S]; no per-layer K/V is kept and the drafter runs no LM head. The
  last layer stops after its q/k (its attention and MLP cannot change the scores).
- Drafter attention is block-sparse (select_blocks + kernel, every layer, per head) unless
  `attention_impl="dense"`; "auto" is resolved by `attention.api.resolve_sparse`.
- The drafter pads S to a multiple of its block size only: block selection's structural rules
  (last query blocks dense) refer to the real end; padded keys sit at a position later than
  every query (PAD_POSITION) so causality keeps them out of every score.
- Look-ahead mode (SpecPrefill, `tail_mode="lookahead"`): tail queries = the last prompt token +
  n_tail - 1 greedily generated drafter tokens. Three steps: a prefill that keeps a KV cache and
  every layer's scoring keys and folds the last prompt token's query; greedy decode of n_tail - 2
  more tokens; one "extend" pass feeding the generated tokens at positions S, S+1, ... against
  the prompt cache (`qwen3.cached_attention`), folding each layer's new queries over the prompt
  keys only. It keeps O(L * S) memory (SpecPrefill's own design): it reproduces that system and
  is not our default.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.attention import block_sparse_attention, dense_attention
from pflash_jax.attention.api import FP8_MAX, resolve_sparse
from pflash_jax.attention.selection import select_blocks, select_blocks_fixed_density
from pflash_jax.models import quant, qwen3
from pflash_jax.models.qwen3 import KVCache, embed, final_logits
from pflash_jax.pflash.config import PFlashConfig, ScoringConfig
from pflash_jax.pflash.importance import fold_layer, importance, init_running_max

_importance = jax.jit(importance, static_argnames=("cfg",))
# Every drafter jit is a quant.FormatJits pair: an fp8 (W8A8) drafter compiles with
# quant.FP8_COMPILER_OPTIONS (XLA's fp8 GEMM autotuning stall), others at XLA's defaults.


# The drafter's q/k/v GEMMs: [Wq|Wk] as one and Wv apart, so v (read by the block-sparse kernel,
# which needs it contiguous) is not copied out of a fused output: 4.0 ms less over Qwen3-0.6B's
# 28 layers at 128K on an H200 (results/bench_layers_h200; qwen3.layer_qkv's fuse_qkv).
DRAFTER_FUSE_QKV = "qk"
PAD_POSITION = np.iinfo(np.int32).max  # position of padded keys: later than every query
# Not donating: the prompt cache is read again by the extend pass after decoding.
_decode = quant.format_jits(qwen3.decode, static_argnames=("cfg",))


def resolve_impl(impl: str, dtype=None) -> str:
    """The drafter attention `impl` means here: "dense" stays, anything else is a block-sparse
    kernel resolved by `attention.api.resolve_sparse` (the one place "auto" is decided)."""
    return impl if impl == "dense" else resolve_sparse(impl, dtype)


class LayerExtra(NamedTuple):
    """What the drafter's layer scan passes each layer besides its weights (`per_layer`)."""

    index: jax.Array  # int32: the layer's number (skip_layers)
    qk_scales: jax.Array | None = None  # float32 [2]: fp8 Q/K scales (attention_qk="fp8")


# Rounding slack on the bound: rms_norm rounds its normalised vector to the model's dtype
# before the weight multiplies it, which can land a few ulps over max|w| sqrt(H).
QK_BOUND_SLACK = 1.02


def qk_fp8_scales(params, mcfg) -> jax.Array:
    """float32 [L, 2]: per layer, the scales (a, b) that map the drafter's post-RoPE q and k
    into e4m3's range (attention_qk="fp8"). After RMSNorm an element is at most sqrt(H) in
    magnitude (the normalised vector's squares sum to H), times max|w| of q_norm / k_norm; RoPE
    rotates pairs (norm-preserving) and multiplies by YaRN's attention factor. So
    |q| <= max|w_q| sqrt(H) factor: from the weights, no pass over q or k."""
    _, factor = mcfg.rope_inv_freq()
    bound = math.sqrt(mcfg.head_dim) * float(factor) * QK_BOUND_SLACK / FP8_MAX
    w = [jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1)
         for x in (params.layers.q_norm, params.layers.k_norm)]
    return jnp.stack(w, axis=-1) * bound


def layer_extras(params, mcfg, cfg: PFlashConfig) -> LayerExtra:
    """The drafter scan's per_layer: every layer's LayerExtra, stacked."""
    scales = qk_fp8_scales(params, mcfg) if cfg.attention_qk == "fp8" else None
    return LayerExtra(jnp.arange(mcfg.num_hidden_layers, dtype=jnp.int32), scales)


def drafter_attention(cfg: PFlashConfig):
    """attn(qkv, extra: LayerExtra) -> (o, block density) for one drafter layer (docs/design.md
    1.1), in the shape `qwen3.scan_layers` takes."""
    if cfg.attention_impl == "dense":
        return lambda qkv, _: (dense_attention(qkv.q, qkv.k, qkv.v, impl="auto"),
                               jnp.float32(1.0))

    def attn(qkv, extra):
        q, k, v = qkv.q, qkv.k, qkv.v
        if cfg.block_density is not None:
            mask = select_blocks_fixed_density(q, k, density=cfg.block_density,
                                               block_size=cfg.block_size)
        else:
            mask = select_blocks(q, k, alpha=cfg.alpha, block_size=cfg.block_size)
        fp8 = None
        if cfg.attention_qk == "fp8":
            fp8 = (extra.qk_scales[0], extra.qk_scales[1])
        o = block_sparse_attention(q, k, v, mask, impl=cfg.attention_impl,
                                   block_size=cfg.block_size, qk_fp8_scales=fp8,
                                   v_fp8=cfg.attention_pv == "fp8")
        return o, mask.density()
    return attn


def scoring_qk(qkv: qwen3.QKV, rope: str):
    """The q/k scores are computed from: pre-RoPE ("nope") or post-RoPE ("post")."""
    return (qkv.q_pre, qkv.k_pre) if rope == "nope" else (qkv.q, qkv.k)


def _key_positions(Sb: int, length):
    k = jnp.arange(Sb, dtype=jnp.int32)
    return jnp.where(k < length, k, PAD_POSITION)


# ---------------------------------------------------------------- tail mode
def drafter_scores(params, mcfg, ids, length, pcfg: PFlashConfig, chunk=None):
    """Fused drafter pass. ids [1, Sb] (padded), length = real S (traced) ->
    (running max float32 [n_tail, Sb], mean block density over the drafter's layers)."""
    scfg: ScoringConfig = pcfg.scoring
    params, mcfg = first_layers(params, mcfg, scfg.score_layers)
    Sb = ids.shape[1]
    T = scfg.n_tail
    positions = jnp.arange(Sb, dtype=jnp.int32)[None]
    k_pos = _key_positions(Sb, length)
    q_pos = length - T + jnp.arange(T, dtype=jnp.int32)

    def fold(rmax, qkv, extra):
        qs, ks = scoring_qk(qkv, scfg.rope)
        q_tail = jax.lax.dynamic_slice_in_dim(qs[0], length - T, T, axis=0)
        new = fold_layer(rmax, q_tail, ks[0], q_pos, k_pos, scfg)
        # skip_layers: the first layers run but do not vote (SpecPC)
        return (new if not scfg.skip_layers
                else jnp.where(extra.index >= scfg.skip_layers, new, rmax)), None

    out = qwen3.scan_layers(params, mcfg, embed(params, ids), positions,
                            drafter_attention(pcfg), chunk=chunk, hook=fold,
                            state=init_running_max(T, Sb), last_qkv_only=True,
                            fuse_qkv=DRAFTER_FUSE_QKV,
                            per_layer=layer_extras(params, mcfg, pcfg))
    L = mcfg.num_hidden_layers
    return out.state, jnp.sum(out.attn_out) / max(L - 1, 1)


_drafter_scores = quant.format_jits(drafter_scores, static_argnames=("mcfg", "pcfg", "chunk"))
drafter_scores = _drafter_scores.plain


def scores_jit(params):
    """The jitted `drafter_scores` for a drafter's params (fp8: FP8_COMPILER_OPTIONS)."""
    return _drafter_scores.of(params)


def first_layers(params, mcfg, k: int | None):
    """(params, config) of the drafter's first k layers (early-exit scoring); k None: as is.
    Slicing the stacked layer tensors inside the jit reads only those layers' weights."""
    if k is None or k == mcfg.num_hidden_layers:
        return params, mcfg
    if k > mcfg.num_hidden_layers:
        raise ValueError(f"scoring.score_layers={k} but the drafter has "
                         f"{mcfg.num_hidden_layers} layers")
    layers = jax.tree.map(lambda a: a[:k], params.layers)
    return (dataclasses.replace(params, layers=layers),
            dataclasses.replace(mcfg, num_hidden_layers=k))


# ---------------------------------------------------------------- look-ahead mode
def prefill_keep(params, mcfg, ids, length, pcfg: PFlashConfig, chunk, cache_len):
    """Look-ahead step 1: prefill ids [1, Sb] keeping a KV cache (capacity cache_len) and every
    layer's scoring keys, folding the last prompt token's query ->
    (last logits, cache, scoring keys [L, Sb, K, H], running max [1, Sb], mean density)."""
    scfg = pcfg.scoring
    Sb = ids.shape[1]
    positions = jnp.arange(Sb, dtype=jnp.int32)[None]
    k_pos = _key_positions(Sb, length)
    q_pos = (length - 1)[None]

    def fold_and_keep(rmax, qkv, _):
        qs, ks = scoring_qk(qkv, scfg.rope)
        q_last = jax.lax.dynamic_slice_in_dim(qs[0], length - 1, 1, axis=0)
        rmax = fold_layer(rmax, q_last, ks[0], q_pos, k_pos, scfg)
        pad = [(0, 0), (0, cache_len - Sb), (0, 0), (0, 0)]
        return rmax, (jnp.pad(qkv.k, pad), jnp.pad(qkv.v, pad), ks[0])

    out = qwen3.scan_layers(params, mcfg, embed(params, ids), positions,
                            drafter_attention(pcfg), chunk=chunk, hook=fold_and_keep,
                            state=init_running_max(1, Sb), fuse_qkv=DRAFTER_FUSE_QKV,
                            per_layer=layer_extras(params, mcfg, pcfg))
    k, v, ks = out.hook_out
    last = jax.lax.dynamic_index_in_dim(out.x, length - 1, axis=1, keepdims=False)
    cache = KVCache(k, v, length.astype(jnp.int32))
    density = jnp.sum(out.attn_out) / mcfg.num_hidden_layers
    return final_logits(params, mcfg, last), cache, ks, out.state, density


def extend_scores(params, mcfg, new_ids, cache: KVCache, ks, length, rmax, pcfg: PFlashConfig):
    """Look-ahead step 3: fold the generated tokens' queries (positions length, length+1, ...)
    over the prompt keys into rmax; they attend to the prompt cache and causally each other."""
    scfg = pcfg.scoring
    T = new_ids.shape[1]
    Sb = ks.shape[1]
    positions = (length + jnp.arange(T, dtype=jnp.int32))[None]
    k_pos = _key_positions(Sb, length)

    def fold(r, qkv, extra):
        qs, _ = scoring_qk(qkv, scfg.rope)
        return fold_layer(r, qs[0], extra[2], positions[0], k_pos, scfg), None

    def attend(qkv, extra):
        kc, vc, _ = extra
        return qwen3.cached_attention(qkv.q, kc[:, :Sb], vc[:, :Sb], qkv.k, qkv.v,
                                      length), None

    out = qwen3.scan_layers(params, mcfg, embed(params, new_ids), positions, attend, hook=fold,
                            state=rmax, per_layer=(cache.k, cache.v, ks))
    return out.state


_prefill_keep = quant.format_jits(prefill_keep,
                                  static_argnames=("mcfg", "pcfg", "chunk", "cache_len"))
_extend_scores = quant.format_jits(extend_scores, static_argnames=("mcfg", "pcfg"))
prefill_keep = _prefill_keep.plain


def prefill_keep_jit(params):
    """The jitted `prefill_keep` for a drafter's params (fp8: FP8_COMPILER_OPTIONS)."""
    return _prefill_keep.of(params)


def lookahead_running_max(drafter, ids: np.ndarray, cfg: PFlashConfig, *, chunk=None):
    """-> (running max [n_tail, Sb], mean block density, Sb) for `drafter_pass`."""
    S = ids.shape[0]
    n_gen = cfg.scoring.n_tail - 1
    Sb = -(-S // cfg.block_size) * cfg.block_size
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = ids
    mcfg, params = drafter.config, drafter.params
    length = jnp.int32(S)
    prefill, decode, extend = (j.of(params) for j in (_prefill_keep, _decode, _extend_scores))
    lg, cache, ks, rmax_last, dens = prefill(
        params, mcfg, jnp.asarray(ids_p)[None], length, cfg, chunk, Sb + max(n_gen, 1))
    if n_gen == 0:
        return rmax_last, dens, Sb
    gen = [int(jnp.argmax(lg[0]))]
    dec_cache = cache
    for i in range(n_gen - 1):
        lg, dec_cache = decode(params, mcfg, jnp.asarray(gen[-1:], jnp.int32),
                               jnp.asarray([S + i], jnp.int32), dec_cache)
        gen.append(int(jnp.argmax(lg[0])))
    rmax_gen = extend(params, mcfg, jnp.asarray(gen, jnp.int32)[None], cache, ks, length,
                      init_running_max(n_gen, Sb), cfg)
    return jnp.concatenate([rmax_gen, rmax_last], axis=0), dens, Sb


# ---------------------------------------------------------------- question-aware tail rows
def question_first_row(tail_ids: np.ndarray, tokenizer, lines: int) -> int:
    """The first of the tail rows (tokens `tail_ids`, the prompt's last ones) that belongs to the
    question: the prompt's last `lines` non-blank lines. A token that holds the line break and
    the question's first characters counts as the question's. 0 when the tail holds fewer line
    breaks (the question is at least as long as the tail: every row votes)."""
    texts = [tokenizer.decode([int(i)]) for i in tail_ids]
    text = "".join(texts)
    ends = np.cumsum([len(t) for t in texts])  # ends[i]: end of token i in text
    seen, pos = 0, len(text.rstrip())  # the trailing blank is not a line
    while seen < lines:
        nl = text.rfind("\n", 0, pos)
        if nl < 0:
            return 0
        if text[nl + 1:pos].strip():  # a non-blank line starts at nl + 1
            seen += 1
        pos = nl
    start = pos + 1  # the first character of the question's first line
    return int(np.searchsorted(ends, start, side="right"))


def template_tail_lines(tokenizer, after: str) -> int:
    """The non-blank lines that a chat template's text after the user message (`after`, its
    generation prompt included) puts between the question and the prompt's end, as
    question_first_row sees them (each token decoded on its own). Its first piece ends the
    user message's last line, so only the lines that start after one of its line breaks count
    (Qwen3, thinking off: "<|im_start|>assistant", "<think>", "</think>": 3).
    task.prompt_format=chat adds them to question_lines, so that the question rows are the
    question's and not the template's."""
    text = "".join(tokenizer.decode([int(i)]) for i in tokenizer.encode(after))
    return sum(1 for line in text.split("\n")[1:] if line.strip())


def tail_row_weights(drafter, ids: np.ndarray, cfg: PFlashConfig):
    """The tail rows' weights for `importance` when they depend on the prompt, float32 [T]; None
    when they do not (uniform or linear rows, weighted inside the jit):
    - tail_rows="question": rows before the question's first row weigh 0;
    - tail_weights="rarity": row t weighs log(1 + S / c_t), c_t = how often its token occurs in
      the prompt (a question's key is rare, its template words recur in every needle);
    - "linear" with question rows: t + 1 on the rows that vote."""
    scfg = cfg.scoring
    if scfg.tail_rows == "last" and scfg.tail_weights != "rarity":
        return None
    T, S = scfg.n_tail, ids.shape[0]
    tail = ids[S - T:]
    w = (np.arange(1, T + 1, dtype=np.float64) if scfg.tail_weights == "linear"
         else np.ones(T))
    if scfg.tail_weights == "rarity":
        vals, counts = np.unique(ids, return_counts=True)
        w *= np.log1p(S / counts[np.searchsorted(vals, tail)])
    if scfg.tail_rows == "question":
        if drafter.tokenizer is None:
            raise ValueError("scoring tail_rows='question' needs the drafter's tokenizer "
                             "(tokenizer.json beside its checkpoint) to find the question's "
                             "lines")
        w[:question_first_row(tail, drafter.tokenizer, scfg.question_lines)] = 0.0
    return jnp.asarray(w, jnp.float32)


# ---------------------------------------------------------------- the stage
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
        rmax, density, Sb = lookahead_running_max(drafter, ids, cfg, chunk=chunk)
    else:
        Sb = -(-S // cfg.block_size) * cfg.block_size
        ids_p = np.zeros(Sb, np.int32)
        ids_p[:S] = ids
        rmax, density = scores_jit(drafter.params)(drafter.params, drafter.config,
                                                   jnp.asarray(ids_p)[None], jnp.int32(S), cfg,
                                                   chunk=chunk)
    jax.block_until_ready(rmax)
    t1 = time.perf_counter()
    imp = np.asarray(_importance(rmax, cfg.scoring, length=jnp.int32(S),
                                 row_weights=tail_row_weights(drafter, ids, cfg)))[:S]
    t2 = time.perf_counter()
    # None when no layer ran block-sparse attention: a dense drafter, or a 1-layer drafter
    # (its only layer contributes Q/K to the scores and runs no attention at all).
    ran = cfg.scoring.score_layers or drafter.config.num_hidden_layers  # layers that ran
    sparse = density is not None and cfg.attention_impl != "dense" and ran > 1
    dens = float(density) if sparse else None
    return DrafterPass(imp, dens, {"drafter_forward": t1 - t0, "importance": t2 - t1})
