"""safetensors in numpy (memory-mapped, bf16 via ml_dtypes) and the HF -> ours weight table.

Why our own reader: `safetensors.numpy` has no bfloat16 (numpy lacks the dtype) and loads whole
files. The format is simple (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes), so we parse the header,
validate every entry against the file size, and hand out np.memmap views. Every problem is
collected and raised once as a `CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

from pflash_jax.models.config import ProblemsError, Qwen3Config
from pflash_jax.models.params import layer_shapes, param_shapes

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
          "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F32", "BF16", "F16")
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ProblemsError):
    """Every problem found in a checkpoint, each naming the file and the tensor."""

    kind = "checkpoint"


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor inside a safetensors file: read lazily through np.memmap."""

    file: Path
    name: str
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    def array(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        if count == 0:
            return np.zeros(self.shape, DTYPES[self.dtype])
        return np.memmap(self.file, dtype=DTYPES[self.dtype], mode="r", offset=self.start,
                         shape=self.shape)


def read_header(path: Path, problems: list[str]) -> dict[str, TensorRef]:
    """Parse and validate one safetensors file's header; problems are appended, not raised."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                problems.append(f"{path}: not a safetensors file (only {size} bytes)")
                return {}
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                problems.append(f"{path}: not a safetensors file or truncated header "
                                f"(header length {n}, file size {size})")
                return {}
            header = json.loads(f.read(n))
    except OSError as e:
        problems.append(f"{path}: cannot read ({e})")
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{path}: not a safetensors file (header is not JSON: {e})")
        return {}
    if not isinstance(header, dict):
        problems.append(f"{path}: not a safetensors file (header is not a JSON object)")
        return {}
    base = 8 + n
    refs = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = meta["dtype"], tuple(int(s) for s in meta["shape"])
            start, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: tensor {name!r} has a malformed header entry {meta!r}")
            continue
        if dtype not in DTYPES:
            problems.append(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
            continue
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        if end - start != nbytes:
            problems.append(f"{path}: tensor {name!r} byte range {end - start} does not match "
                            f"shape {shape} x {dtype} ({nbytes} bytes)")
            continue
        if base + end > size:
            problems.append(f"{path}: truncated: tensor {name!r} ends at byte {base + end} "
                            f"but the file has {size} bytes")
            continue
        refs[name] = TensorRef(path, name, dtype, shape, base + start, base + end)
    return refs


def read_checkpoint(directory: Path, problems: list[str]) -> dict[str, TensorRef]:
    """All tensors of `model.safetensors` or the shards named by `model.safetensors.index.json`."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            problems.append(f"{index}: unreadable shard index ({e!r})")
            return {}
        refs: dict[str, TensorRef] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.exists():
                names = sorted(k for k, v in weight_map.items() if v == shard)
                problems.append(f"{shard_path}: shard listed in {index.name} is missing "
                                f"(holds {len(names)} tensors, e.g. {names[0]!r})")
                continue
            for name, ref in read_header(shard_path, problems).items():
                if weight_map.get(name) != shard:
                    problems.append(f"{shard_path}: tensor {name!r} is not listed for this "
                                    f"shard in {index.name}")
                refs[name] = ref
        for name, shard in weight_map.items():
            if name not in refs and (directory / shard).exists():
                problems.append(f"{directory / shard}: tensor {name!r} listed in {index.name} "
                                f"is not in the shard")
        return refs
    if single.exists():
        return read_header(single, problems)
    problems.append(f"{directory}: no model.safetensors or model.safetensors.index.json")
    return {}


@dataclasses.dataclass(frozen=True)
class Lazy:
    """A tensor produced on demand while writing, so a conversion holds one tensor at a time."""

    shape: tuple[int, ...]
    dtype: np.dtype
    make: Callable[[], np.ndarray]


def write_safetensors(path: Path, tensors: dict[str, np.ndarray | Lazy],
                      metadata: dict[str, str] | None = None) -> None:
    """Stream tensors to a safetensors file (header first, then each tensor's bytes)."""
    header, offset = {}, 0
    for name, a in tensors.items():
        dtype = np.dtype(a.dtype)
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, a in tensors.items():
            arr = np.ascontiguousarray(a.make() if isinstance(a, Lazy) else a)
            if arr.shape != tuple(a.shape) or arr.dtype != np.dtype(a.dtype):
                raise AssertionError(f"{name}: produced {arr.shape} {arr.dtype}, "
                                     f"declared {a.shape} {a.dtype}")
            f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- HF -> ours
@dataclasses.dataclass(frozen=True)
class Rule:
    """Our tensor `ours` is built from HF tensor(s) `hf` ({i} = layer index) by `transform`."""

    ours: str
    hf: str
    transform: str  # key of TRANSFORMS


def _stack(parts):
    return np.stack(parts)


TRANSFORMS: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "identity": lambda parts: parts[0],
    "transpose": lambda parts: parts[0].T,  # HF Linear [out, in] -> Flax kernel [in, out]
    "stack": _stack,  # per-layer vectors -> [L, ...]
    "stack_transpose": lambda parts: np.stack([p.T for p in parts]),
}

