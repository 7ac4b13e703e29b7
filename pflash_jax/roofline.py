"""A roofline projection of a measured speed row onto another card (docs/design.md section 8).

    proj = project(row)            # row: a flat row of pflash_jax.report (load_rows / flat_rows)
    proj["pflash_ttft_s"], proj["full_ttft_s"], proj["full_fits"]
    floor(row)["pflash_ttft_s"]    # the arithmetic floor of the row on its own card

This is an estimate, never a measurement: tables print it in its own column labelled
"projected", and nothing here is ever compared with, or averaged into, a measured number.

The model, per stage (drafter forward, the target's prefill of the kept tokens, full prefill):
- Work: FLOPs and HBM bytes from the stage's shapes (Qwen3 presets, `models.config`).
  FLOPs = GEMMs 2 x (q, k, v, o, gate, up, down parameters) per token and layer, plus causal
  attention 2 T^2 H per query head and layer (QK^T and PV over half the square), times the
  measured block density for the drafter's block-sparse attention (1 for dense); an early-exit
  row (score_layers k) counts the drafter's first k layers only. The LM head
  runs on the last token only (the "first token" stage) and is left out, as in section 1.3.
  Bytes = every weight once per forward (in the row's dtype, or int8 / int4 storage when the
  row records a quantized model) + activations: each GEMM and the attention read their inputs
  and write their outputs once, 4D + 3F + 4(N+K)H elements per token and layer. Re-reads of
  K/V tiles by later query tiles are assumed to hit L2 / shared memory (see limits).
- Time on a card: max(FLOPs / flops, bytes / bandwidth), one achievable rate each.
- Projection: projected = measured_stage_time x model(target card) / model(measuring card).
  The ratio keeps what was measured (kernel inefficiency, launch overhead, the padding of the
  kept tokens to a shape bucket) and scales only by how much faster or slower the card's
  roofline is. Projecting a row onto its own card returns the measured times exactly.
  Stages without a work model (scoring, selection, first token: small, memory-bound ops) are
  scaled by the bandwidth ratio. TTFT is scaled by projected / measured stage sums (medians of
  stages need not add up to the median TTFT exactly).

Constants (`Card`): the measuring cards use measured achievable rates, the RTX 3090 its spec
sheet times an explicit efficiency:
- H200 flops 767 TFLOP/s: bf16 matmul 8192^3 measured there (/work/shared/DEVICE.md), 77.6% of
  the 989 TFLOP/s spec. H100 (SXM): the same compute (DEVICE.md), so the same rate (its own
  matmul was not measured).
- RTX 3090 flops: 71 TFLOP/s spec (bf16 tensor math with f32 accumulate, what XLA's bf16 GEMM
  uses; the 142 figure needs f16 accumulate) x EFFICIENCY = 767 / 989, i.e. the assumption is
  that it reaches the same fraction of its spec as the H200 did. For a compute-bound stage the
  ratio is then 989 / 71 = 13.9, independent of the assumed efficiency's absolute level.
- Bandwidth: spec x BANDWIDTH_EFFICIENCY 0.85 on every card (assumed: not measured anywhere
  here): H200 4.8 TB/s, H100 3.35 TB/s, 3090 936 GB/s. At 128K every modelled stage is compute
  bound on both cards, so this factor does not move the 128K projection.
- int8 (284 TOPS) and int4 tensor math are not used: the project's int8 / int4 are weight-only
  (dequantized to bf16 inside the GEMM), so they cut bytes, not FLOP time.
- fp8: W8A8 GEMMs (drafter or target quantize "fp8") and the drafter kernel's fp8 QK^T / PV
  halves (attention.qk / attention.pv "fp8") count at `Card.fp8_flops`, the rest at the bf16
  rate (`Work.fp8_flops`). Hopper's fp8 rate is assumed, not measured: 1979 TFLOP/s spec x
  EFFICIENCY. The 3090 (sm_86) has no fp8 tensor math: fp8 rows have a floor on their own card
  and no 3090 projection.

Limits (why it is an estimate): a 3090 runs no Mosaic GPU kernel (no wgmma / TMA), so its
drafter runs the Triton kernel whose efficiency relative to the roofline differs from the
measured kernel's (project the row measured with `attention=triton` for the closest basis);
its L2 is 6 MB against the H200's 60 MB, so K/V tile re-reads that hit L2 on the H200 may go
to GDDR6X; clocks, power limits and cuDNN's Ampere kernels are not modelled. Memory is
checked only as a floor (`fits`): weights + KV cache, no activations.
"""

