"""The shared block-sparse cases for impl="mosaic" (Pallas Mosaic GPU, Hopper), plus its own.

The kernel takes bfloat16/float16 only (wgmma operands): the base's float32 cases run here on
inputs rounded to bfloat16 (the production dtype) and are checked at bfloat16 tolerance against
the float32 reference on the unrounded inputs; the dtype cases (test_low_precision) run as is.

On the CPU the kernel runs in the Mosaic GPU interpreter with its pv="smem" variant (P staged
through shared memory; the interpreter has no register A operand and no pl.run_state), at the
GPU's own selection block of 128 (two 64-row compute warpgroups). The GPU class runs both
variants compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.attention import BlockMask, block_sparse_attention, dense_attention, reference
from pflash_jax.attention.api import is_hopper
from pflash_jax.attention.mosaic import BlockSizes, resolve_order
from tests.attention.test_block_sparse import BlockSparseBase, _qkv, _random_mask
from tests.tolerances import assert_close

plgpu = pytest.importorskip("jax.experimental.pallas.mosaic_gpu")


class MosaicBase(BlockSparseBase):
    impl = "mosaic"
    kernel_dtype = jnp.bfloat16  # what the base's float32 cases run in

    def attend(self, q, k, v, mask, causal=True, block_sizes=None):
        dtype = q.dtype
        if dtype == jnp.float32:
            q, k, v = (x.astype(self.kernel_dtype) for x in (q, k, v))
        out = block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=self.block_size,
                                     causal=causal, interpret=self.interpret,
                                     block_sizes=block_sizes or self.block_sizes)
        return out.astype(dtype)

    def close(self, out, exp, dtype, what):
        if dtype == jnp.float32:
            dtype = self.kernel_dtype
        assert_close(out, exp, dtype=jnp.dtype(dtype).name, what=what)

    def _check_variant(self, sizes, seed=90, S=None, causal=True, N=4, K=2, H=128, B=1):
        """Dense-ish masks (p=0.8) so some rows keep more blocks than the ring has slots."""
        S = S or self.S
        q, k, v = _qkv(seed, S, N, K, H, jnp.bfloat16, B=B)
        mask = _random_mask(seed, B, N, self.blocks(S), p=0.8)
        bm = BlockMask.from_dense(mask, block_size=self.block_size, seq_len=S, causal=causal)
        assert int(bm.counts.max()) > 3, "no row wraps the K/V ring"
        exp = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                               bm.mask, block_size=self.block_size,
                                               causal=causal)
        out = self.attend(q, k, v, bm, causal=causal, block_sizes=sizes)
        self.close(out, exp, jnp.bfloat16, f"{sizes}")


class SharedMaskCases:
    """One [B, 1, M, M] pattern for all heads, and dense attention built on it."""

    interpret: bool
    S: int

    def test_shared_mask_equals_per_head(self):
        N, K = 4, 2
        q, k, v = _qkv(95, self.S, N, K, 64, jnp.bfloat16)
        one = _random_mask(95, 1, 1, -(-self.S // 128), p=0.5)
        shared = block_sparse_attention(q, k, v, one, impl="mosaic", block_size=128,
                                        interpret=self.interpret)
        per_head = block_sparse_attention(q, k, v, jnp.broadcast_to(one, (1, N, *one.shape[2:])),
                                          impl="mosaic", block_size=128,
                                          interpret=self.interpret)
        assert_close(np.asarray(shared, np.float32), np.asarray(per_head, np.float32),
                     dtype="bfloat16", what="shared vs per-head mask")

    @pytest.mark.parametrize("causal", [True, False])
    def test_dense_matches_reference(self, causal):
        q, k, v = _qkv(96, self.S, 4, 2, 128, jnp.bfloat16)
        exp = reference.dense_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                        causal=causal)
        if self.interpret:
            from pflash_jax.attention import mosaic

            out = mosaic.dense_attention(q, k, v, causal=causal, interpret=True)
        else:
            out = dense_attention(q, k, v, impl="mosaic", causal=causal)
        assert_close(np.asarray(out, np.float32), np.asarray(exp), dtype="bfloat16",
                     what=f"dense mosaic causal={causal}")


def _fp8_inputs(seed, S, N, K, H, causal=True):
    """Fresh bf16 q, k, v (q, k x 3: peaked logits, as a trained model's), the amax scales of
    q and k, their e4m3 rounding and logit factor, and a random causal (or not) BlockMask of
    block 128 -> (q, k, v, scales, q8, k8, factor, bm)."""
    from pflash_jax.attention import api

    q, k, v = _qkv(seed, S, N, K, H, jnp.bfloat16)
    q, k = 3 * q, 3 * k
    scales = tuple(jnp.max(jnp.abs(x.astype(jnp.float32))) / api.FP8_MAX for x in (q, k))
    q8, k8, factor = api.quantize_qk(q, k, scales)
    bm = BlockMask.from_dense(_random_mask(seed, 1, N, -(-S // 128), p=0.7),
                              block_size=128, seq_len=S, causal=causal)
    return q, k, v, scales, q8, k8, factor, bm


class Fp8QKCases:
    """fp8 Q/K (float8_e4m3fn wgmma operands, V and P in bf16): the kernel against the float32
    reference on the same rounded q/k, dequantized (so only the kernel's own rounding of P and
    the output is left: bf16 tolerance). Fresh random inputs; logits scaled up (q, k x 3) so
    the softmax is peaked, as a trained model's, and e4m3's range is used (scales from amax)."""

    interpret: bool
    fp8_sizes = (None,)

    def _fp8_case(self, seed, S, N, K, H, sizes=None, causal=True):
        from pflash_jax.attention import mosaic

        q, k, v, scales, q8, k8, factor, bm = _fp8_inputs(seed, S, N, K, H, causal)
        kw = {} if sizes is None else {"block_sizes": sizes}
        out = mosaic.block_sparse_attention(q8, k8, v, bm, causal=causal, qk_scale=factor,
                                            interpret=self.interpret, **kw)
        assert out.dtype == jnp.bfloat16
        deq = [x8.astype(jnp.float32) * s for x8, s in zip((q8, k8), scales, strict=True)]
        exp = reference.block_sparse_attention(deq[0], deq[1], v.astype(jnp.float32), bm.mask,
                                               block_size=128, causal=causal)
        assert_close(np.asarray(out, np.float32), np.asarray(exp), dtype="bfloat16",
                     what=f"fp8 Q/K {sizes} causal={causal}")
        # the api entry quantizes itself and takes the same path
        via_api = block_sparse_attention(q, k, v, bm, impl="mosaic", causal=causal,
                                         interpret=self.interpret, qk_fp8_scales=scales,
                                         **({} if sizes is None else {"block_sizes": sizes}))
        np.testing.assert_array_equal(np.asarray(via_api, np.float32),
                                      np.asarray(out, np.float32))
        # the rounding changes the output: fp8 is not silently bf16 (peaked logits here)
        bf = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                              bm.mask, block_size=128, causal=causal)
        assert float(np.abs(np.asarray(exp) - np.asarray(bf)).max()) > 1e-3

    @pytest.mark.parametrize("causal", [True, False])
    def test_fp8_qk_matches_reference(self, causal):
        for sizes in self.fp8_sizes:
            self._fp8_case(61, 300, 2, 1, 128, sizes=sizes, causal=causal)

    def test_fp8_qk_gqa_head_dim_64(self):
        self._fp8_case(62, 400, 4, 2, 64)

    def test_fp8_qk_emulated_elsewhere(self):
        """impl="reference" with qk_fp8_scales runs on the same rounded values: it matches the
        kernel at bf16 tolerance (the emulation a non-Hopper run of the option sees)."""
        from pflash_jax.attention import api

        q, k, v = _qkv(63, 300, 2, 1, 128, jnp.bfloat16)
        scales = tuple(jnp.max(jnp.abs(x.astype(jnp.float32))) / api.FP8_MAX for x in (q, k))
        mask = _random_mask(63, 1, 2, 3, p=0.7)
        emul = block_sparse_attention(q, k, v, mask, impl="reference", qk_fp8_scales=scales)
        kern = block_sparse_attention(q, k, v, mask, impl="mosaic", interpret=self.interpret,
                                      qk_fp8_scales=scales)
        assert_close(np.asarray(kern, np.float32), np.asarray(emul, np.float32),
                     dtype="bfloat16", what="fp8 Q/K: kernel vs emulation")

    def test_fp8_qk_refusals(self):
        from pflash_jax.attention import mosaic

        q, k, v = _qkv(64, 128, 1, 1, 64, jnp.bfloat16)
        bm = BlockMask.from_dense(jnp.ones((1, 1, 1, 1), bool), block_size=128, seq_len=128)
        q8, k8 = q.astype(jnp.float8_e4m3fn), k.astype(jnp.float8_e4m3fn)
        with pytest.raises(ValueError, match="needs qk_scale"):
            mosaic.block_sparse_attention(q8, k8, v, bm, interpret=self.interpret)
        with pytest.raises(ValueError, match="quantize both"):
            mosaic.block_sparse_attention(q8, k, v, bm, interpret=self.interpret, qk_scale=1.0)


class Fp8PVCases:
    """fp8 P @ V (q, k and v float8_e4m3fn; P cast to e4m3 in the kernel) against the float32
    reference on the same rounded q/k/v, dequantized. What is left is the kernel's rounding of
    P: e4m3 keeps 3 mantissa bits, so each p is off by at most 2^-4 of itself (round to nearest;
    the 2^8 shift keeps every p >= 2^-14 normal, smaller ones are off by < 2^-18 absolutely),
    and o = sum p v / sum p by at most 2^-4 max|v| (plus the bf16 output's rounding). That
    bound is the max tolerance; rounding errors of different sign cancel in the sum, so the
    mean error is held to 2^-8 max|v|, 16x tighter (seen: ~1/1000 of max|v|)."""

    interpret: bool
    fp8_pv_sizes = (None,)

    def _fp8_pv_case(self, seed, S, N, K, H, sizes=None, causal=True):
        from pflash_jax.attention import api, mosaic

        q, k, v, scales, q8, k8, factor, bm = _fp8_inputs(seed, S, N, K, H, causal)
        v8, vs = api.quantize_v(v)
        kw = {} if sizes is None else {"block_sizes": sizes}
        out = mosaic.block_sparse_attention(q8, k8, v8, bm, causal=causal, qk_scale=factor,
                                            v_scale=vs, interpret=self.interpret, **kw)
        assert out.dtype == jnp.bfloat16
        deq = [x8.astype(jnp.float32) * s for x8, s in zip((q8, k8, v8), (*scales, vs),
                                                          strict=True)]
        exp = np.asarray(reference.block_sparse_attention(*deq, bm.mask, block_size=128,
                                                          causal=causal))
        vmax = float(np.abs(np.asarray(deq[2])).max())
        err = np.abs(np.asarray(out, np.float32) - exp)
        what = f"fp8 P @ V {sizes} causal={causal}"
        bound = 2.0 ** -4 * vmax + 2.0 ** -8 * np.abs(exp)  # P's rounding + bf16 output's
        assert (err <= bound).all(), (
            f"{what}: max error {err.max():.4g} over the bound (2^-4 max|v| = "
            f"{2.0 ** -4 * vmax:.4g}) at {np.unravel_index(err.argmax(), err.shape)}")
        assert err.mean() <= 2.0 ** -8 * vmax, (
            f"{what}: mean error {err.mean():.4g} > 2^-8 max|v| = {2.0 ** -8 * vmax:.4g}")
        # the api entry quantizes itself and takes the same path
        via_api = block_sparse_attention(q, k, v, bm, impl="mosaic", causal=causal,
                                         interpret=self.interpret, qk_fp8_scales=scales,
                                         v_fp8=True, **kw)
        np.testing.assert_array_equal(np.asarray(via_api, np.float32),
                                      np.asarray(out, np.float32))

    @pytest.mark.parametrize("causal", [True, False])
    def test_fp8_pv_matches_reference(self, causal):
        for sizes in self.fp8_pv_sizes:
            self._fp8_pv_case(71, 300, 2, 1, 128, sizes=sizes, causal=causal)

    def test_fp8_pv_gqa_head_dim_64(self):
        self._fp8_pv_case(72, 400, 4, 2, 64)

    def test_fp8_pv_emulated_elsewhere(self):
        """impl="reference" with v_fp8 rounds V the same way (P stays float32 there): within
        the kernel's P-rounding bound of the kernel."""
        from pflash_jax.attention import api

        q, k, v = _qkv(73, 300, 2, 1, 128, jnp.bfloat16)
        scales = tuple(jnp.max(jnp.abs(x.astype(jnp.float32))) / api.FP8_MAX for x in (q, k))
        mask = _random_mask(73, 1, 2, 3, p=0.7)
        emul = block_sparse_attention(q, k, v, mask, impl="reference", qk_fp8_scales=scales,
                                      v_fp8=True)
        kern = block_sparse_attention(q, k, v, mask, impl="mosaic", interpret=self.interpret,
                                      qk_fp8_scales=scales, v_fp8=True)
        assert emul.dtype == kern.dtype == jnp.bfloat16
        err = np.abs(np.asarray(kern, np.float32) - np.asarray(emul, np.float32))
        vmax = float(jnp.max(jnp.abs(v.astype(jnp.float32))))
        assert err.max() <= 2.0 ** -4 * vmax and err.mean() <= 2.0 ** -8 * vmax, (
            f"fp8 P @ V kernel vs emulation: max {err.max():.4g}, mean {err.mean():.4g}, "
            f"max|v| {vmax:.4g}")

    def test_fp8_pv_refusals(self):
        from pflash_jax.attention import mosaic

        q, k, v = _qkv(74, 128, 1, 1, 64, jnp.bfloat16)
        bm = BlockMask.from_dense(jnp.ones((1, 1, 1, 1), bool), block_size=128, seq_len=128)
        q8, k8, v8 = (x.astype(jnp.float8_e4m3fn) for x in (q, k, v))
        with pytest.raises(ValueError, match="needs fp8 Q/K too"):
            mosaic.block_sparse_attention(q, k, v8, bm, interpret=self.interpret, v_scale=1.0)
        with pytest.raises(ValueError, match="needs v_scale"):
            mosaic.block_sparse_attention(q8, k8, v8, bm, interpret=self.interpret,
                                          qk_scale=1.0)
        with pytest.raises(ValueError, match="v_scale is for an fp8 V"):
            mosaic.block_sparse_attention(q8, k8, v, bm, interpret=self.interpret,
                                          qk_scale=1.0, v_scale=1.0)
        with pytest.raises(ValueError, match="pass qk_fp8_scales too"):
            block_sparse_attention(q, k, v, bm, impl="mosaic", interpret=self.interpret,
                                   v_fp8=True)


def test_pv_perm_matches_jax_layouts():
    """PV_PERM from jax's own layout definitions: for every thread, the wgmma accumulator
    layout's registers (two e4m3 each, in register order) read as the 8-bit operand layout's
    (four each) put element (r, c) of the 8-bit view at (r, 16 g + PV_PERM[c % 16]) of the
    accumulator. A jax upgrade that changes either layout fails here, not in a wrong P @ V."""
    from jax.experimental.mosaic.gpu import fragmented_array as fa

    from pflash_jax.attention import mosaic

    shape = (64, 128)

    def registers(layout):
        """(thread, register index, vector slot) -> element, per the layout's tiling."""
        tiled = layout.tiling.tile_shape(shape)
        nd = len(tiled)
        lane_dims = [d % nd for d in layout.lane_dims]
        fixed = {layout.partitioned_warp_dims[0] % nd, *lane_dims, layout.vector_dim % nd}
        out = {}
        for r in range(shape[0]):
            for c in range(shape[1]):
                t = layout.tiling.tile_indices((r, c))
                lane = 0
                for d in lane_dims:
                    lane = lane * tiled[d] + t[d]
                thread = t[layout.partitioned_warp_dims[0] % nd] * 32 + lane
                reg = tuple(0 if i in fixed else x for i, x in enumerate(t))
                out[thread, reg, t[layout.vector_dim % nd]] = (r, c)
        return out

    acc = registers(fa.WGMMA_LAYOUT)
    for (thread, reg, slot), (r, c) in registers(fa.WGMMA_LAYOUT_8BIT).items():
        # relabel_8bit: 8-bit register (.., g, .., h, ..) = concat of accumulator registers
        # (.., 2g, ..) and (.., 2g + 1, ..), two slots each
        src = (thread, (reg[0], 2 * reg[1] + slot // 2, *reg[2:]), slot % 2)
        assert acc[src] == (r, 16 * (c // 16) + mosaic.PV_PERM[c % 16]), (thread, reg, slot)


def test_pv_token_order_is_pv_perm():
    from pflash_jax.attention import mosaic

    x = jnp.arange(2 * 3 * 64).reshape(2, 3, 64)
    got = np.asarray(mosaic.pv_token_order(x, permuted=True))
    perm = np.concatenate([16 * g + np.asarray(mosaic.PV_PERM) for g in range(4)])
    np.testing.assert_array_equal(got, np.asarray(x)[..., perm])
    np.testing.assert_array_equal(np.asarray(mosaic.pv_token_order(x, permuted=False)), x)


class TestMosaicInterpret(SharedMaskCases, Fp8QKCases, Fp8PVCases, MosaicBase):
    """The kernel through the Mosaic GPU interpreter on the CPU (pv="smem")."""

    interpret = True
    block_size = 128
    S = 300  # 3 blocks, the last one ragged

    @pytest.mark.parametrize("sizes", [BlockSizes(stages=3),
                                       BlockSizes(stages=1, schedule_barrier=False),
                                       BlockSizes(persistent=True),
                                       BlockSizes(persistent=True, stages=3),
                                       BlockSizes(order="heads")])
    def test_pipeline_variants(self, sizes):
        """Ring depth, the ping-pong barrier, persistent CTAs (3 CTAs over 8 items here:
        uneven item counts, the K/V ring running across items) and the CTA order change the
        schedule, never the answer."""
        self._check_variant(sizes, S=400, N=2, K=1, H=64)

    @pytest.mark.parametrize("order", ["kv_group", "heads"])
    def test_orders_heads_and_batches(self, order):
        """Both CTA orders against the reference with G = 3, K = 2, B = 2 and per-head masks:
        "kv_group" decomposes its (G, M, K * B) grid into (head, block, batch)."""
        self._check_variant(BlockSizes(order=order), S=520, N=6, K=2, H=64, B=2)

    def test_persistent_no_races(self):
        from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as ipc

        q, k, v = _qkv(97, 300, 2, 1, 64, jnp.bfloat16)
        mask = _random_mask(97, 1, 2, self.blocks(300), p=0.7)
        params = plgpu.InterpretGPUParams(detect_races=True)
        out = block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128,
                                     interpret=params, block_sizes=BlockSizes(persistent=True))
        jax.block_until_ready(out)
        assert not ipc.get_races().races_found, "race detected in the persistent mosaic kernel"

    def test_no_races(self):
        """The interpreter's happens-before race detector finds no race in the barrier protocol
        (TMA ring, consumed barriers, the P tiles, the output tile)."""
        from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call as ipc

        q, k, v = _qkv(91, 300, 2, 1, 64, jnp.bfloat16)
        mask = _random_mask(91, 1, 2, self.blocks(300), p=0.7)
        params = plgpu.InterpretGPUParams(detect_races=True)
        out = block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128,
                                     interpret=params)
        jax.block_until_ready(out)
        assert not ipc.get_races().races_found, "race detected in the mosaic kernel"

    @pytest.mark.parametrize("sizes", [BlockSizes(), BlockSizes(persistent=True),
                                       BlockSizes(persistent=True, stages=3),
                                       BlockSizes(overlap=True, stages=3),
                                       BlockSizes(overlap=True, schedule="token")])
    def test_gpu_variants_lower_for_cuda(self, sizes, monkeypatch):
        """The variants the interpreter cannot run (P in registers) still lower to Mosaic GPU
        IR for CUDA here: lowering errors show up on the CPU, PTX compilation only on a GPU.
        BlockSizes(persistent=True), and only it, runs mosaic_persistent.py's kernel."""
        from pflash_jax.attention import mosaic, mosaic_persistent

        monkeypatch.setattr(mosaic, "_check_device", lambda interpret: None)
        monkeypatch.setattr(mosaic_persistent, "sm_count", lambda: 132)
        traced = []
        persistent_kernel = mosaic_persistent.kernel

        def counting_kernel(*refs, **kw):
            traced.append(kw["n_ctas"])
            return persistent_kernel(*refs, **kw)

        monkeypatch.setattr(mosaic_persistent, "kernel", counting_kernel)
        q = jax.ShapeDtypeStruct((1, 1000, 4, 128), jnp.bfloat16)
        k = jax.ShapeDtypeStruct((1, 1000, 2, 128), jnp.bfloat16)
        bm = BlockMask.from_dense(_random_mask(98, 1, 4, self.blocks(1000)), block_size=128,
                                  seq_len=1000)
        f = jax.jit(lambda q, k, v, bm: mosaic.block_sparse_attention.__wrapped__(
            q, k, v, bm, block_sizes=sizes))
        text = f.trace(q, k, k, bm).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text
        assert traced == ([min(132, 4 * 8)] if sizes.persistent else [])  # N * M items

    @pytest.mark.parametrize("sizes", [BlockSizes(overlap=True, stages=3,
                                                  schedule_barrier=False),
                                       BlockSizes(), BlockSizes(persistent=True)])
    def test_fp8_qk_variants_lower_for_cuda(self, sizes, monkeypatch):
        """fp8 Q/K lowers to Mosaic GPU IR for CUDA in the compiled variants (the default
        overlapped pipeline included, which the interpreter cannot run)."""
        from pflash_jax.attention import mosaic, mosaic_persistent

        monkeypatch.setattr(mosaic, "_check_device", lambda interpret: None)
        monkeypatch.setattr(mosaic_persistent, "sm_count", lambda: 132)
        q = jax.ShapeDtypeStruct((1, 1000, 4, 128), jnp.float8_e4m3fn)
        k = jax.ShapeDtypeStruct((1, 1000, 2, 128), jnp.float8_e4m3fn)
        v = jax.ShapeDtypeStruct((1, 1000, 2, 128), jnp.bfloat16)
        bm = BlockMask.from_dense(_random_mask(99, 1, 4, self.blocks(1000)), block_size=128,
                                  seq_len=1000)
        f = jax.jit(lambda q, k, v, bm, c: mosaic.block_sparse_attention.__wrapped__(
            q, k, v, bm, block_sizes=sizes, qk_scale=c))
        text = f.trace(q, k, v, bm, jnp.float32(0.5)).lower(
            lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text

    @pytest.mark.parametrize("sizes", [BlockSizes(overlap=True, stages=3,
                                                  schedule_barrier=False),
                                       BlockSizes(), BlockSizes(persistent=True),
                                       BlockSizes(pv="smem")])
    def test_fp8_pv_variants_lower_for_cuda(self, sizes, monkeypatch):
        """fp8 P @ V lowers to Mosaic GPU IR for CUDA in the compiled variants, the register
        relabel (`relabel_8bit`, an inline Mosaic GPU block the interpreter cannot run) too."""
        from pflash_jax.attention import mosaic, mosaic_persistent

        monkeypatch.setattr(mosaic, "_check_device", lambda interpret: None)
        monkeypatch.setattr(mosaic_persistent, "sm_count", lambda: 132)
        q = jax.ShapeDtypeStruct((1, 1000, 4, 128), jnp.float8_e4m3fn)
        k = jax.ShapeDtypeStruct((1, 1000, 2, 128), jnp.float8_e4m3fn)
        bm = BlockMask.from_dense(_random_mask(99, 1, 4, self.blocks(1000)), block_size=128,
                                  seq_len=1000)
        f = jax.jit(lambda q, k, v, bm, c: mosaic.block_sparse_attention.__wrapped__(
            q, k, v, bm, block_sizes=sizes, qk_scale=c, v_scale=c))
        text = f.trace(q, k, k, bm, jnp.float32(0.5)).lower(
            lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text

    def test_small_selection_block(self):
        """The interpreter also runs selection blocks other than 128 (16-row warpgroups here);
        the GPU path needs 128."""
        q, k, v = _qkv(92, 150, 2, 1, 64, jnp.float16)
        mask = _random_mask(92, 1, 2, 5)
        bm = BlockMask.from_dense(mask, block_size=32, seq_len=150)
        exp = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                               bm.mask, block_size=32)
        out = block_sparse_attention(q, k, v, bm, impl="mosaic", block_size=32, interpret=True)
        assert_close(out, exp, dtype="float16", what="block_size 32")

    def test_rejects_float32_and_register_variant(self):
        q, k, v = _qkv(0, 128, 1, 1, 64)
        mask = jnp.ones((1, 1, 1, 1), bool)
        with pytest.raises(NotImplementedError, match="bfloat16 or float16"):
            block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128, interpret=True)
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
        with pytest.raises(ValueError, match="interpreter"):
            block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128, interpret=True,
                                   block_sizes=BlockSizes(pv="registers"))
        with pytest.raises(ValueError, match="overlap=True"):
            block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128, interpret=True,
                                   block_sizes=BlockSizes(overlap=True))
        with pytest.raises(ValueError, match="overlap=True too"):
            block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128, interpret=True,
                                   block_sizes=BlockSizes(pv="smem", schedule="token"))


def test_compiled_mosaic_off_hopper_says_what_to_use():
    """Without interpret=True the kernel needs an sm_90 GPU; anywhere else (the CPU, an sm_80
    or sm_89 GPU) the error names the ways out. Skipped on Hopper, where the compiled kernel
    runs (TestMosaicGPU)."""
    if is_hopper():
        pytest.skip("a Hopper GPU is the default device: the compiled kernel runs here")
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(0, 256, 1, 1, 64))
    with pytest.raises(NotImplementedError, match="Hopper.*impl='triton'.*interpret=True"):
        block_sparse_attention(q, k, v, jnp.ones((1, 1, 2, 2), bool), impl="mosaic",
                               block_size=128)


