"""Structured-config schemas of the run job (`pflash-run`, `experiments/run.py`).

These dataclasses are registered with Hydra's ConfigStore as the schema of
pflash_jax/configs/config.yaml, so a misspelt key or a wrong type fails at composition, before
any model loads. The entry point converts the composed DictConfig to these plain dataclasses
once (`to_run_config`); nothing below the entry point sees Hydra.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ModelSpec:
    name: str | None = None  # recorded in metrics; None: the path's folder name, else preset
    #                          name, else tiny_<embedded> (see run.model_name)
    path: str | None = None  # checkpoint dir (HF or converted); None: embedded tiny model
    preset: str | None = None  # Qwen3 shape preset (qwen3-0.6b ...) for random_init
    random_init: bool = False  # random weights of `preset`'s shapes (speed runs)
    yarn: bool = False  # YaRN over the 32K pretraining length: Qwen3's way to 128K
    yarn_factor: float = 4.0  # 4 -> 131,072 positions (a config.json rope_scaling wins)
    dtype: str = "auto"  # auto (bf16 on GPU, f32 on CPU) | bf16 | f32
    embedded: str | None = None  # "drafter" | "target": which model of the tiny pair
    quantize: str | None = None  # weight-only int8 | int4 (group 128) | fp8 (W8A8 e4m3)
    kv_cache: str = "bf16"  # the target's KV cache as stored for decode: bf16 | int8 | fp8
    # The target's weights and KV cache split over this many devices (heads, kv heads, MLP,
    # vocab; pflash_jax/sharding.py). Must divide num_key_value_heads; the drafter keeps 1.
    tensor_parallel: int = 1


@dataclass
class AttentionSpec:
    """The drafter's attention. None everywhere: the selection preset's value (pflash:
    block-sparse "auto", specprefill: "dense"); a value set here (by the user, an attention/
    group file or an experiment) wins over the preset."""

    impl: str | None = None  # auto | reference | triton | mosaic | dense
    alpha: float | None = None  # normalised-mass threshold (docs/design.md 1.1); presets: 0.12
    density: float | None = None  # fixed block density (random weights) instead of alpha:
    #                               the kept fraction of causal blocks, structural ones included
    block_size: int | None = None  # presets: 128
    qk: str | None = None  # model | fp8: Q K^T operands of the block-sparse kernel (presets: model)
    pv: str | None = None  # model | fp8: its P @ V operands (fp8 needs qk=fp8; presets: model)
    # The target's dense attention, for its PFlash prefill and the full-prefill baseline alike:
    # auto (mosaic on Hopper, cudnn on other GPUs, reference on CPU) | cudnn | mosaic | reference
    target: str = "auto"


@dataclass
class SelectionSpec:
    """A preset and the options overriding it (None: the preset's value)."""

    preset: str = "pflash"
    span_size: int | None = None
    keep_ratio: float | None = None
    rounding: str | None = None
    forced_head_spans: int | None = None
    forced_tail_spans: int | None = None
    forced_spans: str | None = None  # inside (the budget) | on_top
    positions: str | None = None
    anchors: str | None = None  # none | ngram: question n-gram anchors (docs/design.md 1.2)
    anchor_ngram: int | None = None  # n-gram length (4)
    anchor_window: int | None = None  # the question: the prompt's last tokens (96)
    anchor_radius: int | None = None  # spans either side of a match (2; x2 past 32K, x4 past 64K)
    span_stride: int | None = None  # free span placement: windows start at its multiples
    n_tail: int | None = None
    tail_mode: str | None = None
    rope: str | None = None
    pooling: str | None = None
    pool_width: int | None = None
    score_layers: int | None = None  # early exit: score from the drafter's first k layers
    skip_layers: int | None = None  # the first j scoring layers do not vote (SpecPC)
    tail_weights: str | None = None  # uniform | linear (later rows weigh more) | rarity
    tail_rows: str | None = None  # last | question (only the question's tail rows vote)
    question_lines: int | None = None  # lines the question spans (2)
    trail_width: int | None = None  # trailing max: a token at least as important as the
    # trail_width tokens before it (0: off)
    fold_impl: str | None = None  # auto | xla | triton: the scoring fold's kernel


PROMPT_FORMATS = ("raw", "chat")


@dataclass
class TaskSpec:
    name: str = "niah_pflash"  # a pflash_jax.tasks task, or "random" (random ids: speed runs)
    seq_len: int = 4096
    n_cases: int = 1
    seed: int = 0
    prompt_file: str | None = None  # a text file read as the prompt instead of a task case
    # raw: the prompt as is (the tiny pair's format) | chat: one user message in the target
    # checkpoint's own chat template, thinking off (docs/design.md section 5.1)
    prompt_format: str = "raw"


@dataclass
class GridSpec:
    """Span size x keep ratio cells evaluated inside one job (quality sweeps): the drafter pass
    and the full-prefill baseline run once per prompt, then each cell only re-selects spans and
    prefills the target. Empty lists: no grid (the selection's own span_size / keep_ratio)."""

    span_sizes: list[int] = field(default_factory=list)
    keep_ratios: list[float] = field(default_factory=list)


@dataclass
class RunConfig:
    drafter: ModelSpec = field(default_factory=lambda: ModelSpec(embedded="drafter"))
    target: ModelSpec = field(default_factory=lambda: ModelSpec(embedded="target"))
    attention: AttentionSpec = field(default_factory=AttentionSpec)
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    task: TaskSpec = field(default_factory=TaskSpec)
    max_new_tokens: int = 16
    compare_full: bool = True  # time the full-prefill baseline in the same process
    repeats: int = 1  # warm timed repeats per case after one compile call (0: quality only)
    chunk: int | None = None  # sequence chunk for per-token work (memory); None: whole
    metrics_dir: str | None = None  # where metrics.json goes; None: Hydra's output dir
    experiment: str = "run"  # name recorded in metrics (set by experiment/ files)
    quiet: bool = False  # no per-case summary (sweeps)
    grid: GridSpec = field(default_factory=GridSpec)  # cells/<span>_<keep>/metrics.json each
    # Memory: a path (PFlash, full prefill) whose planned peak exceeds this many GiB is recorded
    # as "does not fit: needs X GiB of Y" and not run. None: what the device offers (no limit
    # on CPU). Per device (target.tensor_parallel > 1: each of the N). See pflash_jax/memory.py.
    memory_budget_gb: float | None = None
    # A card to reproduce: "rtx3090" = a 24 GiB budget and the sm_80 code path (the Triton
    # drafter kernel, cuDNN dense attention) on any GPU; explicit options still win. With
    # target.tensor_parallel=N: a rig of N such cards (the budget is per device).
    device_profile: str | None = None


def register() -> None:
    from hydra.core.config_store import ConfigStore

    # One schema for the whole config: its typed fields check every group's values too, and no
    # schema entry shows up among the group options of --help.
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def _int_at_least(problems: list[str], key: str, value, minimum: int, why: str = "") -> None:
    # bool is an int subclass: repeats=true is a typo, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        problems.append(f"{key} must be an int >= {minimum}{why}, got {value!r}")


def validate(c: RunConfig) -> RunConfig:
    """Values the schema's types let through but the job cannot honour, all reported at once
    (ValueError naming each option)."""
    problems: list[str] = []
    _int_at_least(problems, "repeats", c.repeats, 0,
                  " (0: one call per case, its time includes compilation)")
    _int_at_least(problems, "max_new_tokens", c.max_new_tokens, 1,
                  " (the first generated token ends TTFT)")
    if c.chunk is not None:
        _int_at_least(problems, "chunk", c.chunk, 1, " tokens (null: no chunking)")
    _int_at_least(problems, "task.seq_len", c.task.seq_len, 1)
    _int_at_least(problems, "task.n_cases", c.task.n_cases, 1)
    _int_at_least(problems, "task.seed", c.task.seed, 0)
    if c.task.name == "file" and not c.task.prompt_file:
        problems.append("task=file needs task.prompt_file=PATH (a UTF-8 text file)")
    if c.task.prompt_format not in PROMPT_FORMATS:
        problems.append(f"task.prompt_format must be one of {PROMPT_FORMATS}, got "
                        f"{c.task.prompt_format!r}")
    elif (c.task.prompt_format == "chat" and c.task.name == "random"
          and not c.task.prompt_file):
        problems.append("task.prompt_format=chat needs text to wrap: a task or "
                        "task.prompt_file, not task=random (random ids)")
    for role in ("drafter", "target"):
        spec = getattr(c, role)
        f = spec.yarn_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 1:
            problems.append(f"{role}.yarn_factor must be a number > 1, got {f!r}")
        if spec.dtype not in ("auto", "bf16", "f32"):
            problems.append(f"{role}.dtype must be auto, bf16 or f32, got {spec.dtype!r}")
        from pflash_jax.models.quant import FORMATS, KV_CACHE_FORMATS

        if spec.quantize is not None and spec.quantize not in FORMATS:
            problems.append(f"{role}.quantize must be one of {FORMATS} (or null), got "
                            f"{spec.quantize!r}")
        if spec.kv_cache not in KV_CACHE_FORMATS:
            problems.append(f"{role}.kv_cache must be one of {KV_CACHE_FORMATS}, got "
                            f"{spec.kv_cache!r}")
    n = c.target.tensor_parallel
    _int_at_least(problems, "target.tensor_parallel", n, 1, " (devices)")
    if c.drafter.tensor_parallel != 1:
        problems.append(f"drafter.tensor_parallel must be 1: the drafter runs on one device "
                        f"(only the target is sharded), got {c.drafter.tensor_parallel!r}")
    if isinstance(n, int) and not isinstance(n, bool) and n > 1:
        import jax

        if jax.device_count() < n:  # the kv-head check needs the model: run.placement's
            problems.append(f"target.tensor_parallel={n} needs {n} devices, jax sees "
                            f"{jax.device_count()} (on the CPU: "
                            f"XLA_FLAGS=--xla_force_host_platform_device_count={n})")
    from pflash_jax.attention.api import DENSE_IMPLS

    if c.attention.target not in DENSE_IMPLS:
        problems.append(f"attention.target must be one of {DENSE_IMPLS}, got "
                        f"{c.attention.target!r}")
    if c.device_profile is not None and c.device_profile not in DEVICE_PROFILES:
        problems.append(f"device_profile must be one of {sorted(DEVICE_PROFILES)} (or null), "
                        f"got {c.device_profile!r}")
    b = c.memory_budget_gb
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0):
        problems.append(f"memory_budget_gb must be a number of GiB > 0 (or null), got {b!r}")
    for sp in c.grid.span_sizes:
        _int_at_least(problems, "grid.span_sizes[...]", sp, 1)
    if problems:
        raise ValueError("; ".join(problems))
    return apply_profile(c)


