"""The roofline projection (pflash_jax/roofline.py): counts by hand, the ratio model's identity,
monotonicity, and the projection of the measured 128K row onto an RTX 3090."""

import math
from pathlib import Path

import pytest

from pflash_jax import roofline as R
from pflash_jax.models.config import Qwen3Config, model_preset
from pflash_jax.models.params import param_shapes
from pflash_jax.report import load_rows, projected_cell, speed_table

ROOT = Path(__file__).resolve().parents[1]
TINY = Qwen3Config(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                   tie_word_embeddings=True)


def _row(**kw):
    row = {"device": "NVIDIA H200", "drafter": "qwen3_0_6b", "target": "qwen3_8b",
           "dtype": "bfloat16", "S": 32768, "kept_frac": 0.06, "block_density": 0.2,
           "pflash_drafter_forward_s": 0.15, "pflash_scoring_s": 0.002,
           "pflash_selection_s": 0.003, "pflash_target_prefill_s": 0.05,
           "pflash_first_token_s": 0.0015, "pflash_ttft_s": 0.2065,
           "full_target_prefill_s": 1.2, "full_first_token_s": 0.0015, "full_ttft_s": 1.2015,
           "pflash_decode_s": 1e-5, "pflash_compile_s": 9.0, "full_compile_s": 6.0}
    return row | kw


def test_counts_by_hand():
    # per token and layer: q 8x16, k 8x8, v 8x8, o 16x8 = 384 MACs; MLP 3 x 8x16 = 384 MACs
    assert R.gemm_flops(TINY, 10) == 2 * 10 * 2 * (384 + 384)
    # causal: 2 T^2 H per query head and layer
    assert R.attention_flops(TINY, 10) == 2 * 10**2 * 4 * 4 * 2
    assert R.attention_flops(TINY, 10, density=0.5) == 3200
    # projections 2 x 768 parameters; tied embedding 800, norms 2 x (8 + 8 + 4 + 4), final 8
    assert R.weight_bytes(TINY, 2) == 2 * (1536 + 800 + 48 + 8)
    assert R.weight_bytes(TINY, 2, "int8") == 1536 + 2 * 856
    assert R.weight_bytes(TINY, 2, "int4") == 1536 * (0.5 + 4 / 128) + 2 * 856
    # 4D + 3F + 4(N+K)H = 32 + 48 + 96 elements per token and layer, each 2 bytes
    assert R.activation_bytes(TINY, 10, 2) == 10 * 2 * 176 * 2
    assert R.kv_bytes(TINY, 10, 2) == 2 * 2 * 2 * 4 * 10 * 2
    # int8 / fp8 cache: a byte per value plus a float32 scale per token and kv head
    assert R.kv_bytes(TINY, 10, 2, "int8") == R.kv_bytes(TINY, 10, 2, "fp8") == 2 * 2 * 2 * 10 * 8
    w = R.forward_work(TINY, 10, 2, density=0.5)
    assert (w.flops, w.bytes) == (30720 + 3200, 4784 + 7040)
    for cfg in (TINY, model_preset("qwen3-8b"), model_preset("qwen3-0.6b")):
        assert R.weight_bytes(cfg, 1) == sum(math.prod(s) for s in param_shapes(cfg).values())


def test_counts_match_design_section_1_3():
    # docs/design.md 1.3 at S = 131,072 (PFLOP): 0.6B GEMMs 0.115 / attention 1.97; 8B 1.82 / 5.07
    S = 131072
    small, big = model_preset("qwen3-0.6b"), model_preset("qwen3-8b")
    assert R.gemm_flops(small, S) / 1e15 == pytest.approx(0.115, abs=5e-4)
    assert R.attention_flops(small, S) / 1e15 == pytest.approx(1.97, abs=5e-3)
    assert R.gemm_flops(big, S) / 1e15 == pytest.approx(1.82, abs=5e-3)
    assert R.attention_flops(big, S) / 1e15 == pytest.approx(5.07, abs=5e-3)


def test_model_names_map_to_their_presets():
    for f in sorted((ROOT / "pflash_jax/configs/model").glob("qwen3_*.yaml")):
        kv = dict(line.split(":", 1) for line in f.read_text().splitlines()
                  if line[:5] in ("name:", "prese"))
        name, preset = kv["name"].split("#")[0].strip(), kv["preset"].split("#")[0].strip()
        assert R.preset_of(name) == model_preset(preset), f
    assert R.preset_of("Qwen3-8B") == model_preset("qwen3-8b")
    assert R.preset_of("tiny_target") is None and R.preset_of(None) is None