@pytest.mark.gpu
class TestMosaicGPU(SharedMaskCases, Fp8QKCases, Fp8PVCases, MosaicBase):
    """Compiled for Hopper (sm_90) with the production selection block; default pv="registers"."""

    block_size = 128
    S = 700
    fp8_sizes = (None, BlockSizes(), BlockSizes(persistent=True), BlockSizes(pv="smem"))
    fp8_pv_sizes = fp8_sizes


    @pytest.mark.parametrize("sizes", [BlockSizes(pv="smem"), BlockSizes(schedule_barrier=False),
                                       BlockSizes(pv="smem", stages=1, schedule_barrier=False),
                                       BlockSizes(persistent=True),
                                       BlockSizes(persistent=True, pv="smem"),
                                       BlockSizes(order="heads"),
                                       BlockSizes(overlap=True),
                                       BlockSizes(overlap=True, stages=3),
                                       BlockSizes(overlap=True, schedule_barrier=False),
                                       BlockSizes(overlap=True, schedule="token"),
                                       BlockSizes(overlap=True, stages=3, schedule="token")])
    def test_pipeline_variants(self, sizes):
        self._check_variant(sizes, S=1000)

    def test_overlap_non_causal_and_short_rows(self):
        """The overlapped pipeline on rows of one kept block (its prologue alone) and more, with
        and without the causal mask, at a ragged length (the diagonal block first)."""
        for causal in (True, False):
            self._check_variant(BlockSizes(overlap=True, stages=3), seed=95, S=1000,
                                causal=causal)
        q, k, v = _qkv(96, 300, 2, 1, 128, jnp.bfloat16)
        eye = jnp.eye(3, dtype=bool)[None, None].repeat(2, axis=1)  # diagonal only
        bm = BlockMask.from_dense(eye, block_size=128, seq_len=300)
        exp = reference.block_sparse_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                               bm.mask, block_size=128)
        out = self.attend(q, k, v, bm, block_sizes=BlockSizes(overlap=True))
        self.close(out, exp, jnp.bfloat16, "overlap, diagonal blocks only")

    def test_overlap_head_dim_64(self):
        self._check_variant(BlockSizes(overlap=True, stages=3, schedule_barrier=False), S=1000,
                            H=64)

    def test_three_stages_head_dim_64(self):
        """3 K/V stages fit shared memory at H=64 (at H=128 they need 224 KB of 227 KB)."""
        self._check_variant(BlockSizes(stages=3), S=1000, H=64)

    def test_non_causal_registers_and_smem(self):
        for pv in ("registers", "smem"):
            self._check_variant(BlockSizes(pv=pv), seed=93, S=1000, causal=False)

    def test_matches_interpreter(self):
        """The compiled registers variant equals the interpreted smem variant up to rounding."""
        pytest.importorskip("absl", reason="the Mosaic GPU interpreter needs absl-py")
        q, k, v = _qkv(94, 600, 4, 2, 128, jnp.bfloat16)
        mask = _random_mask(94, 1, 4, self.blocks(600))
        gpu = block_sparse_attention(q, k, v, mask, impl="mosaic", block_size=128)
        host = jax.devices("cpu")[0]
        with jax.default_device(host):
            cpu = block_sparse_attention(*(jax.device_put(x, host) for x in (q, k, v, mask)),
                                         impl="mosaic", block_size=128, interpret=True)
        assert_close(np.asarray(gpu, np.float32), np.asarray(cpu, np.float32),
                     dtype="bfloat16", what="GPU vs interpreter")


@pytest.mark.parametrize("S,shared,want", [(32768, False, "kv_group"), (49152, False, "kv_group"),
                                           (65536, False, "heads"), (131072, False, "heads"),
                                           (32768, True, "heads")])
def test_auto_order(S, shared, want):
    """order="auto": kv_group while one kv head's K/V (bf16, H 128) fits 24 MiB and the mask is
    per head (measured faster at 32K, slower at 128K and for dense masks); explicit orders stay."""
    assert resolve_order("auto", S, 128, 2, shared) == want
    assert resolve_order("heads", S, 128, 2, shared) == "heads"
    assert resolve_order("kv_group", S, 128, 2, shared) == "kv_group"
