"""One behavioural test base for block-sparse attention, subclassed per implementation.

Every case compares against the dense reference (all blocks kept) or the block-sparse reference
(random masks), on fresh random inputs; failures print max and mean error (tests/tolerances.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.attention import BlockMask, block_sparse_attention, dense_attention, reference
from pflash_jax.attention.triton import BlockSizes
from tests.tolerances import assert_close


def _qkv(seed, S, N, K, H, dtype=jnp.float32, B=1):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    q = jax.random.normal(kq, (B, S, N, H), jnp.float32)
    k = jax.random.normal(kk, (B, S, K, H), jnp.float32)
    v = jax.random.normal(kv, (B, S, K, H), jnp.float32)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _random_mask(seed, B, N, M, p=0.4):
    return jax.random.bernoulli(jax.random.PRNGKey(seed + 1000), p, (B, N, M, M))


class BlockSparseBase:
    """Shared cases. Subclasses set impl, interpret, the selection block size and sequence sizes."""

    impl = "reference"
    interpret = False
    block_size = 32
    block_sizes = None  # triton kernel tiles (None: default)
    S = 150  # not a multiple of block_size on purpose
    H = 64
    f32_tol: dict = {}  # override (TF32 dots on the GPU)

    def attend(self, q, k, v, mask, causal=True, block_sizes=None):
        kw = {}
        if self.impl == "triton":
            kw = {"interpret": self.interpret, "block_sizes": block_sizes or self.block_sizes}
        return block_sparse_attention(q, k, v, mask, impl=self.impl, block_size=self.block_size,
                                      causal=causal, **kw)

    def close(self, out, exp, dtype, what):
        extra = self.f32_tol if dtype == jnp.float32 else {}
        assert_close(out, exp, dtype=jnp.dtype(dtype).name, what=what, **extra)

    def blocks(self, S):
        return -(-S // self.block_size)

    def test_all_blocks_equals_dense(self):
        q, k, v = _qkv(0, self.S, 4, 2, self.H)
        M = self.blocks(self.S)
        out = self.attend(q, k, v, jnp.ones((1, 4, M, M), bool))
        self.close(out, dense_attention(q, k, v), jnp.float32, "all kept vs dense")

    @pytest.mark.parametrize("seed", [1])
    def test_random_mask_matches_reference(self, seed):
        q, k, v = _qkv(seed, self.S, 4, 2, self.H, B=2)
        M = self.blocks(self.S)
        mask = _random_mask(seed, 2, 4, M)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=self.S)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=self.block_size)
        self.close(self.attend(q, k, v, mask), exp, jnp.float32, f"random mask seed {seed}")

    @pytest.mark.parametrize("S", [1, 33, 95])
    def test_ragged_and_single_block(self, S):
        q, k, v = _qkv(3 + S, S, 2, 1, self.H)
        M = self.blocks(S)
        mask = _random_mask(S, 1, 2, M, p=0.5)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=S)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=self.block_size)
        self.close(self.attend(q, k, v, mask), exp, jnp.float32, f"S={S}")

    @pytest.mark.parametrize("G", [1, 2, 4, 8])
    def test_gqa(self, G):
        K = 2 if G < 8 else 1
        q, k, v = _qkv(10 + G, self.S, G * K, K, self.H)
        M = self.blocks(self.S)
        mask = _random_mask(G, 1, G * K, M)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=self.S)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=self.block_size)
        self.close(self.attend(q, k, v, bm), exp, jnp.float32, f"GQA G={G}")

    @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
    def test_low_precision(self, dtype):
        q, k, v = _qkv(20, self.S, 4, 2, self.H, dtype)
        M = self.blocks(self.S)
        mask = _random_mask(20, 1, 4, M)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=self.S)
        exp = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                               bm.mask, block_size=self.block_size)
        out = self.attend(q, k, v, mask)
        assert out.dtype == dtype
        self.close(out, exp, dtype, f"{jnp.dtype(dtype).name} vs float32 reference")

    def test_diagonal_always_kept(self):
        """An all-False mask still attends within the diagonal block (causally)."""
        q, k, v = _qkv(30, self.S, 2, 2, self.H)
        M = self.blocks(self.S)
        bm = BlockMask.from_dense(jnp.zeros((1, 2, M, M), bool), block_size=self.block_size,
                                  seq_len=self.S)
        assert bool(jnp.all(jnp.diagonal(bm.mask, axis1=-2, axis2=-1)))
        assert bool(jnp.all(bm.counts == 1))
        out = self.attend(q, k, v, jnp.zeros((1, 2, M, M), bool))
        exp = reference.block_sparse_attention(q, k, v, jnp.eye(M, dtype=bool)[None, None]
                                               .repeat(2, 1), block_size=self.block_size)
        self.close(out, exp, jnp.float32, "diagonal only")

    def test_no_future_leakage(self):
        """Perturbing tokens >= p leaves every output row < p bit-identical."""
        q, k, v = _qkv(40, self.S, 2, 1, self.H)
        M = self.blocks(self.S)
        mask = jnp.ones((1, 2, M, M), bool)
        p = self.block_size + self.block_size // 2 + 3  # mid-block: exercises the diagonal mask
        noise = _qkv(41, self.S, 2, 1, self.H)
        after = (jnp.arange(self.S) >= p)[None, :, None, None]
        q2, k2, v2 = (jnp.where(after, 100.0 * n, x) for x, n in zip((q, k, v), noise, strict=True))
        a = np.asarray(self.attend(q, k, v, mask))[:, :p]
        b = np.asarray(self.attend(q2, k2, v2, mask))[:, :p]
        assert np.array_equal(a, b), f"future leaked: max diff {np.abs(a - b).max():.3e}"

    def test_head_dim_128(self):
        q, k, v = _qkv(50, self.S, 2, 1, 128)
        M = self.blocks(self.S)
        mask = _random_mask(50, 1, 2, M)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=self.S)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=self.block_size)
        self.close(self.attend(q, k, v, mask), exp, jnp.float32, "head dim 128")

    def test_non_causal(self):
        q, k, v = _qkv(60, self.S, 2, 1, self.H)
        M = self.blocks(self.S)
        mask = _random_mask(60, 1, 2, M)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=self.S, causal=False)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=self.block_size,
                                               causal=False)
        self.close(self.attend(q, k, v, mask, causal=False), exp, jnp.float32, "non-causal")


class TestReference(BlockSparseBase):
    impl = "reference"

    def test_bad_mask_shape(self):
        q, k, v = _qkv(0, 64, 2, 1, 64)
        with pytest.raises(ValueError, match="blocks"):
            block_sparse_attention(q, k, v, jnp.ones((1, 2, 3, 3), bool), impl="reference",
                                   block_size=32)


class TestTritonInterpret(BlockSparseBase):
    """The Pallas kernel through the interpreter on the CPU; small tiles keep it quick."""

    impl = "triton"
    interpret = True
    block_sizes = BlockSizes(block_q=16, block_k=16)

    def test_tile_shapes(self):
        """Kernel tiles smaller than, or equal to, the selection block give the same answer."""
        q, k, v = _qkv(70, 100, 2, 1, 64)
        M = self.blocks(100)
        mask = _random_mask(70, 1, 2, M)
        bm = BlockMask.from_dense(mask, block_size=32, seq_len=100)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=32)
        for bq, bk, grouped in [(32, 32, False), (16, 8, True)]:
            sizes = BlockSizes(block_q=bq, block_k=bk, group_heads=grouped)
            out = self.attend(q, k, v, mask, block_sizes=sizes)
            self.close(out, exp, jnp.float32, f"tiles {bq}x{bk} grouped={grouped}")

    def test_grouped_heads_gqa(self):
        q, k, v = _qkv(71, 70, 8, 2, 64, B=2)
        mask = _random_mask(71, 2, 8, self.blocks(70))
        bm = BlockMask.from_dense(mask, block_size=32, seq_len=70)
        exp = reference.block_sparse_attention(q, k, v, bm.mask, block_size=32)
        out = self.attend(q, k, v, mask, block_sizes=BlockSizes(16, 16, group_heads=True))
        self.close(out, exp, jnp.float32, "group_heads, G=4, B=2")


@pytest.mark.gpu
class TestTritonGPU(BlockSparseBase):
    """Compiled on the GPU with the production selection block (128) and default tiles."""

    impl = "triton"
    block_size = 128
    S = 700
    f32_tol = {"atol": 3e-3, "rtol": 3e-3}  # Triton f32 dots run in TF32

    @pytest.mark.parametrize("tiles", [(128, 64), (128, 128), (64, 64), (128, 128, 8, 2, True)])
    def test_tile_shapes(self, tiles):
        q, k, v = _qkv(80, 1000, 4, 2, 128, jnp.bfloat16)
        M = self.blocks(1000)
        mask = _random_mask(80, 1, 4, M)
        bm = BlockMask.from_dense(mask, block_size=128, seq_len=1000)
        exp = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                               bm.mask, block_size=128)
        out = self.attend(q, k, v, mask, block_sizes=BlockSizes(*tiles))
        self.close(out, exp, jnp.bfloat16, f"tiles {tiles}")