from __future__ import annotations

import dataclasses

from pflash_jax.models.config import Qwen3Config, model_preset

GIB = 2**30
EFFICIENCY = 767e12 / 989e12  # the H200's measured bf16 matmul rate / its spec dense peak
BANDWIDTH_EFFICIENCY = 0.85  # assumed for every card (no bandwidth was measured)


@dataclasses.dataclass(frozen=True)
class Card:
    name: str
    flops: float  # achievable dense bf16 FLOP/s (f32 accumulate)
    bandwidth: float  # achievable HBM / GDDR bytes/s
    memory: int  # bytes one process may use
    fp8_flops: float | None = None  # achievable dense e4m3 FLOP/s; None: no fp8 tensor math


# fp8 e4m3 dense: assumed to reach the bf16 rate's fraction of spec (EFFICIENCY) of Hopper's
# 1979 TFLOP/s fp8 spec (SXM; twice bf16). Not measured yet: experiments/probe_matmul_rate.py
# measures it; replace with its number.
HOPPER_FP8 = EFFICIENCY * 1979e12
H200 = Card("NVIDIA H200", 767e12, BANDWIDTH_EFFICIENCY * 4.8e12, 141 * 10**9, HOPPER_FP8)
H100 = Card("NVIDIA H100 80GB HBM3", 767e12, BANDWIDTH_EFFICIENCY * 3.35e12, 80 * 10**9,
            HOPPER_FP8)
RTX3090 = Card("RTX 3090", EFFICIENCY * 71e12, BANDWIDTH_EFFICIENCY * 936e9, 24 * GIB)
# the cards rows are measured on, by the device name metrics.json records
MEASURED_ON = {c.name: c for c in (H200, H100)}

# modelled stages: the row's f"{stage}_s" key -> which forward it is
MODELLED = ("pflash_drafter_forward", "pflash_target_prefill", "full_target_prefill")
# bytes per weight element by quantize format (int8: + f32 scale per output channel, ~0;
# int4: half a byte + an f32 scale per group of 128 inputs)
_QUANT_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / 128, "fp8": 1.0}
_ITEMSIZE = {"bfloat16": 2, "float16": 2}


@dataclasses.dataclass(frozen=True)
class Work:
    flops: float  # at the card's bf16 rate
    bytes: float
    fp8_flops: float = 0.0  # at the card's fp8 rate (W8A8 GEMMs, fp8 attention matmuls)

    def time(self, card: Card) -> float:
        compute = self.flops / card.flops
        if self.fp8_flops:
            if card.fp8_flops is None:
                raise ValueError(f"{card.name} has no fp8 tensor math: this work has no time "
                                 "there (check runs_on first)")
            compute += self.fp8_flops / card.fp8_flops
        return max(compute, self.bytes / card.bandwidth)

    def runs_on(self, card: Card) -> bool:
        return not self.fp8_flops or card.fp8_flops is not None


def preset_of(name: str | None) -> Qwen3Config | None:
    """The Qwen3 shape a recorded model name stands for (configs/model: `name: qwen3_0_6b` is
    `preset: qwen3-0.6b`; a preset or checkpoint folder name like Qwen3-8B works too)."""
    if not name:
        return None
    key = name.lower()
    if key.startswith("qwen3_"):
        key = "qwen3-" + key.removeprefix("qwen3_").replace("_", ".")
    try:
        return model_preset(key)
    except KeyError:
        return None


