"""Structured-config schemas of the run job (`pflash-run`, `experiments/run.py`).

These dataclasses are registered with Hydra's ConfigStore as the schema of configs/config.yaml,
so a misspelt key or a wrong type fails at composition, before any model loads. The entry
point converts the composed DictConfig to these plain dataclasses once (`to_run_config`);
nothing below the entry point sees Hydra.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ModelSpec:
    name: str = "tiny_target"
    path: str | None = None  # checkpoint dir (HF or converted); None: embedded tiny model
    preset: str | None = None  # Qwen3 shape preset (qwen3-0.6b ...) for random_init
    random_init: bool = False  # random weights of `preset`'s shapes (speed runs)
    yarn: bool = False  # YaRN factor 4 over 32K (Qwen3's 128K setting)
    dtype: str = "auto"  # auto (bf16 on GPU, f32 on CPU) | bf16 | f32
    embedded: str | None = None  # "drafter" | "target": which model of the tiny pair


@dataclass
class AttentionSpec:
    impl: str = "auto"  # drafter attention: auto | reference | triton | mosaic | dense
    alpha: float = 0.12  # normalised-mass threshold (DESIGN 1.1)
    density: float | None = None  # fixed block density (random weights) instead of alpha
    block_size: int = 128


@dataclass
class SelectionSpec:
    """A preset and the options overriding it (None: the preset's value)."""

    preset: str = "pflash"
    span_size: int | None = None
    keep_ratio: float | None = None
    rounding: str | None = None
    forced_head_spans: int | None = None
    forced_tail_spans: int | None = None
    positions: str | None = None
    n_tail: int | None = None
    tail_mode: str | None = None
    rope: str | None = None
    pooling: str | None = None
    pool_width: int | None = None


@dataclass
class TaskSpec:
    name: str = "niah_pflash"  # a pflash_jax.tasks task, or "random" (random ids: speed runs)
    seq_len: int = 4096
    n_cases: int = 1
    seed: int = 0
    prompt_file: str | None = None  # a text file read as the prompt instead of a task case


@dataclass
class GridSpec:
    """Span size x keep ratio cells evaluated inside one job (quality sweeps): the drafter pass
    and the full-prefill baseline run once per prompt, then each cell only re-selects spans and
    prefills the target. Empty lists: no grid (the selection's own span_size / keep_ratio)."""

    span_sizes: list[int] = field(default_factory=list)
    keep_ratios: list[float] = field(default_factory=list)


@dataclass
class RunConfig:
    drafter: ModelSpec = field(default_factory=lambda: ModelSpec("tiny_drafter",
                                                                 embedded="drafter"))
    target: ModelSpec = field(default_factory=lambda: ModelSpec("tiny_target",
                                                                embedded="target"))
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


def register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="model", name="model_schema", node=ModelSpec)
    cs.store(group="attention", name="attention_schema", node=AttentionSpec)
    cs.store(group="selection", name="selection_schema", node=SelectionSpec)
    cs.store(group="task", name="task_schema", node=TaskSpec)


def to_run_config(d) -> RunConfig:
    """DictConfig (or plain dict) -> RunConfig dataclasses; unknown keys are an error."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
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
    return RunConfig(**kw)
