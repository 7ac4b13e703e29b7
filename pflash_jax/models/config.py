"""Qwen3 architecture config: frozen, hashable (a static jit argument), checked against HF.

Design choices:
- Field names follow Hugging Face's config.json, so `from_hf_config` reads almost as the identity.
- `from_hf_config` is strict. Keys fall in three sets: math keys we implement, keys that are
  accepted only at the value we implement (e.g. `hidden_act: silu`), and metadata that cannot
  change the forward pass (token ids, dtype, version). Anything else is refused: an unknown key
  may change the math, and silently ignoring it would give wrong logits that look plausible.
- RoPE scaling: none or YaRN, read from either the legacy `rope_theta` + `rope_scaling` keys
  (published Qwen3 checkpoints) or transformers 5's `rope_parameters` dict.
- Every understood key is type-checked as transformers' typed config would: booleans must be
  JSON booleans, integers must be integers (not booleans), floats integers or floats (never
  strings: "1e-6" is refused, not converted). Nothing is derived from a missing or mistyped
  value, so each bad key gives exactly one message.
- All problems are collected and raised once as a `ConfigError` naming the file and each key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np


class ProblemsError(ValueError):
    """Every problem found in one input, raised together (each names its file and culprit)."""

    kind = "input"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:  # one root cause: one line
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(problems)} {self.kind} problems:\n" +
                             "\n".join(f"  - {p}" for p in problems))


class ConfigError(ProblemsError):
    """Every problem found in one config file, each naming the file and the key."""

    kind = "config"


@dataclasses.dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling (transformers' `_compute_yarn_parameters`, defaults included)."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # None: 0.1 * ln(factor) + 1
    truncate: bool = True


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F
    num_hidden_layers: int  # L
    num_attention_heads: int  # N
    num_key_value_heads: int  # K
    head_dim: int = 128  # H, independent of D / N in Qwen3
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False
    rope_scaling: YarnScaling | None = None

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError([f"num_attention_heads={self.num_attention_heads} is not a multiple "
                               f"of num_key_value_heads={self.num_key_value_heads}"])

    @property
    def q_per_kv(self) -> int:  # G
        return self.num_attention_heads // self.num_key_value_heads

    def with_yarn(self, factor: float = 4.0, original: int = 32768) -> Qwen3Config:
        """Qwen3's documented 128K setting: YaRN factor 4 over the 32K pretraining length."""
        return dataclasses.replace(
            self, rope_scaling=YarnScaling(factor, original),
            max_position_embeddings=int(factor * original))

    # ---------------------------------------------------------------- RoPE
    def rope_inv_freq(self) -> tuple[np.ndarray, float]:
        """(inv_freq float32 [H/2], attention_factor) exactly as transformers computes them.

        Computed in numpy float32 with the same operation order as torch (base ** (i/dim) in
        float32), so the tables agree bit for bit with the reference at long positions.
        """
        dim, base = self.head_dim, self.rope_theta
        exponent = np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)
        pos_freqs = np.power(np.float32(base), exponent, dtype=np.float32)
        y = self.rope_scaling
        if y is None:
            return (np.float32(1.0) / pos_freqs).astype(np.float32), 1.0
        attention_factor = y.attention_factor
        if attention_factor is None:
            attention_factor = 1.0 if y.factor <= 1 else 0.1 * math.log(y.factor) + 1.0

        def correction_dim(rotations):
            return (dim * math.log(y.original_max_position_embeddings / (rotations * 2 * math.pi))
                    ) / (2 * math.log(base))

        low, high = correction_dim(y.beta_fast), correction_dim(y.beta_slow)
        if y.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # transformers' guard against a zero-width ramp
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low))
                       / np.float32(high - low), 0, 1).astype(np.float32)
        extrapolation_weight = np.float32(1) - ramp
        inv_extra = np.float32(1.0) / pos_freqs
        inv_inter = np.float32(1.0) / (np.float32(y.factor) * pos_freqs)
        inv_freq = inv_inter * (1 - extrapolation_weight) + inv_extra * extrapolation_weight
        return inv_freq.astype(np.float32), float(attention_factor)

    # ---------------------------------------------------------------- HF config.json
    @classmethod
    def from_hf_config(cls, d: dict, source: str = "config.json") -> Qwen3Config:
        return _parse_hf(d, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Qwen3Config:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
            why = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise ConfigError([f"{path}: cannot read a JSON config ({why})"]) from e
        if not isinstance(d, dict):
            raise ConfigError([f"{path}: top level is not a JSON object"])
        return _parse_hf(d, str(path))

    def to_hf_config(self) -> dict:
        """A config.json that transformers' Qwen3ForCausalLM and `from_hf_config` both read."""
        d = {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
            "attention_bias": False, "use_sliding_window": False,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "rope_scaling"},
            "rope_scaling": None,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = {"rope_type": "yarn",
                                 **dataclasses.asdict(self.rope_scaling)}
            if d["rope_scaling"]["attention_factor"] is None:
                del d["rope_scaling"]["attention_factor"]
        return d


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
# Optional, with transformers' Qwen3Config defaults when absent (None: derived, see _parse_hf).
_OPTIONAL = {"num_key_value_heads": None, "head_dim": 128, "rms_norm_eps": 1e-6,
             "rope_theta": 10000.0, "max_position_embeddings": 32768,
             "tie_word_embeddings": False}
# The JSON type of every key we read, checked as transformers' typed config would: a bool is
# never an int or a float (JSON true is not 1), a string is never a number ("1e-6" is refused,
# not converted), and an int is a valid float.
_INT, _POS, _NONNEG = "a positive integer", "a positive number", "a non-negative number"
_BOOL, _STR = "true or false", "a string"
_TYPES = {**dict.fromkeys((*_REQUIRED, "num_key_value_heads", "head_dim",
                           "max_position_embeddings"), _INT),
          "rms_norm_eps": _NONNEG, "rope_theta": _POS, "tie_word_embeddings": _BOOL}
_NULLABLE = {"num_key_value_heads", "head_dim"}  # null: derived, as transformers does
# Accepted only at the value the forward pass implements (compared with its type, so
# `attention_bias: 0` or `partial_rotary_factor: true` are refused, not taken as False / 1.0).
_FIXED = {"hidden_act": ("silu",), "attention_bias": (False,), "use_sliding_window": (False,),
          "partial_rotary_factor": (1.0, None)}
# Cannot change inference math (sliding_window/max_window_layers only act with
# use_sliding_window, which must be false; dropout is training only).
_METADATA = {"architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id",
             "initializer_range", "torch_dtype", "dtype", "transformers_version", "use_cache",
             "sliding_window", "max_window_layers", "attention_dropout", "_name_or_path",
             "layer_types", "rope_scaling", "rope_parameters", "output_attentions",
             "output_hidden_states", "return_dict"}
# rope_scaling / rope_parameters fields and their types (None = null allowed: the default).
_ROPE_TYPES = {"rope_type": _STR, "type": _STR, "factor": _POS,
               "original_max_position_embeddings": _INT, "beta_fast": _POS, "beta_slow": _POS,
               "attention_factor": _POS, "truncate": _BOOL, "rope_theta": _POS}
_ROPE_NULLABLE = {"original_max_position_embeddings", "beta_fast", "beta_slow",
                  "attention_factor"}


def _type_problem(key: str, v, kind: str, where: str) -> str | None:
    """A message if v is not of `kind` (JSON types, as above), else None."""
    if kind == _BOOL:
        ok = isinstance(v, bool)
    elif kind == _STR:
        ok = isinstance(v, str)
    elif isinstance(v, bool) or not isinstance(v, int | float):
        ok = False
    elif kind == _INT:
        ok = isinstance(v, int) and v > 0
    else:
        ok = math.isfinite(v) and (v > 0 if kind == _POS else v >= 0)
    return None if ok else f"{where} {key}={v!r} must be {kind}"


def _same(a, b) -> bool:
    return type(a) is type(b) and a == b or (  # 1 and 1.0 agree; True and 1 do not
        isinstance(a, int | float) and not isinstance(a, bool)
        and isinstance(b, float) and a == b)


def _parse_hf(d: dict, source: str) -> Qwen3Config:
    problems: list[str] = []
    where = f"{source}:"
    mt = d.get("model_type")
    if mt != "qwen3":
        problems.append(f"{where} model_type is {mt!r}; only 'qwen3' (dense Qwen3) is supported")
    arch = d.get("architectures")
    if arch is not None and arch != ["Qwen3ForCausalLM"]:
        problems.append(f"{where} architectures is {arch!r}; expected ['Qwen3ForCausalLM']")
    known = set(_REQUIRED) | set(_OPTIONAL) | set(_FIXED) | _METADATA
    for key in sorted(set(d) - known):
        problems.append(f"{where} unknown key {key!r} (may change the math; refusing to ignore it)")
    for key in _REQUIRED:
        if key not in d:
            problems.append(f"{where} missing required key {key!r}")
    for key, allowed in _FIXED.items():
        if key in d and not any(_same(d[key], a) for a in allowed):
            problems.append(f"{where} {key}={d[key]!r} is not supported (only {allowed[0]!r})")
    for key, kind in _TYPES.items():
        if key in d and not (key in _NULLABLE and d[key] is None):
            p = _type_problem(key, d[key], kind, where)
            if p:
                problems.append(p)
    lt = d.get("layer_types")
    if lt is not None:
        if not isinstance(lt, list):
            problems.append(f"{where} layer_types={lt!r} must be a list")
        elif any(t != "full_attention" for t in lt):
            problems.append(f"{where} layer_types has non-'full_attention' layers: unsupported")
        elif isinstance(d.get("num_hidden_layers"), int) and len(lt) != d["num_hidden_layers"]:
            problems.append(f"{where} layer_types has {len(lt)} entries but num_hidden_layers "
                            f"is {d['num_hidden_layers']}")

    theta, scaling = _parse_rope(d, where, problems)
    if problems:  # nothing below runs on a missing or wrongly typed value
        raise ConfigError(problems)
    kw = {k: d.get(k, v) for k, v in _OPTIONAL.items()}
    if kw["num_key_value_heads"] is None:
        kw["num_key_value_heads"] = d["num_attention_heads"]
    if kw["head_dim"] is None:
        kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
    kw["rope_theta"] = float(theta)
    kw["rms_norm_eps"] = float(kw["rms_norm_eps"])
    try:
        return Qwen3Config(**{k: d[k] for k in _REQUIRED}, **{**kw, "rope_scaling": scaling})
    except ConfigError as e:
        raise ConfigError([f"{where} {p}" for p in e.problems]) from None


def _parse_rope(d: dict, where: str, problems: list[str]):
    """(rope_theta, YarnScaling | None) from legacy or transformers-5 keys."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    if params is not None and scaling is not None:
        problems.append(f"{where} both rope_parameters and rope_scaling are set; keep one")
    rope = params if params is not None else scaling
    theta = d.get("rope_theta", _OPTIONAL["rope_theta"])
    key = "rope_parameters" if params is not None else "rope_scaling"
    if rope is None:
        return theta, None
    if not isinstance(rope, dict):
        problems.append(f"{where} {key} must be an object or null, got {rope!r}")
        return theta, None
    n_before = len(problems)
    for k in sorted(set(rope) - set(_ROPE_TYPES)):
        problems.append(f"{where} {key}.{k} is not understood (refusing to ignore it)")
    for k, kind in _ROPE_TYPES.items():
        if k in rope and not (k in _ROPE_NULLABLE and rope[k] is None):
            p = _type_problem(f"{key}.{k}", rope[k], kind, where)
            if p:
                problems.append(p)
    if len(problems) > n_before:
        return theta, None
    theta = rope.get("rope_theta", theta)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        problems.append(f"{where} {key}.rope_type={kind!r} is not supported (default or yarn)")
        return theta, None
    if "factor" not in rope:
        problems.append(f"{where} {key}.factor is required for yarn")
        return theta, None
    orig = rope.get("original_max_position_embeddings")
    if orig is None:  # transformers falls back to the model's own length
        orig = d.get("max_position_embeddings", _OPTIONAL["max_position_embeddings"])
    y = YarnScaling(
        factor=float(rope["factor"]), original_max_position_embeddings=orig,
        beta_fast=float(rope.get("beta_fast") or 32), beta_slow=float(rope.get("beta_slow") or 1),
        attention_factor=(None if rope.get("attention_factor") is None
                          else float(rope["attention_factor"])),
        truncate=rope.get("truncate", True))
    return theta, y


def _preset(hidden, inter, layers, heads, tied) -> Qwen3Config:
    return Qwen3Config(vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8,
                       head_dim=128, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
                       max_position_embeddings=40960, tie_word_embeddings=tied)


# Values of the published Qwen/Qwen3-*/config.json files.
MODEL_PRESETS: dict[str, Qwen3Config] = {
    "qwen3-0.6b": _preset(1024, 3072, 28, 16, True),
    "qwen3-1.7b": _preset(2048, 6144, 28, 16, True),
    "qwen3-4b": _preset(2560, 9728, 36, 32, True),
    "qwen3-8b": _preset(4096, 12288, 36, 32, False),
    "qwen3-14b": _preset(5120, 17408, 40, 40, False),
    "qwen3-32b": _preset(5120, 25600, 64, 64, False),
}


def model_preset(name: str) -> Qwen3Config:
    key = name.lower().removeprefix("qwen/")
    key = key if key.startswith("qwen3-") else f"qwen3-{key}"
    if key not in MODEL_PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[key]