def gemm_flops(cfg: Qwen3Config, T: int) -> float:
    """q, k, v, o, gate, up, down over T tokens and every layer (2 FLOPs a multiply-add)."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    N, K = cfg.num_attention_heads, cfg.num_key_value_heads
    return 2.0 * T * cfg.num_hidden_layers * (D * H * (2 * N + 2 * K) + 3 * D * F)


def attention_flops(cfg: Qwen3Config, T: int, density: float = 1.0) -> float:
    """Causal attention over T tokens: 2 T^2 H per query head and layer, times the kept
    fraction of the causal blocks."""
    return 2.0 * T * T * cfg.head_dim * cfg.num_attention_heads * cfg.num_hidden_layers * density


def weight_bytes(cfg: Qwen3Config, itemsize: int, quantize: str | None = None) -> float:
    """Every parameter: the layers' projections in the quantized format (if any), embeddings,
    LM head and norms in the compute dtype (they stay unquantized, models/quant.py)."""
    D, F, H, L = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_hidden_layers
    N, K = cfg.num_attention_heads, cfg.num_key_value_heads
    proj = L * (D * H * (2 * N + 2 * K) + 3 * D * F)
    rest = cfg.vocab_size * D * (1 if cfg.tie_word_embeddings else 2) + L * (2 * D + 2 * H) + D
    return proj * _QUANT_BYTES.get(quantize, itemsize) + rest * itemsize


def activation_bytes(cfg: Qwen3Config, T: int, itemsize: int) -> float:
    """Each GEMM and the attention read their inputs and write their outputs once."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    N, K = cfg.num_attention_heads, cfg.num_key_value_heads
    return float(T * cfg.num_hidden_layers * (4 * D + 3 * F + 4 * (N + K) * H) * itemsize)


def kv_bytes(cfg: Qwen3Config, T: int, itemsize: int, kv_cache: str | None = None) -> float:
    """The KV cache of T tokens: the compute dtype, or int8 / fp8 (one byte per value plus a
    float32 scale per token and kv head, models/quant.py)."""
    heads = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * T
    if kv_cache in ("int8", "fp8"):
        return float(heads * (cfg.head_dim + 4))
    return float(heads * cfg.head_dim * itemsize)


def forward_work(cfg: Qwen3Config, T: int, itemsize: int, *, density: float = 1.0,
                 quantize: str | None = None, qk: str | None = None,
                 pv: str | None = None) -> Work:
    """One forward's work. quantize "fp8" puts the GEMM FLOPs at the fp8 rate; qk / pv "fp8"
    (the drafter kernel's attention.qk / attention.pv) put attention's QK^T / PV half there."""
    gemm, attn = gemm_flops(cfg, T), attention_flops(cfg, T, density)
    fp8 = (gemm if quantize == "fp8" else 0.0) + attn / 2 * ((qk == "fp8") + (pv == "fp8"))
    return Work(gemm + attn - fp8,
                weight_bytes(cfg, itemsize, quantize) + activation_bytes(cfg, T, itemsize),
                fp8)


def _models(row: dict):
    """(drafter cfg, target cfg, itemsize, drafter quantize, target quantize), or None where the
    row cannot be modelled (unknown model name, dtype, or a format without a path here).
    `*_quantize` are read when a row records them; older rows hold unquantized models. A row
    whose target was split over several cards (target_tensor_parallel > 1) is not modelled: one
    card's roofline says nothing about N cards and their all-reduces."""
    if row.get("target_tensor_parallel", 1) != 1:
        return None
    d, t = preset_of(row.get("drafter")), preset_of(row.get("target"))
    itemsize = _ITEMSIZE.get(row.get("dtype"))
    dq, tq = row.get("drafter_quantize"), row.get("target_quantize")
    if d is None or t is None or itemsize is None or any(
            q is not None and q not in _QUANT_BYTES for q in (dq, tq)):
        return None
    return d, t, itemsize, dq, tq


