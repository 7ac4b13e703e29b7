"""From importance[S] to the kept token positions (docs/design.md 1.2). NumPy, once per prompt.

    span score  = mean importance over each span of `span_size` tokens (partial last span:
                  mean of its valid tokens)
    budget      = ceil(n_spans * keep_ratio)            ("ceil", SpecPrefill)
                  max(1, floor(n_spans * keep_ratio))   ("floor", PFlash)
    kept spans  = forced head/tail spans + the best-scoring others, `budget` spans in all
                  (forced_spans="inside", the default), or
                  top-`budget` spans by score  UNION  forced head/tail spans  ("on_top")

Forced-span semantics, forced_spans="inside" (a keep ratio means the share of spans kept):
- the forced spans count inside the budget; the rest of it goes to the best-scoring other
  spans, so exactly min(budget, n_spans) spans are kept (fewer only when head and tail
  overlap on a prompt shorter than both).
- when the forced spans alone exceed the budget they shrink in proportion to half of it, the
  tail rounded up (the question sits at the end): with cap = floor(budget / 2),
  tail' = min(tail, ceil(cap * tail / (head + tail))), head' = cap - tail'; the other half
  goes by score. At 4K tokens, span 32, keep 0.05 the budget is 6 spans: 3 tail + 3 scored
  instead of 8 + 24 forced (which alone are 25% of the prompt). Giving the whole budget to
  the forced spans there left no room for the evidence (the default 4K demo lost its needle).
Forced-span semantics, "on_top" (how PFlash adds them to its top-k set; the rule of every
result recorded before this option existed):
- the budget ranks *all* spans, forced ones included; the forced spans are then added on top,
  so they never consume budget and a forced span that also ranks in the top-k is counted once
  (the top-k is not refilled). Kept count is between max(budget, n_forced) and
  budget + n_forced; forced spans are kept even when they alone exceed the budget.
In both, head and tail spans that overlap (short prompts) simply merge.
- ties in score go to the lower span index (stable, deterministic across backends).
- the last prompt token is always kept by `kept_positions` (SpecPrefill's always-keep-last
  rule): the target's first token is predicted from it, so without it the "first token" would
  continue some earlier token instead of the prompt.

Runs on the host on S floats: a sort of n_spans (~4K at 128K, span 32) costs microseconds.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from pflash_jax.pflash.config import POSITION_MODES, ROUNDING_MODES, SelectionConfig


def _check_span_size(span_size) -> None:
    if isinstance(span_size, bool) or not isinstance(span_size, (int, np.integer)) or span_size < 1:
        raise ValueError(f"span_size must be an int >= 1, got {span_size!r}")


def span_scores(importance, span_size: int) -> np.ndarray:
    """[n_spans] float64 mean importance per span; n_spans = ceil(S / span_size)."""
    _check_span_size(span_size)
    imp = np.asarray(importance, dtype=np.float64)
    if imp.ndim != 1:
        raise ValueError(f"importance must be 1-D [S], got shape {imp.shape}")
    S = imp.shape[0]
    if S < span_size:
        raise ValueError(f"prompt of {S} tokens is shorter than one span (span_size={span_size})")
    n_spans = -(-S // span_size)
    padded = np.zeros(n_spans * span_size)
    padded[:S] = imp
    counts = np.full(n_spans, span_size, dtype=np.float64)
    counts[-1] = S - (n_spans - 1) * span_size
    return padded.reshape(n_spans, span_size).sum(axis=1) / counts


def n_keep(n_spans: int, keep_ratio: float, rounding: str) -> int:
    """Score budget in spans. n_spans * keep_ratio within 1e-9 of an integer counts as that
    integer, so 100 * 0.05 = 5.000000000000001 keeps 5 spans under "ceil", not 6."""
    if (
        isinstance(keep_ratio, bool)
        or not isinstance(keep_ratio, numbers.Real)
        or not 0 < keep_ratio <= 1
    ):
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
    if n_spans < 1:
        raise ValueError(f"n_spans must be >= 1, got {n_spans}")
    x = n_spans * keep_ratio
    if abs(x - round(x)) <= 1e-9 * max(1.0, x):
        x = float(round(x))
    k = math.ceil(x) if rounding == "ceil" else max(1, math.floor(x))
    return min(k, n_spans)


def select_spans(scores, cfg: SelectionConfig) -> np.ndarray:
    """Sorted unique int32 indices of the kept spans (module docstring for the semantics)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"span scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        # NaN would sort arbitrarily: fail closed rather than select garbage spans.
        raise ValueError("span scores contain NaN or inf (drafter produced non-finite scores)")
    n = scores.size
    k = n_keep(n, cfg.keep_ratio, cfg.rounding)
    order = np.lexsort((np.arange(n), -scores))  # by score descending, then index ascending
    n_head, n_tail = cfg.forced_head_spans, cfg.forced_tail_spans
    if cfg.forced_spans == "on_top":
        head = np.arange(min(n_head, n))
        tail = np.arange(max(0, n - n_tail), n)
        return np.union1d(np.union1d(order[:k], head), tail).astype(np.int32)
    cap = k // 2  # forced spans take at most half a budget they would overflow: the rest is
    if n_head + n_tail > k:  # scored (all-forced at 4K, keep 0.05 missed the needle)
        n_tail = min(n_tail, math.ceil(cap * n_tail / (n_head + n_tail)))
        n_head = min(n_head, cap - n_tail)
    forced = np.union1d(np.arange(min(n_head, n)), np.arange(max(0, n - n_tail), n))
    rest = order[~np.isin(order, forced)][: max(k - forced.size, 0)]
    return np.union1d(forced, rest).astype(np.int32)


def kept_positions(span_ids, span_size: int, S: int, keep_last: bool = True) -> np.ndarray:
    """Sorted unique int32 token positions of the kept spans, clipped at S; plus S - 1 when
    `keep_last` (see the module docstring)."""
    _check_span_size(span_size)
    span_ids = np.asarray(span_ids, dtype=np.int64).reshape(-1)
    n_spans = -(-S // span_size)
    if span_ids.size and (span_ids.min() < 0 or span_ids.max() >= n_spans):
        raise ValueError(f"span ids must be in [0, {n_spans}) for S={S}, span_size={span_size}")
    pos = (span_ids[:, None] * span_size + np.arange(span_size)[None, :]).reshape(-1)
    pos = pos[pos < S]
    if keep_last:
        pos = np.append(pos, S - 1)
    return np.unique(pos).astype(np.int32)


def target_positions(kept, positions_mode: str) -> np.ndarray:
    """RoPE positions the target uses for the kept tokens: their original ones, or 0..K-1."""
    if positions_mode not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions_mode!r}")
    kept = np.asarray(kept, dtype=np.int32)
    if positions_mode == "original":
        return kept
    return np.arange(kept.size, dtype=np.int32)


def select_tokens(importance, cfg: SelectionConfig) -> np.ndarray:
    """importance [S] -> kept token positions: span scores, budget + forced spans, last token."""
    imp = np.asarray(importance)
    scores = span_scores(imp, cfg.span_size)
    return kept_positions(select_spans(scores, cfg), cfg.span_size, imp.shape[0])


def needle_recall(kept, needle_positions) -> float:
    """Fraction of the needle's token positions that survived selection (drafter recall)."""
    needle = np.asarray(needle_positions).reshape(-1)
    if needle.size == 0:
        raise ValueError("needle_positions is empty: recall is undefined")
    return float(np.isin(needle, np.asarray(kept)).mean())