def test_projection_onto_the_measuring_card_is_the_measurement():
    row = _row()
    p = R.project(row, R.H200)
    for k, v in p.items():
        if k.endswith("_s"):
            assert v == pytest.approx(row[k], rel=1e-12), k
    assert set(p) >= {"pflash_ttft_s", "full_ttft_s", "pflash_fits", "full_fits"}


def test_more_kept_tokens_take_longer():
    works = [R.stage_work(_row(kept_frac=f))["pflash_target_prefill"].time(R.RTX3090)
             for f in (0.001, 0.01, 0.05, 0.2, 1.0)]
    assert works == sorted(works) and len(set(works)) == len(works)
    # same measured time: the scale factor itself never falls as the kept count grows
    proj = [R.project(_row(kept_frac=f))["pflash_target_prefill_s"]
            for f in (0.0005, 0.005, 0.05, 0.5)]
    assert proj == sorted(proj)


def test_unmodelled_rows_project_to_none():
    assert R.project(_row(target="tiny_target")) is None
    assert R.project(_row(device="some other card")) is None
    assert R.project(_row(dtype="float32")) is None
    assert R.project(_row(target_quantize="fp8")) is None
    assert R.project(_row(target_quantize="int8")) is not None
    assert R.project(_row(target_tensor_parallel=2)) is None  # N cards: not one card's roofline
    assert projected_cell(_row(target="tiny_target")) == "-"
    # 8B bf16: 16.4 GB of weights + 4.8 GB of KV cache at 32K fit; + 19.3 GB at 128K do not
    assert not projected_cell(_row()).endswith("*") and projected_cell(_row(S=131072)).endswith("*")


def test_fp8_work_counts_at_the_fp8_rate():
    """fp8 W8A8 GEMMs and the drafter kernel's fp8 QK^T / PV halves count at the card's fp8
    rate; a card without fp8 tensor math (the 3090) gives such work no time, so fp8 rows have a
    floor on their own card but no 3090 projection."""
    gemm, attn = R.gemm_flops(TINY, 10), R.attention_flops(TINY, 10, 0.5)
    w = R.forward_work(TINY, 10, 2, density=0.5, quantize="fp8", qk="fp8")
    assert (w.flops, w.fp8_flops) == (attn / 2, gemm + attn / 2)
    both = R.forward_work(TINY, 10, 2, density=0.5, qk="fp8", pv="fp8")
    assert (both.flops, both.fp8_flops) == (gemm, attn)
    assert w.bytes == R.weight_bytes(TINY, 2, "fp8") + R.activation_bytes(TINY, 10, 2)
    assert not w.runs_on(R.RTX3090) and w.runs_on(R.H100)
    with pytest.raises(ValueError, match="no fp8 tensor math"):
        w.time(R.RTX3090)
    fp8_row = _row(S=131072, drafter_quantize="fp8", attention_qk="fp8", attention_pv="fp8")
    f8, bf = R.floor(fp8_row), R.floor(_row(S=131072))
    assert f8 is not None and f8["pflash_ttft_s"] < bf["pflash_ttft_s"]
    assert f8["full_ttft_s"] == bf["full_ttft_s"]  # the target stays bf16
    assert R.project(fp8_row) is None


def test_projected_3090_ttft_of_the_measured_128k_row():
    rows = [r for r in load_rows([str(ROOT / "results/speedup_h200_check")])
            if r["S"] == 131072 and r["target"] == "qwen3_8b"]
    assert rows
    for r in rows:
        p = R.project(r)
        print(f"\n{r['kernels']} drafter, 0.6B -> 8B bf16, S={r['S']}: measured on the H200 "
              f"PFlash {r['pflash_ttft_s']:.3f} s / full {r['full_ttft_s']:.2f} s; RTX 3090 "
              f"projected PFlash {p['pflash_ttft_s']:.2f} s / full {p['full_ttft_s']:.1f} s "
              f"(full fits 24 GiB: {p['full_fits']}). Published (27B-class Q4 target, 3090): "
              f"PFlash 24.8 s, llama.cpp ~257 s.")
        # compute-bound on both cards: every modelled stage scales by about 989 / 71
        assert p["full_ttft_s"] / r["full_ttft_s"] == pytest.approx(989 / 71, rel=0.01)
        assert p["pflash_fits"] and not p["full_fits"]  # as the 24 GiB run on the H200 found
    assert "RTX 3090 TTFT, projected" in speed_table(rows)