def stage_work(row: dict) -> dict[str, Work] | None:
    """The work of each modelled stage of one row (None: not modelled)."""
    m = _models(row)
    if m is None or row.get("kept_frac") is None or row.get("block_density") is None:
        return None
    d, t, itemsize, dq, tq = m
    if row.get("score_layers"):  # early exit: the drafter runs its first k layers only
        d = dataclasses.replace(d, num_hidden_layers=min(row["score_layers"],
                                                         d.num_hidden_layers))
    S = row["S"]
    kept = max(1, round(row["kept_frac"] * S))
    return {"pflash_drafter_forward": forward_work(d, S, itemsize, density=row["block_density"],
                                                   quantize=dq, qk=row.get("attention_qk"),
                                                   pv=row.get("attention_pv")),
            "pflash_target_prefill": forward_work(t, kept, itemsize, quantize=tq),
            "full_target_prefill": forward_work(t, S, itemsize, quantize=tq)}


def fits(row: dict, card: Card) -> dict[str, bool] | None:
    """Whether each path's floor (weights + KV cache; no activations) fits the card's memory.
    False is certain; True is not a promise. PFlash keeps both models loaded (run.py)."""
    m = _models(row)
    if m is None or row.get("kept_frac") is None:
        return None
    d, t, itemsize, dq, tq = m
    S, kept = row["S"], round(row["kept_frac"] * row["S"])
    wt, kv = weight_bytes(t, itemsize, tq), row.get("target_kv_cache")
    return {"pflash": wt + weight_bytes(d, itemsize, dq) + kv_bytes(t, kept, itemsize, kv)
            <= card.memory,
            "full": wt + kv_bytes(t, S, itemsize, kv) <= card.memory}


def floor(row: dict) -> dict | None:
    """The row's arithmetic floor on the card it was measured on: each modelled stage at that
    card's roofline (`Work.time`, the measured achievable matmul rate: every FLOP of the
    drafter's sparse attention and of cuDNN's dense attention counted at the GEMM rate, so it
    is a floor, not a prediction), PFlash = drafter forward + target prefill of the kept tokens
    (the small unmodelled stages count 0); keys pflash_ttft_s, full_ttft_s, speedup. None:
    the card or models are not modelled."""
    src = MEASURED_ON.get(row.get("device"))
    work = stage_work(row)
    if src is None or work is None or not all(w.runs_on(src) for w in work.values()):
        return None
    pf = work["pflash_drafter_forward"].time(src) + work["pflash_target_prefill"].time(src)
    full = work["full_target_prefill"].time(src)
    return {"pflash_ttft_s": pf, "full_ttft_s": full, "speedup": full / pf}


def project(row: dict, card: Card = RTX3090) -> dict | None:
    """The row's measured stage times and TTFTs scaled onto `card` (module docstring), keyed as
    the row's (`pflash_target_prefill_s`, ..., `pflash_ttft_s`, `full_ttft_s`), plus
    `pflash_fits` / `full_fits`; a path that did not run has no keys. None: the row's card or
    models are not modelled, or neither path has per-stage times."""
    src = MEASURED_ON.get(row.get("device"))
    work = stage_work(row)
    if src is None or work is None or not all(w.runs_on(card) for w in work.values()):
        return None  # e.g. an fp8 row onto a card without fp8 tensor math (a 3090)
    out = {}
    for path in ("pflash", "full"):
        stages = [k for k in row if k.startswith(f"{path}_") and k.endswith("_s")
                  and k not in (f"{path}_ttft_s", f"{path}_compile_s", f"{path}_decode_s")]
        if f"{path}_target_prefill_s" not in stages or row.get(f"{path}_ttft_s") is None:
            continue  # this path did not run (e.g. recorded as not fitting the budget)
        for k in stages:
            name = k.removesuffix("_s")
            ratio = (work[name].time(card) / work[name].time(src) if name in work
                     else src.bandwidth / card.bandwidth)
            out[k] = row[k] * ratio
        out[f"{path}_ttft_s"] = (row[f"{path}_ttft_s"] * sum(out[k] for k in stages)
                                 / sum(row[k] for k in stages))
    if not out:
        return None
    for path, ok in fits(row, card).items():
        out[f"{path}_fits"] = ok
    return out
