"""Config: presets carry the documented values, overrides route, bad values name the option."""

import jax
import jax.numpy as jnp
import pytest

from pflash_jax.pflash.config import (
    PRESETS,
    PFlashConfig,
    ScoringConfig,
    SelectionConfig,
    preset,
)

# Every option of both presets, copied from the values pflash/config.py documents (and where
# they come from): a change to a preset must change this table too.
DOCUMENTED = {
    "pflash": dict(n_tail=8, tail_mode="tail", rope="nope", pooling="after_mean", pool_width=13,
                   score_layers=None, skip_layers=0, tail_weights="uniform",
                   tail_rows="last", question_lines=2, trail_width=0, fold_impl="xla",
                   span_size=32, keep_ratio=0.05, rounding="floor",
                   forced_head_spans=8,
                   forced_tail_spans=24, forced_spans="inside", positions="renumbered",
                   anchors="none", anchor_ngram=4, anchor_window=96, anchor_radius=2,
                   span_stride=None, attention_impl="auto",
                   alpha=0.12, block_density=None, block_size=128, attention_qk="model",
                   attention_pv="model"),
    "specprefill": dict(n_tail=8, tail_mode="lookahead", rope="post", pooling="per_row",
                        pool_width=13, score_layers=None, skip_layers=0,
                        tail_weights="uniform", tail_rows="last", question_lines=2,
                        trail_width=0, fold_impl="xla", span_size=32, keep_ratio=0.1,
                        rounding="ceil",
                        forced_head_spans=0, forced_tail_spans=0, forced_spans="inside",
                        positions="original",
                        anchors="none", anchor_ngram=4, anchor_window=96, anchor_radius=2,
                        span_stride=None, attention_impl="dense", alpha=0.12, block_density=None,
                        block_size=128, attention_qk="model", attention_pv="model"),
}


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_presets_reproduce_the_two_systems(name):
    cfg = preset(name)
    assert cfg.to_dict() == {**DOCUMENTED[name], "preset": name}, name
    assert PRESETS[name] == DOCUMENTED[name]
    # and each value sits in the dataclass the option belongs to
    s, sel = cfg.scoring, cfg.selection
    assert (s.n_tail, s.tail_mode, s.rope, s.pooling, s.pool_width) == tuple(
        DOCUMENTED[name][k] for k in ("n_tail", "tail_mode", "rope", "pooling", "pool_width"))
    assert (sel.span_size, sel.keep_ratio, sel.rounding, sel.forced_head_spans,
            sel.forced_tail_spans, sel.positions) == tuple(
        DOCUMENTED[name][k] for k in ("span_size", "keep_ratio", "rounding", "forced_head_spans",
                                      "forced_tail_spans", "positions"))


@pytest.mark.parametrize("name", ["pflash", "specprefill"])
def test_to_dict_rebuilds_the_same_config(name):
    """metrics.json records to_dict(); the preset and options it holds rebuild the config."""
    cfg = preset(name, span_size=16, keep_ratio=0.25, rope="post", block_density=0.3)
    flat = cfg.to_dict()
    assert preset(flat.pop("preset"), **flat) == cfg


def test_default_is_pflash_with_renumbered_positions():
    """The plain dataclasses are the pflash preset, positions included (renumbered since
    results/positions_early_exit_h100); original positions stay an option."""
    d = PFlashConfig().to_dict()
    p = preset("pflash").to_dict()
    diff = {k for k in d if d[k] != p[k]}
    assert diff == {"preset"}, diff
    assert d["positions"] == "renumbered" and SelectionConfig().positions == "renumbered"
    assert preset("pflash_qa").selection.positions == "renumbered"
    assert SelectionConfig(positions="original").positions == "original"


def test_overrides_route_to_the_right_dataclass():
    cfg = preset(
        "specprefill", span_size=16, keep_ratio=0.25, rope="nope", alpha=0.08, block_density=0.1
    )
    assert cfg.selection.span_size == 16 and cfg.selection.keep_ratio == 0.25
    assert cfg.scoring.rope == "nope" and cfg.scoring.pooling == "per_row"
    assert cfg.alpha == 0.08 and cfg.block_density == 0.1
    flat = cfg.to_dict()
    assert set(flat) == set(PRESETS["pflash"]) | {"preset"}


def test_configs_are_hashable_static_args():
    cfg = preset("pflash")
    assert hash(cfg) == hash(preset("pflash"))
    f = jax.jit(lambda x, c: x * c.scoring.pool_width, static_argnums=1)
    assert float(f(jnp.float32(2.0), cfg)) == 26.0


@pytest.mark.parametrize(
    "make, option",
    [
        (lambda: ScoringConfig(n_tail=0), "n_tail"),
        (lambda: ScoringConfig(tail_mode="future"), "tail_mode"),
        (lambda: ScoringConfig(rope="alibi"), "rope"),
        (lambda: ScoringConfig(pooling="before"), "pooling"),
        (lambda: ScoringConfig(pool_width=12), "pool_width"),
        (lambda: ScoringConfig(pool_width=0), "pool_width"),
        (lambda: ScoringConfig(fold_impl="cuda"), "fold_impl"),
        (lambda: ScoringConfig(fold_impl="triton", pooling="per_row"), "fold_impl"),
        (lambda: SelectionConfig(span_size=0), "span_size"),
        (lambda: SelectionConfig(span_size=True), "span_size"),
        (lambda: SelectionConfig(keep_ratio=0.0), "keep_ratio"),
        (lambda: SelectionConfig(keep_ratio=1.5), "keep_ratio"),
        (lambda: SelectionConfig(keep_ratio=-0.1), "keep_ratio"),
        (lambda: SelectionConfig(rounding="round"), "rounding"),
        (lambda: SelectionConfig(forced_head_spans=-1), "forced_head_spans"),
        (lambda: SelectionConfig(forced_tail_spans=2.5), "forced_tail_spans"),
        (lambda: SelectionConfig(positions="shifted"), "positions"),
        (lambda: PFlashConfig(attention_impl="flash"), "attention_impl"),
        (lambda: PFlashConfig(alpha=1.5), "alpha"),
        (lambda: PFlashConfig(block_density=0.0), "block_density"),
        (lambda: PFlashConfig(block_size=0), "block_size"),
        (lambda: preset("vllm"), "preset"),
        (lambda: preset("pflash", span=32), "span"),
        (lambda: preset("pflash", keep_ratio=2.0), "keep_ratio"),
    ],
)
def test_bad_values_name_the_option(make, option):
    with pytest.raises(ValueError, match=option):
        make()


def test_pflash_qa_is_pflash_with_question_rows_a_trail_and_few_forced_spans():
    """The question-aware preset differs from pflash in exactly three scoring options, the
    forced span counts, the fold's kernel ("auto": the Triton fold on a GPU, the same
    values) and free span placement at stride 4."""
    qa, base = preset("pflash_qa").to_dict(), preset("pflash").to_dict()
    diff = {k: qa[k] for k in qa if qa[k] != base[k]}
    assert diff == {"tail_rows": "question", "n_tail": 64, "trail_width": 16,
                    "forced_head_spans": 1, "forced_tail_spans": 2, "fold_impl": "auto",
                    "span_stride": 4, "preset": "pflash_qa"}, diff
