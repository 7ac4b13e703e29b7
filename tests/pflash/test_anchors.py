"""Question n-gram anchors (spans.anchor_spans) and how select_spans budgets them."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pflash_jax.pflash.config import SelectionConfig
from pflash_jax.pflash.spans import (
    anchor_radius_at,
    anchor_spans,
    forced_spans,
    n_keep,
    select_spans,
)

REPO = Path(__file__).resolve().parents[2]
ANCHORED = SelectionConfig(anchors="ngram")  # 4-grams, window 96, radius 2, span 32


def _prompt(rng, S, vocab=2048):
    """Random ids with no 4-gram of the question recurring before it: a 4-gram drawn twice at
    random has probability ~S * 93 / vocab**4, checked so a plant is the only match."""
    ids = rng.integers(0, vocab, S)
    assert anchor_spans(ids, 32, ANCHORED).size == 0, "random prompt matched by chance: reseed"
    return ids


def _plant(ids, at, q_offset, n=4):
    """Copy the question's n-gram starting q_offset tokens before the end to position `at`."""
    S = ids.shape[0]
    ids[at : at + n] = ids[S - q_offset : S - q_offset + n]
    return ids


@pytest.mark.parametrize("at", [1000, 1023, 30])  # inside a span, straddling two, near the head
def test_plant_is_covered_by_its_spans_and_the_radius(at):
    rng = np.random.default_rng(at)
    ids = _plant(_prompt(rng, 4096), at, q_offset=int(rng.integers(4, 96)))
    got = anchor_spans(ids, 32, ANCHORED).tolist()
    lo, hi = max(at // 32 - 2, 0), (at + 3) // 32 + 2
    assert got == list(range(lo, hi + 1)), (at, got)


def test_no_match_no_anchors_and_none_mode_is_empty():
    rng = np.random.default_rng(1)
    ids = _prompt(rng, 4096)
    assert anchor_spans(ids, 32, ANCHORED).size == 0
    planted = _plant(ids.copy(), 2000, 40)
    assert anchor_spans(planted, 32, SelectionConfig(anchors="none")).size == 0
    # a near-miss (3 of the 4 tokens) is not a match
    near = planted.copy()
    near[2003] = (near[2003] + 1) % 2048
    assert anchor_spans(near, 32, ANCHORED).size == 0


def test_matches_inside_the_window_are_ignored():
    rng = np.random.default_rng(2)
    ids = _prompt(rng, 4096)
    S = ids.shape[0]
    ids[S - 90 : S - 86] = ids[S - 20 : S - 16]  # the question repeats itself
    assert anchor_spans(ids, 32, ANCHORED).size == 0
    # straddling the window's start (3 tokens before it, 1 inside) is not wholly before it
    ids[S - 99 : S - 95] = ids[S - 30 : S - 26]
    assert anchor_spans(ids, 32, ANCHORED).size == 0
    # wholly before it by one token counts
    ids[S - 100 : S - 96] = ids[S - 30 : S - 26]
    assert anchor_spans(ids, 32, ANCHORED).size > 0


@pytest.mark.parametrize(
    ("S", "radius"), [(32768, 2), (32769, 4), (65536, 4), (65537, 8), (131072, 8)]
)
def test_radius_grows_past_32k_and_64k(S, radius):
    assert anchor_radius_at(S, 2) == radius
    rng = np.random.default_rng(S)
    ids = rng.integers(0, 150_000, S)  # Qwen3-sized vocabulary: no chance 4-gram match
    at = S // 2 + 5  # inside one span
    ids = _plant(ids, at, q_offset=50)
    got = anchor_spans(ids, 32, ANCHORED).tolist()
    assert got == list(range(at // 32 - radius, at // 32 + radius + 1)), (S, got)


def test_budget_inside_never_exceeded_and_on_top_adds_them():
    """Random scores, random plants, random budgets: inside keeps exactly min(budget, n) spans
    with the forced spans kept; on_top keeps the forced spans and every anchor on top."""
    rng = np.random.default_rng()
    for trial in range(200):
        S = int(rng.integers(600, 9000))
        span = int(rng.choice([8, 16, 32, 64]))
        keep = float(rng.choice([0.02, 0.05, 0.1, 0.3]))
        head, tail = int(rng.integers(0, 10)), int(rng.integers(0, 30))
        ids = rng.integers(0, 2048, S)
        for at in rng.integers(0, S - 100, int(rng.integers(0, 6))):
            _plant(ids, int(at), int(rng.integers(4, 96)))
        inside = SelectionConfig(
            span_size=span,
            keep_ratio=keep,
            forced_head_spans=head,
            forced_tail_spans=tail,
            anchors="ngram",
        )
        n = -(-S // span)
        scores = rng.random(n)
        anchors = anchor_spans(ids, span, inside)
        kept = select_spans(scores, inside, anchors)
        k = n_keep(n, keep, "floor")
        info = (
            f"trial {trial}: S={S} span={span} keep={keep} head={head} tail={tail} "
            f"budget={k} anchors={anchors.size} kept={kept.size}"
        )
        assert kept.size == min(k, n), info
        assert np.isin(forced_spans(n, inside), kept).all(), info
        # anchors take all the room the forced spans leave, or half of it (rounded up) when
        # they would overflow it
        forced = forced_spans(n, inside)
        room, wanted = k - forced.size, np.setdiff1d(anchors, forced).size
        got = np.setdiff1d(np.intersect1d(kept, anchors), forced).size
        assert got >= (wanted if wanted <= room else -(-room // 2)), info
        on_top = dataclasses.replace(inside, forced_spans="on_top")
        plain = select_spans(scores, on_top)
        top = select_spans(scores, on_top, anchors)
        assert set(top.tolist()) == set(plain.tolist()) | set(anchors.tolist()), info


def test_overflowing_anchors_keep_the_best_scoring():
    cfg = SelectionConfig(keep_ratio=0.1, forced_head_spans=0, forced_tail_spans=2, anchors="ngram")
    n = 100  # budget 10: 2 tail spans, room 8, anchors 12 > 8 -> the 4 best anchors
    rng = np.random.default_rng(3)
    scores = rng.random(n)
    anchors = np.arange(20, 32)
    kept = select_spans(scores, cfg, anchors)
    best = anchors[np.argsort(-scores[anchors])[:4]]
    assert set(np.intersect1d(kept, anchors).tolist()) == set(best.tolist())
    assert kept.size == 10 and {98, 99} <= set(kept.tolist())
    # without anchors the old behaviour, callable without ids
    assert select_spans(scores, cfg).tolist() == select_spans(scores, cfg, []).tolist()


def test_pflash_run_with_anchors_on_the_tiny_pair(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PFLASH_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
    }
    args = [
        "-m",
        "pflash_jax.run",
        "selection.anchors=ngram",
        "task.seq_len=2048",
        "max_new_tokens=4",
        f"metrics_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/hydra",
    ]
    p = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, f"{args} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["pflash_config"]["anchors"] == "ngram"
    case = m["cases"][0]
    keep = m["pflash_config"]["keep_ratio"]
    assert case["n_anchor_spans"] >= 0 and case["n_anchor_found"] >= case["n_anchor_spans"]
    assert case["kept_frac"] <= keep + 1 / case["S"], case["kept_frac"]
    assert m["summary"]["n_anchor_spans"] == case["n_anchor_spans"]