HF_RULES: tuple[Rule, ...] = (
    Rule("embed_tokens", "model.embed_tokens.weight", "identity"),
    Rule("layers.input_layernorm", "model.layers.{i}.input_layernorm.weight", "stack"),
    Rule("layers.q_proj", "model.layers.{i}.self_attn.q_proj.weight", "stack_transpose"),
    Rule("layers.k_proj", "model.layers.{i}.self_attn.k_proj.weight", "stack_transpose"),
    Rule("layers.v_proj", "model.layers.{i}.self_attn.v_proj.weight", "stack_transpose"),
    Rule("layers.q_norm", "model.layers.{i}.self_attn.q_norm.weight", "stack"),
    Rule("layers.k_norm", "model.layers.{i}.self_attn.k_norm.weight", "stack"),
    Rule("layers.o_proj", "model.layers.{i}.self_attn.o_proj.weight", "stack_transpose"),
    Rule("layers.post_attention_layernorm",
         "model.layers.{i}.post_attention_layernorm.weight", "stack"),
    Rule("layers.gate_proj", "model.layers.{i}.mlp.gate_proj.weight", "stack_transpose"),
    Rule("layers.up_proj", "model.layers.{i}.mlp.up_proj.weight", "stack_transpose"),
    Rule("layers.down_proj", "model.layers.{i}.mlp.down_proj.weight", "stack_transpose"),
    Rule("norm", "model.norm.weight", "identity"),
    Rule("lm_head", "lm_head.weight", "transpose"),
)
# Present in some tied checkpoints; transformers re-ties it to embed_tokens on load.
TIED_EXTRA = "lm_head.weight"


def hf_expected(cfg: Qwen3Config) -> dict[str, tuple[Rule, tuple[int, ...]]]:
    """HF tensor name -> (rule, HF shape) for this config."""
    D, V = cfg.hidden_size, cfg.vocab_size
    per_layer = layer_shapes(cfg)
    out = {}
    for rule in HF_RULES:
        if rule.ours == "lm_head" and cfg.tie_word_embeddings:
            continue
        if rule.ours.startswith("layers."):
            s = per_layer[rule.ours.removeprefix("layers.")]
            hf_shape = s[::-1] if rule.transform == "stack_transpose" else s
            for i in range(cfg.num_hidden_layers):
                out[rule.hf.format(i=i)] = (rule, hf_shape)
        else:
            shape = {"embed_tokens": (V, D), "norm": (D,), "lm_head": (V, D)}[rule.ours]
            out[rule.hf] = (rule, shape)
    return out


def check_tensors(refs: dict[str, TensorRef], expected: dict[str, tuple[int, ...]],
                  where: Path, problems: list[str], allowed_extra=(), hint: str = "") -> None:
    """Missing / unexpected / wrong-shape / non-float tensors, all appended to problems."""
    for name, shape in expected.items():
        ref = refs.get(name)
        if ref is None:
            problems.append(f"{where}: missing tensor {name!r} (expected shape {shape})")
            continue
        if ref.shape != tuple(shape):
            problems.append(f"{ref.file}: tensor {name!r} has shape {ref.shape}, "
                            f"expected {tuple(shape)}")
        if ref.dtype not in FLOAT_DTYPES:
            problems.append(f"{ref.file}: tensor {name!r} has dtype {ref.dtype}, "
                            f"expected one of {FLOAT_DTYPES}")
    for name in sorted(set(refs) - set(expected) - set(allowed_extra)):
        problems.append(f"{refs[name].file}: unexpected tensor {name!r}{hint}")


def read_hf_checkpoint(directory: Path, cfg: Qwen3Config,
                       problems: list[str]) -> dict[str, TensorRef]:
    """The tensors of a Hugging Face Qwen3 checkpoint, each checked against cfg's HF names and
    shapes (a tied checkpoint may also carry lm_head.weight); problems are appended."""
    refs = read_checkpoint(directory, problems)
    extra = (TIED_EXTRA,) if cfg.tie_word_embeddings else ()
    check_tensors(refs, {k: s for k, (_, s) in hf_expected(cfg).items()}, directory, problems,
                  extra)
    return refs


def hf_to_ours(refs: dict[str, TensorRef], cfg: Qwen3Config, dtype) -> dict[str, Lazy]:
    """Apply HF_RULES lazily (refs already validated): our name -> Lazy tensor in `dtype`."""
    dtype = np.dtype(dtype)
    shapes = param_shapes(cfg)
    out = {}
    for rule in HF_RULES:
        if rule.ours == "lm_head" and cfg.tie_word_embeddings:
            continue
        names = ([rule.hf.format(i=i) for i in range(cfg.num_hidden_layers)]
                 if "{i}" in rule.hf else [rule.hf])

        def make(names=names, fn=TRANSFORMS[rule.transform]):
            return fn([refs[n].array() for n in names]).astype(dtype)

        out[rule.ours] = Lazy(shapes[rule.ours], dtype, make)
    return out