def test_a_path_that_did_not_run_is_not_projected():
    """A row whose full prefill was recorded as not fitting projects PFlash alone."""
    full_less = {k: v for k, v in _row().items() if not k.startswith("full_")}
    p = R.project(full_less)
    assert p is not None and "pflash_ttft_s" in p and "full_ttft_s" not in p
    assert projected_cell(full_less).endswith(" / -")
    assert R.project({k: v for k, v in full_less.items() if not k.startswith("pflash_")}) is None


def test_quantized_cache_makes_the_8b_full_prefill_fit_24_gb():
    """Qwen3-8B at 128K: bf16 weights + KV (35.7 GB) exceed a 3090; int8 weights + int8 KV
    (8.3 + 9.7 GB) do not (the rtx3090 rows' setting)."""
    row = _row(S=131072, kept_frac=0.05)
    assert R.fits(row, R.RTX3090)["full"] is False
    assert R.fits(row | {"target_quantize": "int8", "target_kv_cache": "int8"},
                  R.RTX3090)["full"] is True


def test_floor_is_the_stage_work_on_the_measuring_card():
    """floor(row): drafter forward + target prefill of the kept tokens (PFlash) and the full
    prefill, each at the measuring card's roofline; below the measured times of a real row;
    None where the card is not modelled. The speed table prints it beside the speedup."""
    row = _row()
    work = R.stage_work(row)
    f = R.floor(row)
    assert f["pflash_ttft_s"] == pytest.approx(work["pflash_drafter_forward"].time(R.H200)
                                               + work["pflash_target_prefill"].time(R.H200))
    assert f["full_ttft_s"] == pytest.approx(work["full_target_prefill"].time(R.H200))
    assert f["speedup"] == pytest.approx(f["full_ttft_s"] / f["pflash_ttft_s"])
    # compute bound at 32K: the full prefill's floor is its FLOPs at 767 TFLOP/s
    t = model_preset("qwen3-8b")
    assert f["full_ttft_s"] == pytest.approx(
        (R.gemm_flops(t, 32768) + R.attention_flops(t, 32768)) / 767e12)
    assert R.floor(_row(device="RTX 3090")) is None
    rows = load_rows([ROOT / "results/speedup_h200_inside"])
    for r in rows:  # a measured row lies above its floor
        fl = R.floor(r)
        assert fl["pflash_ttft_s"] < r["pflash_ttft_s"] and fl["full_ttft_s"] < r["full_ttft_s"]
    fl = R.floor(rows[0])
    table = speed_table(rows)
    assert "roofline floor, this card" in table
    assert f"{fl['pflash_ttft_s']:.3g} / {fl['full_ttft_s']:.3g}, {fl['speedup']:.1f}x" in table


def test_early_exit_rows_count_the_drafter_layers_that_ran():
    """score_layers k: the drafter's work is its first k layers' (the row's floor falls with it);
    rows without it keep every layer."""
    import dataclasses

    d = model_preset("qwen3-0.6b")
    full, ee = R.stage_work(_row()), R.stage_work(_row(score_layers=14))
    half = dataclasses.replace(d, num_hidden_layers=14)
    assert ee["pflash_drafter_forward"] == R.forward_work(half, 32768, 2, density=0.2)
    assert full["pflash_drafter_forward"] == R.forward_work(d, 32768, 2, density=0.2)
    assert ee["full_target_prefill"] == full["full_target_prefill"]
    assert R.floor(_row(score_layers=14))["pflash_ttft_s"] < R.floor(_row())["pflash_ttft_s"]


def test_speed_table_names_a_quantized_drafter():
    """An fp8 drafter's row must not read like a bf16 one (results/fp8_drafter_h100 holds both
    at the same settings): the format column names each model's format when one is quantized."""
    rows = load_rows([ROOT / "results/fp8_drafter_h100"])
    assert {r.get("drafter_quantize") for r in rows} == {"fp8", None}
    lines = [ln for ln in speed_table(rows).splitlines() if ln.startswith("| NVIDIA")]
    assert sum("drafter fp8 / target bfloat16" in ln for ln in lines) == 2, lines
    assert sum("| bfloat16 |" in ln for ln in lines) == 2, lines
