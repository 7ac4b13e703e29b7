"""Attention: dense reference, FlashPrefill block selection, block-sparse kernels (impl=...)."""

from pflash_jax.attention.api import dense_attention

__all__ = ["dense_attention"]
