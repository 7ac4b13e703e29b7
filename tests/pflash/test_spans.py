"""Span selection vs an independent NumPy/Python re-implementation, plus its documented edges.

Semantics spelled out by `reference_kept` (the spec of spans.select_spans):
  budget = ceil(n_spans * r) or max(1, floor(n_spans * r)), with r read as the exact decimal
  on_top:  kept = { top `budget` spans by (score desc, index asc) over ALL spans }
                  | { first forced_head spans } | { last forced_tail spans }
  inside:  forced head/tail shrink to fit the budget (tail rounded up), then the best others
           by (score desc, index asc) until `budget` spans are kept
  tokens = every token of a kept span (last span clipped at S) | { S - 1 }
"""

import math
from fractions import Fraction

import numpy as np
import pytest

from pflash_jax.pflash.config import SelectionConfig, preset
from pflash_jax.pflash.spans import (
    kept_positions,
    n_keep,
    needle_recall,
    select_spans,
    select_tokens,
    span_scores,
    target_positions,
)
from tests.tolerances import assert_close


def reference_budget(n_spans, keep_ratio, rounding):
    x = Fraction(repr(keep_ratio)) * n_spans  # exact decimal arithmetic, no float fuzz
    return math.ceil(x) if rounding == "ceil" else max(1, math.floor(x))


def reference_span_scores(imp, span_size):
    return np.array([np.mean(imp[i : i + span_size]) for i in range(0, len(imp), span_size)])


