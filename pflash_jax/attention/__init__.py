"""Attention: dense reference, FlashPrefill block selection, block-sparse kernels (impl=...)."""

from pflash_jax.attention.api import block_sparse_attention, dense_attention
from pflash_jax.attention.blockmask import BlockMask
from pflash_jax.attention.selection import select_blocks, select_blocks_fixed_density

__all__ = ["BlockMask", "block_sparse_attention", "dense_attention", "select_blocks",
           "select_blocks_fixed_density"]
