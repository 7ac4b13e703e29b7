"""Experiment knobs of speculative prefill: scoring, span selection, drafter attention.

These are not model architecture (that is `Qwen3Config`): they are what a sweep varies and what
every result row must name. All dataclasses are frozen and hashable, so a config can be a static
argument of a jitted function; each validates itself on construction and names the bad option.

Two presets reproduce the published systems (docs/design.md 1.2); `preset(name, **overrides)` builds
one with flat overrides (`preset("pflash", keep_ratio=0.1, rope="post")`).

Preset values ("pflash" / "specprefill") and where they come from:
- n_tail, tail_mode: 8 "tail" / 8 "lookahead" (docs/design.md 1.2; SpecPrefill's README example runs
  its `config_p1_full_lah8` config, look-ahead 8).
- rope: "nope" / "post" (docs/design.md 1.2; PFlash's scorer defaults to pre-RoPE q/k:
  Luce-Org/lucebox PR #574 speaks of "the default NoPE scoring path", post-RoPE being the legacy
  option).
- pooling: "after_mean" / "per_row"; pool_width 13 for both (docs/design.md 1 and 1.2).
- span_size: 32 / 32 (issue 4's benchmark uses span 32; SpecPrefill keeps fixed-size chunks).
- keep_ratio: 0.05 / 0.1 (issue 4's benchmark keeps 0.05; SpecPrefill's README headline keeps
  10% of the tokens).
- rounding: "floor" (at least 1) / "ceil"; forced spans: 8 head + 24 tail / none, counted
  inside the keep budget (forced_spans "inside"; the original PFlash scales them down to fit)
  (docs/design.md 1.2).
- positions: "renumbered" (PFlash's text round-trip) / "original" (docs/design.md 1.2).
- attention_impl: "auto" (block-sparse: Mosaic kernel on Hopper, Triton on other GPUs,
  reference on CPU) / "dense":
  PFlash's drafter is block-sparse, SpecPrefill's dense.
  "reference", "triton" and "mosaic" are the same block-sparse math; on a GPU pick a kernel.
- fold_impl: "xla" for both (the kernel of the scoring fold, not a result-changing option):
  the fused "triton" fold matches it on an H200 but saved nothing at 8 tail rows (LOG,
  session 8); "auto" picks it on a GPU, and pflash_qa (64 rows, where it saves ~50 ms at
  128K) uses "auto".
- alpha 0.12, block_density None, block_size 128 for both (only read by block-sparse impls).
- attention_qk "model" for both: Q K^T of the drafter's block-sparse attention in the model's
  dtype; "fp8" rounds Q and K to e4m3 for it (issue 17's fp8 drafter: an option, recall
  within a point on the organism, results/fp8_qk_h100).
- attention_pv "model" for both: P @ V of that attention in the model's dtype; "fp8" (with
  attention_qk "fp8") rounds V (one amax scale per layer) and P to e4m3 for it (an option).
- anchors "none" for both for now (the original PFlash has question n-gram anchors, 4-grams of
  the last 96 tokens, +-2 spans; the default gets chosen from an ablation), anchor_ngram 4,
  anchor_window 96, anchor_radius 2 (docs/design.md 1.2).

The plain dataclass defaults are *our* defaults: the PFlash values, renumbered positions
included (the kept tokens at 0..K-1: never below original positions on the 100 held-out cases
at 8K-32K, 32K multiquery 0.92 -> 0.98, results/positions_early_exit_h100; docs/design.md 1.2).
positions="original" keeps the prompt positions. Experiments decide the rest.
Span size and keep ratio are sweep axes: the preset values only fix a starting point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

TAIL_MODES = ("tail", "lookahead")
ROPE_MODES = ("post", "nope")
POOLING_MODES = ("per_row", "after_mean", "max_after_mean")
TAIL_WEIGHTS = ("uniform", "linear", "rarity")
TAIL_ROWS = ("last", "question")
ROUNDING_MODES = ("ceil", "floor")
POSITION_MODES = ("original", "renumbered")
FORCED_MODES = ("inside", "on_top")
ANCHOR_MODES = ("none", "ngram")
ATTENTION_IMPLS = ("auto", "reference", "triton", "mosaic", "dense")
ATTENTION_QK = ("model", "fp8")
FOLD_IMPLS = ("auto", "xla", "triton")


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    # bool is an int subclass; True as a span size is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


def _check_choice(owner: str, name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def _check_fraction(owner: str, name: str, value, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = ok_type and (value >= 0 if allow_zero else value > 0)
    if not (ok_type and low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{owner}.{name} must be in {interval}, got {value!r}")


@dataclass(frozen=True)
class ScoringConfig:
    """How the drafter turns tail attention into per-token importance (docs/design.md 1.2).

    n_tail: number of tail queries (last prompt tokens, or last token + look-ahead tokens).
    tail_mode: "tail" = the last n_tail prompt tokens' queries; "lookahead" = the last prompt
        token plus n_tail - 1 greedily generated drafter tokens (SpecPrefill).
    rope: "post" = post-RoPE q/k (SpecPrefill); "nope" = pre-RoPE q/k after q_norm/k_norm, which
        removes RoPE's distance decay from the score.
    pooling: "per_row" = moving average of every (layer, head, t) probability row before the max,
        zero-padded edges (SpecPrefill); "after_mean" = one moving average of the final
        importance, truncated edges (PFlash).
    pool_width: moving-average width, odd; 1 disables pooling.
    score_layers: early exit: score from the drafter's first k layers only (the layers after
        them never run; the original ships layer 7 of 28 as an option); None: every layer.
        Tail mode only (look-ahead generates tokens, which needs the whole drafter).
    skip_layers: the first j drafter layers do not vote in the max (SpecPC: early layers
        attend broadly); they still run. 0: every scoring layer votes. Tail mode only.
    tail_weights: how the tail rows are averaged into importance: "uniform" (the mean),
        "linear" (row t of T weighs t + 1: the rows nearest the answer count most; SpecPC
        weights its tail rows) or "rarity" (row t weighs log(1 + S / c_t), c_t the count of
        its token in the prompt: rare tokens such as a question's key count most). Rarity
        needs tail mode.
    pooling "max_after_mean": a centred max over pool_width tokens of the importance (token
        max-pooling: a span is as good as its best neighbourhood) instead of the mean.
    tail_rows: which of the n_tail tail rows vote: "last" (all of them) or "question" (only
        the rows from the start of the question on: the prompt's last `question_lines`
        non-blank lines, found from the drafter tokenizer's line breaks; n_tail then caps the
        question's length, e.g. 64). Question-aware tail queries: a question longer than 8
        tokens votes with every token; a shorter one does not let haystack rows vote. Tail
        mode only.
    question_lines: lines the question spans (2: the tasks' question and answer-prefix lines).
    trail_width: after pooling, every token's importance is raised to the largest importance
        of the `trail_width` tokens before it (a trailing max): what follows an important
        token is kept with it, e.g. a needle's value after the key the question matched,
        which the probe found cut off at a span boundary (docs/LOG.md, 2026-12-02). 0: off.
    fold_impl: how each layer's tail probabilities are folded into the running max
        (importance.fold_layer): "xla" = plain jnp, the reference (it materialises [N, T, S]
        float32 logits); "triton" = the fused Pallas kernels of pflash/fold_triton.py (logits
        in registers, k read twice; interpret mode without a GPU), not for pooling "per_row",
        which pools each row before the max; "auto" = "triton" when JAX's default backend is a
        GPU, pooling is not "per_row" and the kernels take the shapes, else "xla". The same
        fold up to float32 rounding, so not a result-changing option. Default "xla": the
        triton fold is not yet compiled or timed on a GPU.
    """

    n_tail: int = 8
    tail_mode: str = "tail"
    rope: str = "nope"
    pooling: str = "after_mean"
    pool_width: int = 13
    score_layers: int | None = None
    skip_layers: int = 0
    tail_weights: str = "uniform"
    tail_rows: str = "last"
    question_lines: int = 2
    trail_width: int = 0
    fold_impl: str = "xla"

    def __post_init__(self):
        _check_int("ScoringConfig", "n_tail", self.n_tail, 1)
        _check_choice("ScoringConfig", "tail_mode", self.tail_mode, TAIL_MODES)
        _check_choice("ScoringConfig", "rope", self.rope, ROPE_MODES)
        _check_choice("ScoringConfig", "pooling", self.pooling, POOLING_MODES)
        _check_int("ScoringConfig", "pool_width", self.pool_width, 1)
        _check_choice("ScoringConfig", "tail_weights", self.tail_weights, TAIL_WEIGHTS)
        _check_int("ScoringConfig", "skip_layers", self.skip_layers, 0)
        _check_choice("ScoringConfig", "tail_rows", self.tail_rows, TAIL_ROWS)
        _check_int("ScoringConfig", "question_lines", self.question_lines, 1)
        _check_int("ScoringConfig", "trail_width", self.trail_width, 0)
        _check_choice("ScoringConfig", "fold_impl", self.fold_impl, FOLD_IMPLS)
        if self.fold_impl == "triton" and self.pooling == "per_row":
            raise ValueError("ScoringConfig.fold_impl='triton' needs pooling other than "
                             "'per_row' (per-row pooling runs before the max: XLA path only)")
        # options that read the prompt's own tail rows (look-ahead rows are generated tokens)
        tail_only = {"tail_weights": self.tail_weights == "rarity",
                     "tail_rows": self.tail_rows == "question", "skip_layers": self.skip_layers}
        for name, on in tail_only.items():
            if on and self.tail_mode != "tail":
                raise ValueError(f"ScoringConfig.{name}={getattr(self, name)!r} needs "
                                 f"tail_mode='tail', got tail_mode={self.tail_mode!r}")
        if self.score_layers is not None and self.skip_layers >= self.score_layers:
            raise ValueError(f"ScoringConfig.skip_layers={self.skip_layers} must be below "
                             f"score_layers={self.score_layers} (some layer must vote)")
        if self.score_layers is not None:
            _check_int("ScoringConfig", "score_layers", self.score_layers, 1)
            if self.tail_mode != "tail":
                raise ValueError(f"ScoringConfig.score_layers={self.score_layers} needs "
                                 f"tail_mode='tail' (look-ahead generates tokens with the "
                                 f"whole drafter), got tail_mode={self.tail_mode!r}")
        if self.pool_width % 2 == 0:
            # An even window has no centre: the smoothed score would shift by half a token.
            raise ValueError(f"ScoringConfig.pool_width must be odd, got {self.pool_width}")


@dataclass(frozen=True)
class SelectionConfig:
    """How importance becomes kept spans (docs/design.md 1.2). See `spans.select_spans`.

    span_size: tokens per span; the last span may be partial.
    keep_ratio: fraction of spans kept by score, in (0, 1]; 1 keeps every span.
    rounding: budget = ceil(n_spans * keep_ratio) ("ceil", SpecPrefill) or
        max(1, floor(n_spans * keep_ratio)) ("floor", PFlash).
    forced_head_spans / forced_tail_spans: spans always kept at the start / end of the prompt
        (PFlash 8 / 24, SpecPrefill 0 / 0).
    forced_spans: "inside" (default) = the forced spans count inside the budget and shrink
        proportionally when they alone would exceed it, so keep_ratio is the share of spans
        actually kept at every length (+ the last token); "on_top" = added to the top-budget
        spans (the rule of every result recorded before this option existed).
    positions: "renumbered" (default) = the kept tokens at 0..K-1, decode continuing at K;
        "original" = at their prompt positions, decode continuing at S (docs/design.md 1.2).
    anchors: "none", or "ngram" = question n-gram anchors (the original PFlash's): every
        `anchor_ngram`-token n-gram of the last `anchor_window` prompt tokens (the question)
        that also occurs before that window forces the spans holding the match, plus
        `anchor_radius` spans either side of it (`spans.anchor_spans`). They follow
        forced_spans: inside the budget after the head/tail spans, or on top of it.
    anchor_ngram: n-gram length in tokens (4).
    anchor_window: the question window, the last tokens of the prompt (96); matches inside it
        are not anchors.
    anchor_radius: spans kept either side of a match (2) up to 32K tokens; it grows with the
        prompt as in the original: x2 past 32K tokens (S > 32768: 4 spans) and x4 past 64K
        (S > 65536: 8 spans); `spans.anchor_radius_at`.
    span_stride: None (the dataclass default) or an int >= span_size = the scored spans are
        the fixed grid of span_size-token spans (so a span-size sweep down to tiny spans keeps
        working under a preset's stride); an int in [1, span_size) = they are span_size-token
        windows that may start at any multiple of span_stride, placed greedily by mean
        importance without overlapping each other or the forced / anchor spans
        (`spans.free_windows`): the same budget of spans, but a needle that straddles a grid
        boundary fits in one of them. pflash_qa sets 4.
    """

    span_size: int = 32
    keep_ratio: float = 0.05
    rounding: str = "floor"
    forced_head_spans: int = 8
    forced_tail_spans: int = 24
    forced_spans: str = "inside"
    positions: str = "renumbered"
    anchors: str = "none"
    anchor_ngram: int = 4
    anchor_window: int = 96
    anchor_radius: int = 2
    span_stride: int | None = None

    def __post_init__(self):
        _check_int("SelectionConfig", "span_size", self.span_size, 1)
        _check_fraction("SelectionConfig", "keep_ratio", self.keep_ratio)
        _check_choice("SelectionConfig", "rounding", self.rounding, ROUNDING_MODES)
        _check_int("SelectionConfig", "forced_head_spans", self.forced_head_spans, 0)
        _check_int("SelectionConfig", "forced_tail_spans", self.forced_tail_spans, 0)
        _check_choice("SelectionConfig", "forced_spans", self.forced_spans, FORCED_MODES)
        _check_choice("SelectionConfig", "positions", self.positions, POSITION_MODES)
        _check_choice("SelectionConfig", "anchors", self.anchors, ANCHOR_MODES)
        _check_int("SelectionConfig", "anchor_ngram", self.anchor_ngram, 1)
        _check_int("SelectionConfig", "anchor_window", self.anchor_window, 1)
        _check_int("SelectionConfig", "anchor_radius", self.anchor_radius, 0)
        if self.span_stride is not None:
            _check_int("SelectionConfig", "span_stride", self.span_stride, 1)
        if self.anchor_window < self.anchor_ngram:
            raise ValueError(f"SelectionConfig.anchor_window ({self.anchor_window}) must hold "
                             f"at least one n-gram of anchor_ngram={self.anchor_ngram} tokens")


@dataclass(frozen=True)
class PFlashConfig:
    """Everything the speculative-prefill pipeline needs besides the two models.

    attention_impl: the drafter's attention. "auto" = "mosaic" on Hopper (bf16/f16; "triton"
        for float32 there), "triton" on other GPUs, "reference" without a GPU.
        "reference" / "triton" / "mosaic" are the same block-sparse algorithm
        (docs/design.md 1.1) on different backends; "dense" runs full causal attention
        (SpecPrefill's drafter, and the ablation without block sparsity).
    alpha: FlashPrefill block-selection threshold on the *normalised* mass scale
        (docs/design.md 1.1, 0.08-0.18 in the paper's configs; not comparable with unnormalised
        0.7-0.85 values).
    block_density: None = alpha-driven dynamic selection; a fraction in (0, 1] = keep that
        fraction of the causal blocks, the structural ones (sinks, local window, last rows)
        included, about that fraction of each query-block row (fixed-density mode for timing
        random weights; attention.selection_common.density_budget).
    block_size: attention block size in tokens.
    attention_qk: the operands of the drafter's block-sparse Q K^T: "model" (the drafter's
        dtype) or "fp8" (float8_e4m3fn, each layer's q and k scaled by a bound from its
        q_norm / k_norm weights, |x| <= max|w| sqrt(H) after RMSNorm and RoPE, so nothing
        overflows and no pass over q/k is spent on an amax). The Mosaic kernel (Hopper) runs
        fp8 wgmma; other impls run the same rounding dequantized (an emulation: no faster).
        Selection and the scores read the unrounded q/k.
    attention_pv: the operands of the same attention's P @ V: "model" or "fp8" (needs
        attention_qk="fp8"): V rounded to e4m3 at one scale per layer from its amax (V has no
        norm to bound it by), P to e4m3 in the Mosaic kernel, both fp8 wgmma operands. Other
        impls round V the same way and keep P at their precision (an emulation: no faster).
    preset: the name of the preset this config was built from ("custom" otherwise); results
        record it next to every option value.
    """

    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    attention_impl: str = "auto"
    alpha: float = 0.12
    block_density: float | None = None
    block_size: int = 128
    attention_qk: str = "model"
    attention_pv: str = "model"
    preset: str = "custom"

    def __post_init__(self):
        if not isinstance(self.scoring, ScoringConfig):
            raise ValueError(f"PFlashConfig.scoring must be a ScoringConfig, got {self.scoring!r}")
        if not isinstance(self.selection, SelectionConfig):
            raise ValueError(
                f"PFlashConfig.selection must be a SelectionConfig, got {self.selection!r}"
            )
        _check_choice("PFlashConfig", "attention_impl", self.attention_impl, ATTENTION_IMPLS)
        _check_choice("PFlashConfig", "attention_qk", self.attention_qk, ATTENTION_QK)
        if self.attention_qk == "fp8" and self.attention_impl == "dense":
            raise ValueError("PFlashConfig.attention_qk='fp8' is an option of the block-sparse "
                             "drafter attention; attention_impl='dense' has no fp8 Q/K path")
        _check_choice("PFlashConfig", "attention_pv", self.attention_pv, ATTENTION_QK)
        if self.attention_pv == "fp8" and self.attention_qk != "fp8":
            raise ValueError("PFlashConfig.attention_pv='fp8' needs attention_qk='fp8' (the "
                             "kernel's fp8 P @ V runs with fp8 Q K^T); got attention_qk="
                             f"{self.attention_qk!r}")
        _check_fraction("PFlashConfig", "alpha", self.alpha, allow_zero=True)
        if self.block_density is not None:
            _check_fraction("PFlashConfig", "block_density", self.block_density)
        _check_int("PFlashConfig", "block_size", self.block_size, 1)

    def to_dict(self) -> dict:
        """Flat {option: value} for metrics.json and result tables."""
        top = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("scoring", "selection")
        }
        return {**dataclasses.asdict(self.scoring), **dataclasses.asdict(self.selection), **top}


_SCORING_KEYS = {f.name for f in dataclasses.fields(ScoringConfig)}
_SELECTION_KEYS = {f.name for f in dataclasses.fields(SelectionConfig)}
_TOP_KEYS = {f.name for f in dataclasses.fields(PFlashConfig)} - {"scoring", "selection"}

PRESETS: dict[str, dict] = {
    "pflash": dict(
        n_tail=8,
        tail_mode="tail",
        rope="nope",
        pooling="after_mean",
        pool_width=13,
        score_layers=None,
        skip_layers=0,
        tail_weights="uniform",
        tail_rows="last",
        question_lines=2,
        trail_width=0,
        fold_impl="xla",
        span_size=32,
        keep_ratio=0.05,
        rounding="floor",
        forced_head_spans=8,
        forced_tail_spans=24,
        forced_spans="inside",
        positions="renumbered",
        anchors="none",
        anchor_ngram=4,
        anchor_window=96,
        anchor_radius=2,
        span_stride=None,
        attention_impl="auto",
        alpha=0.12,
        block_density=None,
        block_size=128,
        attention_qk="model",
        attention_pv="model",
    ),
    "specprefill": dict(
        n_tail=8,
        tail_mode="lookahead",
        rope="post",
        pooling="per_row",
        pool_width=13,
        score_layers=None,
        skip_layers=0,
        tail_weights="uniform",
        tail_rows="last",
        question_lines=2,
        trail_width=0,
        fold_impl="xla",
        span_size=32,
        keep_ratio=0.1,
        rounding="ceil",
        forced_head_spans=0,
        forced_tail_spans=0,
        forced_spans="inside",
        positions="original",
        anchors="none",
        anchor_ngram=4,
        anchor_window=96,
        anchor_radius=2,
        span_stride=None,
        attention_impl="dense",
        alpha=0.12,
        block_density=None,
        block_size=128,
        attention_qk="model",
        attention_pv="model",
    ),
}
# Question-aware PFlash (ours, not a reproduction): the pflash preset with the question's rows
# voting (n_tail caps the question at 64 tokens) and a 16-token trailing max, so that every key
# a question names gets a row and a needle's value follows its key. On the v2 pair at 16K-32K
# it lifts multiquery 0.00-0.12 -> 0.88-1.00 and multivalue 0.60-0.72 -> 1.00, but it loses
# 3-distractor multikey at 8K (0.96 -> 0.80); with the XLA fold its 64 tail rows cost ~6% of
# TTFT at 128K (results/scoring_qtrail16_h200), with the Triton fold 0.3% (below). Needs the
# drafter's tokenizer (the question's lines).
# Forced spans 1 head + 2 tail (not pflash's 8 + 24): inside a 5% budget the 32 forced spans
# took half of it at 8K-16K and 32 of 51 spans at 32K; the question rows find the question
# without them. 100 held-out cases on the v2 pair (results/forced_spans_v2_h200_100): 8K
# multikey 0.85 -> 0.94, multiquery 0.67 -> 0.91, multivalue 0.78 -> 1.00; 16K 7-distractor
# multikey 0.89 -> 0.93; 32K multikey 0.92 -> 0.95, 7 distractors 0.91 -> 0.94.
# The package default (config.yaml, eval_tiny.yaml) since session 12: fold_impl "auto" runs the
# fused Triton fold on a GPU, where the XLA fold's [N, 64, S] float32 logits cost the 50 ms:
# 64 rows + trail 16 with it took 759.6 ms at 128K against 757.3 ms for the pflash preset's
# 8 rows with the XLA fold (results/speedup_h200_qa, one H200, each beside its full prefill).
# Free span placement at stride 4 (session 13): lost answers were needles cut at a 32-token
# grid boundary; placed windows (same count, same kept tokens) lift 8K 7-distractor multikey
# 0.72 -> 0.92 and its recall 0.86 -> 0.98 on the 100 held-out cases (CPU,
# results/span_stride_v2_cpu_100), with no task worse at 8K or 16K (results/span_stride_v2_cpu).
# The host greedy adds ~2-6 ms at 128K (CPU-timed; not yet timed on a GPU host).
# span_stride >= span_size gives the grid back (e.g. selection.span_stride=32).
# Positions renumbered 0..K-1 (pflash's value; the run configs and eval_tiny now use it too,
# where they had set original): on the same 100 cases at 8K-32K never below original positions
# on any of the 15 task x length rows, 32K multiquery 0.92 -> 0.98, 32K 7-distractor multikey
# 0.96 -> 0.99, 8K 0.92 -> 0.95 (H100, results/positions_early_exit_h100).
PRESETS["pflash_qa"] = {**PRESETS["pflash"], "tail_rows": "question", "n_tail": 64,
                        "trail_width": 16, "forced_head_spans": 1, "forced_tail_spans": 2,
                        "fold_impl": "auto", "span_stride": 4}


def preset(name: str, **overrides) -> PFlashConfig:
    """A named preset ("pflash", "specprefill" or our "pflash_qa") with flat option overrides.

    Overrides use the flat option names of the three dataclasses (span_size, rope, alpha, ...);
    the result keeps `preset=name` so tables say which system a run started from.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    unknown = set(overrides) - _SCORING_KEYS - _SELECTION_KEYS - _TOP_KEYS
    if unknown:
        raise ValueError(f"unknown PFlashConfig option(s) {sorted(unknown)} for preset {name!r}")
    values = {**PRESETS[name], "preset": name, **overrides}
    return PFlashConfig(
        scoring=ScoringConfig(**{k: v for k, v in values.items() if k in _SCORING_KEYS}),
        selection=SelectionConfig(**{k: v for k, v in values.items() if k in _SELECTION_KEYS}),
        **{k: v for k, v in values.items() if k in _TOP_KEYS},
    )
