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


def test_presets_reproduce_the_two_systems():
    pf, sp = preset("pflash"), preset("specprefill")
    assert (pf.scoring.pooling, pf.scoring.rope, pf.scoring.tail_mode) == (
        "after_mean",
        "nope",
        "tail",
    )
    assert (
        pf.selection.rounding,
        pf.selection.forced_head_spans,
        pf.selection.forced_tail_spans,
        pf.selection.positions,
    ) == ("floor", 8, 24, "renumbered")
    assert (pf.selection.span_size, pf.selection.keep_ratio) == (32, 0.05)
    assert (sp.scoring.pooling, sp.scoring.rope, sp.scoring.tail_mode) == (
        "per_row",
        "post",
        "lookahead",
    )
    assert (
        sp.selection.rounding,
        sp.selection.forced_head_spans,
        sp.selection.forced_tail_spans,
        sp.selection.positions,
    ) == ("ceil", 0, 0, "original")
    assert sp.attention_impl == "dense" and pf.attention_impl != "dense"
    assert pf.scoring.pool_width == sp.scoring.pool_width == 13
    assert (pf.preset, sp.preset) == ("pflash", "specprefill")


def test_default_is_pflash_with_original_positions():
    d = PFlashConfig().to_dict()
    p = preset("pflash").to_dict()
    diff = {k for k in d if d[k] != p[k]}
    assert diff == {"positions", "preset"}, diff
    assert d["positions"] == "original"


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
