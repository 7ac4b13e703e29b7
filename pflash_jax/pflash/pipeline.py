"""The PFlash pipeline: drafter scoring -> span selection -> target prefill of kept spans -> decode.

    result = speculative_prefill(drafter, target, ids, preset("pflash"), max_new_tokens=16)
    result.kept_positions, result.tokens, result.timings

Stages: `drafter.drafter_pass` (forward + token importance, see pflash/drafter.py), then
`prefill_selected` (span scores, selection, target prefill of the kept tokens, decode).

Design choices:
- The target prefills the kept tokens renumbered 0..K-1 (the default; or at their original
  positions, `selection.positions`), as one square causal attention call: kept positions are
  sorted, so index causality is position causality either way. Greedy decode continues at the
  last position + 1, + 2, ...: K, K+1, ... renumbered, S, S+1, ... original.
- Shape buckets: the target's kept length is padded up to a bucket (pad tokens go after the
  real ones, so causality keeps them out of every real row; the cache length is set to the real
  count so decode never sees them).
- Timing: each stage is synchronised (block_until_ready) before its clock stops. The stages are
  drafter_forward (layer scan incl. per-layer score folds), scoring (mean over tail rows,
  pooling, span scores), selection (anchors, budget, forced spans, kept positions),
  target_prefill, and first_token (argmax of the last kept token's logits, on the host).
  Compile time shows up on a first call only; benchmarks call twice and report both.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.models import quant, qwen3
from pflash_jax.models.qwen3 import embed, final_logits
from pflash_jax.pflash.config import PFlashConfig
from pflash_jax.pflash.drafter import DrafterPass, drafter_pass
from pflash_jax.pflash.spans import (
    anchor_spans,
    forced_spans,
    select_positions,
    span_scores,
    target_positions,
)

STAGES = ("drafter_forward", "scoring", "selection", "target_prefill", "first_token")
__all__ = ["STAGES", "DrafterPass", "FullResult", "PFlashResult", "bucket", "check_inputs",
           "drafter_pass", "full_prefill", "prefill_at", "prefill_kept", "prefill_selected",
           "speculative_prefill"]


@dataclasses.dataclass
class PFlashResult:
    kept_positions: np.ndarray  # int32 [K] sorted original positions of the kept tokens
    tokens: np.ndarray  # int32 [max_new_tokens] greedy continuation (tokens[0] ends TTFT)
    timings: dict  # stage -> seconds, plus "ttft" (sum of STAGES) and "decode"
    importance: np.ndarray  # float32 [S] drafter importance per prompt token
    block_density: float | None  # mean kept fraction of causal blocks in the drafter (None: dense)
    n_anchor_spans: int = 0  # kept spans that question n-gram anchors forced, forced head/tail
    # spans not counted (selection.anchors="none": 0)
    n_anchor_found: int = 0  # spans the anchors asked for, before the budget

    @property
    def n_kept(self) -> int:
        return int(self.kept_positions.shape[0])


@dataclasses.dataclass
class FullResult:
    tokens: np.ndarray
    timings: dict  # target_prefill, first_token, ttft, decode


# ---------------------------------------------------------------- shape buckets
def bucket(n: int, minimum: int = 256, granule: int = 128) -> int:
    """Round n up to a multiple of 2^(floor(log2 n) - 5), at least `granule` (the kernels'
    block): at most 1/32 of a bucket is padding from 4K tokens up (every padded token costs a
    full target-prefill row; the earlier rule, up to 1/8, padded the 6,528 kept tokens of
    128K / keep 0.05 to 6,656; 6,528 = 51 x 128 stays). Up to `minimum`: one
    bucket. 32 buckets an octave, so a sweep compiles at most that many target shapes per
    doubling of the kept count."""
    if n <= minimum:
        return minimum
    step = max(granule, 1 << (int(math.log2(n)) - 5))
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
    for check in (lambda: qwen3.check_count(max_new_tokens, "max_new_tokens",
                                            " (the first token ends TTFT)"),
                  lambda: qwen3.check_chunk(chunk)):
        try:
            check()
        except ValueError as e:
            problems.append(str(e))
    if drafter.config.vocab_size != target.config.vocab_size:
        problems.append(f"drafter and target vocabularies differ ({drafter.config.vocab_size} "
                        f"vs {target.config.vocab_size}): they must share one tokenizer")
    if S < cfg.selection.span_size:
        problems.append(f"prompt has {S} tokens, shorter than one span "
                        f"(selection.span_size={cfg.selection.span_size})")
    k = cfg.scoring.score_layers
    if cfg.scoring.skip_layers >= (k or drafter.config.num_hidden_layers):
        problems.append(f"selection.skip_layers={cfg.scoring.skip_layers} leaves no drafter "
                        f"layer to score with (it has {drafter.config.num_hidden_layers})")
    if k is not None and k > drafter.config.num_hidden_layers:
        problems.append(f"selection.score_layers={k} but the drafter has "
                        f"{drafter.config.num_hidden_layers} layers")
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


# ---------------------------------------------------------------- target
def prefill_at(params, cfg, ids, positions, length, *, attn, chunk=None, cache_len=None,
               kv_cache="bf16", fuse_qkv=True, unroll=False):
    """Prefill padded ids [1, Tb] at positions; logits of row length-1 and a cache filled to
    `length` (padding rows sit after every real row, so causality keeps them out), stored as
    `kv_cache` says (bf16 | int8 | fp8). A tensor-parallel target passes a
    `sharding.ShardedAttention` as attn and fuse_qkv=False (pflash_jax/sharding.py)."""
    x, cache = qwen3.run_layers(params, cfg, embed(params, ids), positions, attn, chunk=chunk,
                                cache_len=cache_len, kv_cache=kv_cache, fuse_qkv=fuse_qkv,
                                unroll=unroll)
    last = jax.lax.dynamic_index_in_dim(x, length - 1, axis=1, keepdims=False)
    return final_logits(params, cfg, last), cache._replace(length=length.astype(jnp.int32))


_PREFILL_STATIC = ("cfg", "attn", "chunk", "cache_len", "kv_cache", "fuse_qkv", "unroll")
# An fp8 (W8A8) target compiles with quant.FP8_COMPILER_OPTIONS in both paths (its PFlash
# prefill and the full-prefill baseline alike, so the comparison stays like for like).
_target_prefill = quant.format_jits(prefill_at, static_argnames=_PREFILL_STATIC)
prefill_at = _target_prefill.plain
_target_decode = quant.format_jits(qwen3.decode, plain=qwen3.decode_jit,
                                   static_argnames=("cfg", "kv_cache", "fuse_qkv"),
                                   donate_argnames=("cache",))


def target_jits(params):
    """(prefill, decode) jits for a target's params (fp8: FP8_COMPILER_OPTIONS)."""
    return _target_prefill.of(params), _target_decode.of(params)


