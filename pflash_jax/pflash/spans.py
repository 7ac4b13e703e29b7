"""From importance[S] to the kept token positions (docs/design.md 1.2). NumPy, once per prompt.

    span score  = mean importance over each span of `span_size` tokens (partial last span:
                  mean of its valid tokens)
    budget      = ceil(n_spans * keep_ratio)            ("ceil", SpecPrefill)
                  max(1, floor(n_spans * keep_ratio))   ("floor", PFlash)
    kept spans  = forced head/tail spans + anchors + the best-scoring others, `budget` spans
                  in all (forced_spans="inside", the default), or
                  top-`budget` spans by score  UNION  forced spans  UNION  anchors  ("on_top")

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
Question n-gram anchors (anchors="ngram", `anchor_spans`; the original PFlash's): spans
around every n-gram of the question (the prompt's last `anchor_window` tokens) that recurs
earlier in the prompt. Pure NumPy on the prompt ids, no drafter. They follow forced_spans:
- "inside": after the (possibly shrunk) forced spans, in the room they leave of the budget;
  anchors that would overflow that room take at most half of it, rounded up, keeping the
  anchor spans of highest drafter score; the best-scoring other spans fill the rest. So the
  kept count is still min(budget, n_spans).
- "on_top": unioned on top of the top-budget spans and the forced spans.
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


def _forced(n: int, k: int, cfg: SelectionConfig) -> np.ndarray:
    """The forced head/tail span ids among n spans under a budget of k (module docstring)."""
    n_head, n_tail = cfg.forced_head_spans, cfg.forced_tail_spans
    if cfg.forced_spans == "inside" and n_head + n_tail > k:
        # forced spans take at most half a budget they would overflow: the rest is scored
        # (all-forced at 4K, keep 0.05 missed the needle)
        cap = k // 2
        n_tail = min(n_tail, math.ceil(cap * n_tail / (n_head + n_tail)))
        n_head = min(n_head, cap - n_tail)
    return np.union1d(np.arange(min(n_head, n)), np.arange(max(0, n - n_tail), n))


def forced_spans(n_spans: int, cfg: SelectionConfig) -> np.ndarray:
    """Sorted int64 ids of the forced head/tail spans `select_spans` keeps among n_spans (after
    the inside rule's shrinking): the spans anchors do not count as contributing."""
    return _forced(n_spans, n_keep(n_spans, cfg.keep_ratio, cfg.rounding), cfg)


def select_spans(scores, cfg: SelectionConfig, anchors=None) -> np.ndarray:
    """Sorted unique int32 indices of the kept spans (module docstring for the semantics).
    anchors: span ids forced by question n-gram anchors (`anchor_spans`); None or empty: none."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"span scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        # NaN would sort arbitrarily: fail closed rather than select garbage spans.
        raise ValueError("span scores contain NaN or inf (drafter produced non-finite scores)")
    n = scores.size
    anchors = np.unique(np.asarray([] if anchors is None else anchors, dtype=np.int64))
    if anchors.size and (anchors[0] < 0 or anchors[-1] >= n):
        raise ValueError(f"anchor span ids must be in [0, {n}), got {anchors[0]}..{anchors[-1]}")
    k = n_keep(n, cfg.keep_ratio, cfg.rounding)
    order = np.lexsort((np.arange(n), -scores))  # by score descending, then index ascending
    forced = _forced(n, k, cfg)
    if cfg.forced_spans == "on_top":
        return np.union1d(np.union1d(order[:k], forced), anchors).astype(np.int32)
    # inside: forced spans first, then anchors in what they leave (at most half of it, rounded
    # up, when the anchors would overflow it: the best-scoring anchors), then the scores
    room = max(k - forced.size, 0)
    anchored = order[np.isin(order, anchors) & ~np.isin(order, forced)]  # by score
    if anchored.size > room:
        anchored = anchored[: -(-room // 2)]
    taken = np.union1d(forced, anchored)
    rest = order[~np.isin(order, taken)][: max(k - taken.size, 0)]
    return np.union1d(taken, rest).astype(np.int32)


def anchor_radius_at(S: int, radius: int) -> int:
    """Spans either side of an anchor match for a prompt of S tokens: `radius` up to 32K tokens,
    2 * radius past 32K (S > 32768), 4 * radius past 64K (S > 65536): the original PFlash's
    +-2 / +-4 / +-8 spans, so the kept context around a match grows with the haystack."""
    return radius * (4 if S > 65536 else 2 if S > 32768 else 1)


def _ngram_keys(grams: np.ndarray) -> np.ndarray:
    """[M, n] int64 -> [M] uint64 FNV-1a-style hash (collisions are checked exactly after)."""
    h = np.full(grams.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(grams.shape[1]):
        h = (h ^ grams[:, j].astype(np.uint64)) * np.uint64(0x100000001B3)
    return h


def anchor_spans(ids, span_size: int, cfg: SelectionConfig) -> np.ndarray:
    """Sorted int32 ids of the spans question n-gram anchors force (cfg.anchors == "ngram"),
    empty for "none". The question is the last `anchor_window` tokens; every n-gram
    (`anchor_ngram` tokens) lying wholly before it that equals one of the question's n-grams
    is a match, and the spans it touches plus `anchor_radius_at(S, anchor_radius)` spans either
    side are anchors. Matches inside the window (or straddling its start) do not count.
    Vectorised: n-grams are hashed to uint64, candidates found with np.isin against the
    question's keys, then checked exactly against the question's n-grams (no false match)."""
    _check_span_size(span_size)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    S, n, W = ids.shape[0], cfg.anchor_ngram, cfg.anchor_window
    if cfg.anchors == "none" or S - W < n:  # nothing before the window holds an n-gram
        return np.zeros(0, np.int32)
    view = np.lib.stride_tricks.sliding_window_view
    question = view(ids[S - W :], n)  # [W - n + 1, n]
    hay = view(ids[: S - W], n)  # [S - W - n + 1, n]: starts 0 .. S - W - n
    cand = np.flatnonzero(np.isin(_ngram_keys(hay), _ngram_keys(question)))
    if cand.size == 0:
        return np.zeros(0, np.int32)
    # exact check: the candidates and the question's n-grams as labels of their unique rows
    both = np.concatenate([question, hay[cand]])
    _, label = np.unique(both, axis=0, return_inverse=True)
    label = label.reshape(-1)
    starts = cand[np.isin(label[question.shape[0] :], label[: question.shape[0]])]
    if starts.size == 0:
        return np.zeros(0, np.int32)
    n_spans = -(-S // span_size)
    r = anchor_radius_at(S, cfg.anchor_radius)
    lo = np.maximum(starts // span_size - r, 0)
    hi = np.minimum((starts + n - 1) // span_size + r, n_spans - 1)
    cover = np.zeros(n_spans + 1, np.int64)  # difference array: +1 at lo, -1 after hi
    np.add.at(cover, lo, 1)
    np.add.at(cover, hi + 1, -1)
    return np.flatnonzero(np.cumsum(cover[:-1]) > 0).astype(np.int32)


def free_windows(importance, span_size: int, stride: int, n_windows: int,
                 occupied=None) -> np.ndarray:
    """Sorted int32 positions of up to `n_windows` span_size-token windows (SelectionConfig.
    span_stride): candidate starts at every multiple of `stride` (and S - span_size, so the
    prompt's end is reachable), scored by mean importance, taken best first (ties to the
    lower start) where they overlap neither a taken window nor the `occupied` tokens (bool
    [S]: the forced and anchor spans). Where the gaps left cannot hold a whole window, the
    rest of the count goes to the best grid spans' free tokens, so at most n_windows *
    span_size tokens are added, as the grid would add."""
    imp = np.asarray(importance, dtype=np.float64)
    S = imp.shape[0]
    occ = np.zeros(S, bool) if occupied is None else np.asarray(occupied, bool).copy()
    if n_windows <= 0 or S < span_size:
        return np.zeros(0, np.int32)
    starts = np.arange(0, S - span_size + 1, stride)
    if starts[-1] != S - span_size:
        starts = np.append(starts, S - span_size)
    csum = np.concatenate([[0.0], np.cumsum(imp)])
    score = (csum[starts + span_size] - csum[starts]) / span_size
    ocum = np.concatenate([[0], np.cumsum(occ)])
    free = ocum[starts + span_size] == ocum[starts]  # overlaps no occupied token
    starts, score = starts[free], score[free]
    # Each taken window rejects at most 2 * span_size / stride + 1 overlapping candidates, so
    # the best n_windows times that many (plus one) hold every window the greedy takes.
    m = n_windows * (2 * (-(-span_size // stride)) + 2)
    if m < starts.size:
        top = np.argpartition(-score, m)[:m + 1]
        starts, score = starts[top], score[top]
    order = np.lexsort((starts, -score))
    chosen = []
    taken = bytearray(occ.tobytes())  # per-token flags; Python-level slices are fast here
    for s in starts[order].tolist():  # best first; a taken window blocks its neighbours
        if len(chosen) == n_windows:
            break
        if not any(taken[s:s + span_size]):
            taken[s:s + span_size] = b"\x01" * span_size
            chosen.append(s)
    occ = np.frombuffer(bytes(taken), dtype=bool).copy()
    pos = [np.arange(s, s + span_size) for s in chosen]
    left = n_windows - len(chosen)
    if left:  # fragmented gaps: the best grid spans' free tokens
        grid = span_scores(imp, span_size)
        for j in np.lexsort((np.arange(grid.size), -grid)):
            if left == 0:
                break
            toks = np.arange(j * span_size, min((j + 1) * span_size, S))
            toks = toks[~occ[toks]]
            if toks.size:
                occ[toks] = True
                pos.append(toks)
                left -= 1
    return np.sort(np.concatenate(pos)).astype(np.int32) if pos else np.zeros(0, np.int32)


def free_placement(cfg: SelectionConfig) -> bool:
    """Whether cfg places its scored spans freely (a span_stride below span_size); None or a
    stride of at least span_size is the grid."""
    return cfg.span_stride is not None and cfg.span_stride < cfg.span_size


def select_positions(importance, cfg: SelectionConfig, anchors=None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """(kept token positions, kept span ids) for cfg: the grid's spans (`select_spans`), or
    with free placement (a span_stride below span_size) the forced and anchor spans of that
    selection kept as they are and its scored spans, as many, placed as `free_windows` (the
    span ids returned are then the forced and anchor spans only). The last token is kept
    either way."""
    imp = np.asarray(importance)
    S = imp.shape[0]
    scores = span_scores(imp, cfg.span_size)
    span_ids = select_spans(scores, cfg, anchors)
    if not free_placement(cfg):
        return kept_positions(span_ids, cfg.span_size, S), span_ids
    fixed = np.union1d(forced_spans(scores.size, cfg),
                       [] if anchors is None else np.asarray(anchors, np.int64))
    fixed = np.intersect1d(span_ids, fixed).astype(np.int32)
    n_scored = (n_keep(scores.size, cfg.keep_ratio, cfg.rounding) if cfg.forced_spans == "on_top"
                else span_ids.size - fixed.size)
    base = kept_positions(fixed, cfg.span_size, S, keep_last=False)
    occupied = np.zeros(S, bool)
    occupied[base] = True
    windows = free_windows(imp, cfg.span_size, cfg.span_stride, n_scored, occupied)
    kept = np.sort(np.concatenate([base, windows]))  # disjoint by construction
    if kept.size == 0 or kept[-1] != S - 1:
        kept = np.append(kept, S - 1)
    return kept.astype(np.int32), fixed


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


def select_tokens(importance, cfg: SelectionConfig, ids=None) -> np.ndarray:
    """importance [S] -> kept token positions: span scores, budget + forced spans (+ anchors
    from the prompt ids when cfg.anchors is not "none"), last token."""
    if cfg.anchors != "none" and ids is None:
        raise ValueError(f"anchors={cfg.anchors!r} needs the prompt ids")
    anchors = None if ids is None else anchor_spans(ids, cfg.span_size, cfg)
    return select_positions(importance, cfg, anchors)[0]


def needle_recall(kept, needle_positions) -> float:
    """Fraction of the needle's token positions that survived selection (drafter recall)."""
    needle = np.asarray(needle_positions).reshape(-1)
    if needle.size == 0:
        raise ValueError("needle_positions is empty: recall is undefined")
    return float(np.isin(needle, np.asarray(kept)).mean())
