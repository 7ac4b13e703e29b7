"""Speculative prefill: token importance (importance.py), span selection (spans.py), knobs
(config.py); the drafter -> select -> target pipeline builds on these."""

from pflash_jax.pflash.config import (
    PRESETS,
    PFlashConfig,
    ScoringConfig,
    SelectionConfig,
    preset,
)

__all__ = ["PRESETS", "PFlashConfig", "ScoringConfig", "SelectionConfig", "preset"]