# The greedy token on the device: 4 bytes to the host instead of the [V] float32 logits row
# (600 KB for Qwen3's vocabulary; first token 1.7 ms before). Ties go to the lowest id, as
# np.argmax's.
_greedy = jax.jit(lambda lg: jnp.argmax(lg[0]))


def _prefill_and_decode(target, ids, positions, max_new_tokens, chunk, timings, attn=None,
                        eos_id=None, kv_cache="bf16", fuse_qkv=True):
    """Shared tail of both paths: prefill (timed), first token (timed), decode (timed)."""
    n = ids.shape[0]
    nb = bucket(n)
    ids_p = np.zeros(nb, np.int32)
    ids_p[:n] = ids
    pos_p = np.empty(nb, np.int32)
    pos_p[:n] = positions
    pos_p[n:] = positions[-1] + 1 + np.arange(nb - n)  # increasing, never read by real rows
    cfg = target.config
    prefill, decode = target_jits(target.params)
    t0 = time.perf_counter()
    lg, cache = prefill(target.params, cfg, jnp.asarray(ids_p)[None], jnp.asarray(pos_p)[None],
                           jnp.int32(n), attn=attn or "auto", chunk=chunk,
                           cache_len=nb + max(max_new_tokens - 1, 0), kv_cache=kv_cache,
                           fuse_qkv=fuse_qkv)
    jax.block_until_ready(lg)
    t1 = time.perf_counter()
    tok = int(_greedy(lg))
    t2 = time.perf_counter()
    timings.update(target_prefill=t1 - t0, first_token=t2 - t1)
    out, pos = [tok], int(positions[-1])
    for _ in range(max_new_tokens - 1):
        if tok == eos_id:
            break
        pos += 1
        lg, cache = decode(target.params, cfg, jnp.asarray([tok], jnp.int32),
                                     jnp.asarray([pos], jnp.int32), cache, fuse_qkv=fuse_qkv)
        tok = int(_greedy(lg))
        out.append(tok)
    timings["decode"] = time.perf_counter() - t2
    return np.asarray(out, np.int32)