def reference_kept(imp, cfg: SelectionConfig):
    S, s = len(imp), cfg.span_size
    scores = reference_span_scores(imp, s)
    n = len(scores)
    budget = reference_budget(n, cfg.keep_ratio, cfg.rounding)
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))
    head, tail = cfg.forced_head_spans, cfg.forced_tail_spans
    if cfg.forced_spans == "on_top":
        spans = set(ranked[:budget])
    else:
        if head + tail > budget:  # forced spans shrink to half the budget
            cap = budget // 2
            tail = min(tail, -(-cap * tail // (head + tail)))  # ceil, integers only
            head = min(head, cap - tail)
        spans = set()
    spans |= set(range(min(head, n)))
    spans |= set(range(max(0, n - tail), n))
    if cfg.forced_spans == "inside":
        for i in ranked:
            if len(spans) >= budget:
                break
            spans.add(i)
    tokens = {j for i in spans for j in range(i * s, min((i + 1) * s, S))} | {S - 1}
    return sorted(spans), sorted(tokens)


def _random_case(rng, name):
    span_size = int(rng.choice([1, 3, 7, 16, 32]))
    n_spans = int(rng.integers(1, 120))
    S = int(max(span_size, n_spans * span_size - rng.integers(0, span_size)))  # partial last
    keep_ratio = float(rng.choice([1.0, 0.05, 0.1, 0.25, 0.5, rng.uniform(0.001, 1.0)]))
    forced = str(rng.choice(["inside", "on_top"]))
    cfg = preset(name, span_size=span_size, keep_ratio=keep_ratio, forced_spans=forced).selection
    if rng.random() < 0.5:  # integer-valued importance: many exact ties in span means
        imp = rng.integers(0, 4, size=S).astype(np.float64)
    else:
        imp = rng.random(S) ** 4
    return imp, cfg


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_selection_matches_reference(name):
    rng = np.random.default_rng(1234 if name == "pflash" else 4321)
    for case in range(300):
        imp, cfg = _random_case(rng, name)
        spans_ref, tokens_ref = reference_kept(imp, cfg)
        spans = select_spans(span_scores(imp, cfg.span_size), cfg)
        tokens = select_tokens(imp, cfg)
        info = f"case {case}: S={len(imp)} {cfg}"
        assert spans.tolist() == spans_ref, f"{info}\n got {spans.tolist()}\nwant {spans_ref}"
        assert tokens.tolist() == tokens_ref, info
        assert tokens.dtype == np.int32


def test_span_scores_partial_last_span():
    rng = np.random.default_rng(0)
    for S, s in [(100, 32), (96, 32), (5, 5), (7, 3), (31, 1)]:
        imp = rng.random(S)
        assert_close(span_scores(imp, s), reference_span_scores(imp, s), what=f"S={S} s={s}")
    assert span_scores(np.array([1.0, 1.0, 1.0, 4.0]), 3).tolist() == [1.0, 4.0]


@pytest.mark.parametrize(
    "n, r, rounding, want",
    [
        (100, 0.05, "ceil", 5),
        (100, 0.05, "floor", 5),  # 100 * 0.05 = 5.000000000000001
        (33, 0.1, "ceil", 4),
        (33, 0.1, "floor", 3),
        (10, 0.01, "ceil", 1),
        (10, 0.01, "floor", 1),  # floor, but at least 1
        (4096, 0.05, "floor", 204),
        (4096, 0.05, "ceil", 205),
        (7, 1.0, "floor", 7),
        (7, 1.0, "ceil", 7),
    ],
)
def test_budget_rounding(n, r, rounding, want):
    assert n_keep(n, r, rounding) == want == reference_budget(n, r, rounding)


def test_forced_spans_count_inside_the_budget_by_default():
    """keep 0.05 keeps 5% of the spans whatever the length: the forced spans take their share
    of the budget, shrunk in proportion (tail rounded up) when they alone would exceed it."""
    cfg = SelectionConfig(span_size=1, keep_ratio=0.05, rounding="floor", forced_head_spans=8,
                          forced_tail_spans=24)
    assert cfg.forced_spans == "inside"
    scores = np.full(400, 0.1)
    scores[[100, 200]] = 1.0
    # 400 spans -> budget 20 < 32 forced: half of it forced (tail ceil(10 * 24 / 32) = 8,
    # head 2), the other half by score (100, 200, then the lowest-index ties)
    kept = select_spans(scores, cfg).tolist()
    assert len(kept) == 20 and kept[:2] == [0, 1] and kept[-8:] == list(range(392, 400))
    assert {100, 200} <= set(kept)
    # 4000 spans -> budget 200: 8 + 24 forced + the 168 best others (100 and 200 among them)
    big = np.random.default_rng(0).random(4000) * 0.5
    big[[1000, 2000]] = 1.0
    kept = select_spans(big, cfg)
    assert kept.size == 200 and {0, 7, 3976, 3999, 1000, 2000} <= set(kept.tolist())
    others = np.setdiff1d(kept, np.r_[0:8, 3976:4000])
    worst_kept = big[others].min()
    dropped = np.setdiff1d(np.arange(8, 3976), others)
    assert worst_kept >= big[dropped].max()  # the rest of the budget went by score
    # the kept share of tokens is the keep ratio at every length (+ the last token)
    for S in (4096, 8192, 16384, 131072):
        c = SelectionConfig(span_size=32, keep_ratio=0.05, forced_head_spans=8,
                            forced_tail_spans=24)
        imp = np.random.default_rng(S).random(S)
        n_spans = S // 32
        assert select_tokens(imp, c).size <= n_keep(n_spans, 0.05, "floor") * 32 + 1


def test_forced_spans_are_added_on_top_of_the_budget():
    # 40 spans, keep 0.05 floor -> budget 2; forced head 0..7 and tail 16..39 (32 spans).
    cfg = SelectionConfig(
        span_size=1, keep_ratio=0.05, rounding="floor", forced_head_spans=8, forced_tail_spans=24,
        forced_spans="on_top",
    )
    scores = np.full(40, 0.1)
    scores[[10, 11]] = 1.0
    kept = select_spans(scores, cfg).tolist()
    assert kept == list(range(8)) + [10, 11] + list(range(16, 40))  # 32 forced + 2 = 34

    # A forced span that also ranks top uses a budget slot; the budget is not refilled.
    scores[3] = 2.0  # rank 1 (forced head), then 10 (rank 2); 11 drops out
    kept = select_spans(scores, cfg).tolist()
    assert kept == list(range(8)) + [10] + list(range(16, 40))

    # Forced spans beyond the whole prompt: everything kept, nothing out of range.
    short = select_spans(np.random.default_rng(1).random(5), cfg)
    assert short.tolist() == [0, 1, 2, 3, 4]


def test_keep_ratio_one_keeps_every_token():
    rng = np.random.default_rng(2)
    for name in ["pflash", "specprefill"]:
        cfg = preset(name, keep_ratio=1.0, span_size=7).selection
        imp = rng.random(101)
        assert select_tokens(imp, cfg).tolist() == list(range(101))


def test_ties_go_to_lower_index():
    cfg = SelectionConfig(
        span_size=2, keep_ratio=0.5, rounding="ceil", forced_head_spans=0, forced_tail_spans=0
    )
    imp = np.array([1, 1, 5, 5, 1, 1, 5, 5, 5, 5, 0, 0], dtype=np.float64)
    assert select_spans(span_scores(imp, 2), cfg).tolist() == [1, 3, 4]


def test_kept_positions_sorted_unique_in_range():
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = int(rng.integers(1, 40))
        S = int(rng.integers(s, 2000))
        n_spans = -(-S // s)
        ids = rng.choice(n_spans, size=rng.integers(1, n_spans + 1), replace=True)
        pos = kept_positions(ids, s, S)
        assert pos.dtype == np.int32
        assert np.all(np.diff(pos) > 0), "not strictly increasing"
        assert pos[0] >= 0 and pos[-1] == S - 1
        want = {j for i in set(ids.tolist()) for j in range(i * s, min(i * s + s, S))} | {S - 1}
        assert pos.tolist() == sorted(want)
    assert kept_positions([0], 4, 10, keep_last=False).tolist() == [0, 1, 2, 3]
    assert kept_positions([2], 4, 10).tolist() == [8, 9]  # last span clipped at S
    with pytest.raises(ValueError, match="span ids"):
        kept_positions([3], 4, 10)


def test_target_positions_modes():
    kept = np.array([3, 4, 9, 20], dtype=np.int32)
    assert target_positions(kept, "original").tolist() == [3, 4, 9, 20]
    assert target_positions(kept, "renumbered").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="positions"):
        target_positions(kept, "shifted")


def test_needle_recall():
    kept = np.arange(0, 100, 2)
    assert needle_recall(kept, [0, 2, 4, 6]) == 1.0
    assert needle_recall(kept, [0, 1, 2, 3]) == 0.5
    assert needle_recall(kept, [99]) == 0.0
    with pytest.raises(ValueError, match="needle_positions"):
        needle_recall(kept, [])


def test_bad_input_names_the_option():
    imp = np.random.default_rng(4).random(50)
    with pytest.raises(ValueError, match="span_size"):
        span_scores(imp, 0)
    with pytest.raises(ValueError, match="span_size"):
        span_scores(imp[:10], 32)  # prompt shorter than one span
    for bad in [0.0, -0.5, 1.01]:
        with pytest.raises(ValueError, match="keep_ratio"):
            n_keep(10, bad, "ceil")
    with pytest.raises(ValueError, match="rounding"):
        n_keep(10, 0.5, "round")
    with pytest.raises(ValueError, match="NaN"):
        select_spans(np.array([0.1, np.nan]), SelectionConfig())