# A card's budget and code path. rtx3090: 24 GB of GDDR6X (24 GiB as the driver reports it),
# sm_86: no Mosaic GPU (no wgmma / TMA), so the Triton block-sparse kernel and cuDNN.
DEVICE_PROFILES = {"rtx3090": {"memory_budget_gb": 24.0, "drafter_impl": "triton",
                               "target_attention": "cudnn"}}


def apply_profile(c: RunConfig) -> RunConfig:
    """Fill what `device_profile` decides and the run left unset: the budget, the drafter's
    kernel (unless the preset's drafter is dense) and the target's dense attention ("auto" is
    read as unset)."""
    if c.device_profile is None:
        return c
    from pflash_jax.pflash.config import PRESETS

    prof = DEVICE_PROFILES[c.device_profile]
    att = c.attention
    preset_impl = PRESETS.get(c.selection.preset, {}).get("attention_impl")
    impl = att.impl if att.impl is not None or preset_impl == "dense" else prof["drafter_impl"]
    target = prof["target_attention"] if att.target == "auto" else att.target
    budget = prof["memory_budget_gb"] if c.memory_budget_gb is None else c.memory_budget_gb
    return dataclasses.replace(c, attention=dataclasses.replace(att, impl=impl, target=target),
                               memory_budget_gb=budget)


def to_run_config(d) -> RunConfig:
    """DictConfig (or plain dict) -> validated RunConfig dataclasses; unknown keys, missing
    mandatory values (`???`) and bad values are errors naming the option."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(d, DictConfig):
        try:
            d = OmegaConf.to_container(d, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            key = getattr(e, "full_key", None) or "an option"
            hint = " (task=file reads the prompt from it)" if key == "task.prompt_file" else ""
            raise ValueError(f"{key} must be set{hint}: add {key}=... to the command") from None
    d = {k: v for k, v in d.items() if k != "hydra"}
    sub = {"drafter": ModelSpec, "target": ModelSpec, "attention": AttentionSpec,
           "selection": SelectionSpec, "task": TaskSpec, "grid": GridSpec}
    names = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown run option(s) {sorted(unknown)}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        if k in sub and isinstance(v, dict):
            fields = {f.name for f in dataclasses.fields(sub[k])}
            bad = set(v) - fields
            if bad:
                raise ValueError(f"unknown {k} option(s) {sorted(bad)}; known: {sorted(fields)}")
            kw[k] = sub[k](**v)
        else:
            kw[k] = v
    return validate(RunConfig(**kw))