def full_prefill(target, ids, *, max_new_tokens: int = 1, chunk: int | None = None,
                 attn=None, eos_id: int | None = None, kv_cache: str = "bf16",
                 fuse_qkv: bool = True) -> FullResult:
    """The baseline: prefill of all S tokens (dense attention "auto": Mosaic on Hopper, cuDNN on
    other GPUs, or an attention callable), then greedy decode (stopping after eos_id when
    given); the KV cache is stored as `kv_cache` says for decode. fuse_qkv: prefill_at's."""
    qwen3.check_count(max_new_tokens, "full_prefill: max_new_tokens")
    qwen3.check_chunk(chunk)
    ids = qwen3.check_ids(ids, target.config.vocab_size, "full_prefill: ids")
    timings: dict = {}
    tokens = _prefill_and_decode(target, ids, np.arange(ids.shape[0], dtype=np.int32),
                                 max_new_tokens, chunk, timings, attn, eos_id, kv_cache,
                                 fuse_qkv)
    timings["ttft"] = timings["target_prefill"] + timings["first_token"]
    return FullResult(tokens, timings)


def prefill_kept(target, ids, kept, positions_mode: str = "renumbered", *,
                 max_new_tokens: int = 1, eos_id: int | None = None,
                 chunk: int | None = None, attn=None) -> np.ndarray:
    """The target's greedy answer from any chosen subset of the prompt: sorted unique `kept`
    positions (the last one S - 1, the token the answer follows), renumbered 0..K-1 (as
    SelectionConfig's default) or at their original positions. What PFlash's target stage does
    with a selection, open to another selection (an oracle, an ablation:
    experiments/probe_failures.py)."""
    ids = np.asarray(ids, np.int32)
    kept = np.asarray(kept, np.int32)
    if kept.ndim != 1 or kept.size == 0 or np.any(np.diff(kept) <= 0):
        raise ValueError("prefill_kept: kept must be sorted unique positions, at least one")
    if kept[0] < 0 or kept[-1] != ids.shape[0] - 1:
        raise ValueError(f"prefill_kept: kept must lie in [0, {ids.shape[0]}) and end with the "
                         f"last prompt position {ids.shape[0] - 1}, got {kept[0]}..{kept[-1]}")
    return _prefill_and_decode(target, ids[kept], target_positions(kept, positions_mode),
                               max_new_tokens, chunk, {}, attn, eos_id)


# ---------------------------------------------------------------- the pipeline
def prefill_selected(target, ids, dp: DrafterPass, cfg: PFlashConfig, *,
                     max_new_tokens: int = 1, chunk: int | None = None,
                     target_attn=None, eos_id: int | None = None, kv_cache: str = "bf16",
                     fuse_qkv: bool = True) -> PFlashResult:
    """The rest of PFlash given a drafter pass: span scores, selection under cfg.selection,
    target prefill of the kept tokens, greedy decode. Timings count the drafter pass too.
    target_attn and fuse_qkv: as full_prefill's attn and fuse_qkv."""
    ids = np.asarray(ids, np.int32)
    timings = {"drafter_forward": dp.timings["drafter_forward"]}
    t1 = time.perf_counter()
    scores = span_scores(dp.importance, cfg.selection.span_size)
    t2 = time.perf_counter()
    sel = cfg.selection
    anchors = anchor_spans(ids, sel.span_size, sel)  # empty unless sel.anchors == "ngram"
    # span_ids: the grid spans kept (with span_stride: the forced and anchor spans only)
    kept, span_ids = select_positions(dp.importance, sel, anchors)
    t3 = time.perf_counter()
    n_anchor = np.setdiff1d(np.intersect1d(span_ids, anchors),
                            forced_spans(scores.size, sel)).size
    timings.update(scoring=dp.timings["importance"] + t2 - t1, selection=t3 - t2)
    positions = target_positions(kept, cfg.selection.positions)
    tokens = _prefill_and_decode(target, ids[kept], positions, max_new_tokens, chunk, timings,
                                 target_attn, eos_id, kv_cache, fuse_qkv)
    timings["ttft"] = sum(timings[s] for s in STAGES)
    return PFlashResult(kept, tokens, timings, dp.importance, dp.block_density,
                        n_anchor_spans=int(n_anchor), n_anchor_found=int(anchors.size))


def speculative_prefill(drafter, target, ids, cfg: PFlashConfig, *, max_new_tokens: int = 1,
                        chunk: int | None = None, target_attn=None,
                        eos_id: int | None = None, kv_cache: str = "bf16",
                        fuse_qkv: bool = True) -> PFlashResult:
    """Run PFlash on one prompt (1-D ids): `drafter_pass` then `prefill_selected`. See the
    module docstring for stages and choices. Greedy decoding stops after eos_id when given
    (tokens then ends with it)."""
    ids = check_inputs(drafter, target, ids, cfg, max_new_tokens=max_new_tokens, chunk=chunk)
    dp = drafter_pass(drafter, ids, cfg, chunk=chunk)
    return prefill_selected(target, ids, dp, cfg, max_new_tokens=max_new_tokens, chunk=chunk,
                            target_attn=target_attn, eos_id=eos_id, kv_cache=kv_cache,
                            fuse_qkv=fuse_qkv)
