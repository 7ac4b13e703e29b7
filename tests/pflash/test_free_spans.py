"""Free span placement (SelectionConfig.span_stride): the scored spans as span_size-token
windows at any multiple of the stride, against an independent greedy written here."""

import numpy as np
import pytest

from pflash_jax.pflash.config import SelectionConfig
from pflash_jax.pflash.spans import (
    forced_spans,
    free_windows,
    kept_positions,
    select_positions,
    select_spans,
    select_tokens,
    span_scores,
)


def reference_windows(imp, span, stride, n, occupied):
    """Every candidate start (multiples of stride, and S - span), best mean first (ties to the
    lower start), taken when it overlaps nothing taken: a plain Python loop."""
    S = len(imp)
    starts = sorted(set(range(0, S - span + 1, stride)) | {S - span})
    cands = sorted(starts, key=lambda s: (-sum(imp[s:s + span]) / span, s))
    occ = list(occupied)
    taken = []
    for s in cands:
        if len(taken) == n:
            break
        if not any(occ[s:s + span]):
            taken.append(s)
            for t in range(s, s + span):
                occ[t] = True
    return taken


@pytest.mark.parametrize("seed,S,span,stride,n", [(0, 1000, 32, 8, 6), (1, 517, 16, 4, 9),
                                                  (2, 4096, 32, 1, 20), (3, 300, 32, 32, 3)])
def test_free_windows_match_a_plain_greedy(seed, S, span, stride, n):
    rng = np.random.default_rng(seed)
    imp = rng.exponential(size=S)
    occupied = np.zeros(S, bool)
    occupied[:span] = True  # a forced head span
    occupied[S - 2 * span:] = True  # and two tail spans
    got = free_windows(imp, span, stride, n, occupied)
    want = reference_windows(imp.tolist(), span, stride, n, occupied.tolist())
    assert len(want) == n  # room enough here: no fallback
    expect = np.sort(np.concatenate([np.arange(s, s + span) for s in want]))
    assert np.array_equal(got, expect), (got[:40], expect[:40])
    assert not occupied[got].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_free_windows_at_the_prompt_end_match_a_plain_greedy(seed):
    # nothing occupied and the evidence at the very end: windows up to S - span (not a
    # multiple of the stride) are taken, and the blocking near the end must not overrun S
    rng = np.random.default_rng(seed)
    S, span, stride, n = 1001, 32, 4, 12
    imp = rng.exponential(size=S)
    imp[S - span:] += 5.0  # the last window, S - span, is the best one
    got = free_windows(imp, span, stride, n)
    want = reference_windows(imp.tolist(), span, stride, n, [False] * S)
    expect = np.sort(np.concatenate([np.arange(s, s + span) for s in want]))
    assert S - span in want
    assert np.array_equal(got, expect), (got[-40:], expect[-40:])


@pytest.mark.parametrize("stride", [None, 32, 33, 1000])
def test_grid_stride_is_the_grid(stride):
    """span_stride=None, or a stride of at least span_size, gives select_spans' grid, span ids
    included (so a span-size sweep below a preset's stride keeps running)."""
    rng = np.random.default_rng(4)
    imp = rng.exponential(size=5000)
    cfg = SelectionConfig(span_size=32, keep_ratio=0.05, span_stride=stride)
    kept, ids = select_positions(imp, cfg)
    want_ids = select_spans(span_scores(imp, 32), cfg)
    assert np.array_equal(ids, want_ids)
    assert np.array_equal(kept, kept_positions(want_ids, 32, 5000))
    assert np.array_equal(select_tokens(imp, cfg), kept)


def test_the_default_preset_runs_spans_smaller_than_its_stride():
    # pflash_qa's stride 4 with span 2 is the grid, not an error
    from pflash_jax.pflash.config import preset

    cfg = preset("pflash_qa", span_size=2).selection
    imp = np.random.default_rng(6).exponential(size=700)
    assert np.array_equal(select_tokens(imp, cfg),
                          kept_positions(select_spans(span_scores(imp, 2), cfg), 2, 700))


@pytest.mark.parametrize("forced_mode", ["inside", "on_top"])
def test_free_placement_keeps_the_budget_and_the_forced_spans(forced_mode):
    rng = np.random.default_rng(5)
    S = 8192
    imp = rng.exponential(size=S)
    grid_cfg = SelectionConfig(span_size=32, keep_ratio=0.05, forced_head_spans=1,
                               forced_tail_spans=2, forced_spans=forced_mode)
    free_cfg = SelectionConfig(**{**grid_cfg.__dict__, "span_stride": 8})
    grid = select_tokens(imp, grid_cfg)
    kept, fixed = select_positions(imp, free_cfg)
    assert kept.size <= grid.size  # never more tokens than the grid keeps
    assert kept.size >= grid.size - 32  # the same number of spans (the grid may overlap S-1)
    forced_tokens = kept_positions(forced_spans(S // 32, free_cfg), 32, S, keep_last=False)
    assert np.isin(forced_tokens, kept).all() and kept[-1] == S - 1
    assert np.array_equal(fixed, forced_spans(S // 32, free_cfg))


def test_a_needle_across_a_grid_boundary_fits_one_window():
    """One scored span of budget: the grid keeps half of a needle at tokens [20, 44), a window
    at stride 4 keeps all of it."""
    S, span = 1024, 32
    imp = np.full(S, 1e-3)
    imp[20:44] = 1.0
    cfg = SelectionConfig(span_size=span, keep_ratio=1 / 32, forced_head_spans=0,
                          forced_tail_spans=0)  # budget: 1 span of 32
    grid = select_tokens(imp, cfg)
    free = select_tokens(imp, SelectionConfig(**{**cfg.__dict__, "span_stride": 4}))
    needle = np.arange(20, 44)
    assert np.isin(needle, grid).mean() < 0.6
    assert np.isin(needle, free).all(), free


def test_fragmented_gaps_fall_back_to_grid_tokens():
    """Gaps shorter than a window: the count goes to the best grid spans' free tokens, never
    more than n * span tokens."""
    S, span = 256, 32
    imp = np.arange(S, dtype=float)
    occupied = np.zeros(S, bool)
    occupied[::20] = True  # every gap is 19 tokens: no window fits
    got = free_windows(imp, span, 4, 3, occupied)
    assert 0 < got.size <= 3 * span and not occupied[got].any()
    assert got.max() == S - 1  # the best (last) grid spans' free tokens


@pytest.mark.parametrize("bad", [0, -4, True, 2.0])
def test_bad_stride_names_the_option(bad):
    with pytest.raises(ValueError, match="span_stride"):
        SelectionConfig(span_size=32, span_stride=bad)
