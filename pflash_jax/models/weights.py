"""safetensors in numpy (memory-mapped, bf16 via ml_dtypes) and the HF -> ours weight table.

Why our own reader: `safetensors.numpy` has no bfloat16 (numpy lacks the dtype) and loads whole
files. The format is simple (8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes), so we parse the header,
validate every entry against the file size, and hand out np.memmap views. Every problem is
collected and raised once as a `CheckpointError` naming the file and the tensor; a file that
cannot be read (truncated, absent, not safetensors) is one problem, and the tensors it would
have held are not listed as missing on top of it.

No stored tensor is ever dropped silently: unexpected tensors are errors, `hf_to_ours` refuses
refs it would not convert, and a tied config whose file stores lm_head.weight is converted
untied with that head, as transformers 5 loads it (`read_hf`, with a warning).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

from pflash_jax.models.config import ProblemsError, Qwen3Config
from pflash_jax.models.params import layer_shapes, param_shapes

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
          "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
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


def read_header_json(path: Path, problems: list[str]) -> tuple[dict, int, int] | None:
    """(header dict, data start, file size) of one safetensors file, or None with a problem."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                problems.append(f"{path}: not a safetensors file (only {size} bytes)")
                return None
            n = int.from_bytes(raw, "little")
            if n <= 0 or n > _MAX_HEADER or 8 + n > size:
                problems.append(f"{path}: not a safetensors file or truncated header "
                                f"(header length {n}, file size {size})")
                return None
            header = json.loads(f.read(n))
    except OSError as e:
        problems.append(f"{path}: cannot read ({e.strerror or e})")
        return None
    except ValueError as e:  # bad JSON or bad UTF-8
        problems.append(f"{path}: not a safetensors file (header is not JSON: {e})")
        return None
    if not isinstance(header, dict):
        problems.append(f"{path}: not a safetensors file (header is not a JSON object)")
        return None
    return header, 8 + n, size


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def read_header(path: Path, problems: list[str]) -> dict[str, TensorRef]:
    """Parse and validate one safetensors file's header; problems are appended, not raised.

    A file shorter than its header says (an interrupted download or copy) is one problem for
    the whole file, not one per tensor that runs off its end: no tensor of it is returned.
    """
    parsed = read_header_json(path, problems)
    if parsed is None:
        return {}
    header, base, size = parsed
    refs = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
            ok = (isinstance(dtype, str) and isinstance(shape, list)
                  and all(_count(s) for s in shape) and isinstance(offsets, list)
                  and len(offsets) == 2 and all(_count(o) for o in offsets))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            problems.append(f"{path}: tensor {name!r} has a malformed header entry {meta!r}")
            continue
        if dtype not in DTYPES:
            problems.append(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
            continue
        shape, (start, end) = tuple(shape), offsets
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        if end - start != nbytes:
            problems.append(f"{path}: tensor {name!r} byte range {end - start} does not match "
                            f"shape {shape} x {dtype} ({nbytes} bytes)")
            continue
        refs[name] = TensorRef(path, name, dtype, shape, base + start, base + end)
    data_end = max((r.end for r in refs.values()), default=base)
    if data_end > size:
        problems.append(f"{path}: truncated: its header describes {data_end} bytes but the file "
                        f"has {size} (an interrupted download or copy?)")
        return {}
    return refs


def read_checkpoint(directory: Path, problems: list[str]) -> dict[str, TensorRef]:
    """All tensors of `model.safetensors` or the shards named by `model.safetensors.index.json`."""
    index = directory / "model.safetensors.index.json"
    single = directory / "model.safetensors"
    if index.exists() and single.exists():
        # Either choice would silently drop the other file's tensors.
        problems.append(f"{directory}: both model.safetensors and {index.name} are present; "
                        f"remove the stale one")
        return {}
    if index.exists():
        return _read_shards(directory, index, problems)
    if single.exists():
        return read_header(single, problems)
    problems.append(f"{directory}: no model.safetensors or model.safetensors.index.json")
    return {}


def _read_shards(directory: Path, index: Path, problems: list[str]) -> dict[str, TensorRef]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except OSError as e:
        problems.append(f"{index}: cannot read ({e.strerror or e})")
        return {}
    except (ValueError, KeyError, TypeError) as e:  # bad JSON / UTF-8, no "weight_map"
        problems.append(f"{index}: not a shard index ({type(e).__name__}: {e})")
        return {}
    if not (isinstance(weight_map, dict)
            and all(isinstance(v, str) and v for v in weight_map.values())):
        problems.append(f"{index}: weight_map must map tensor names to shard file names")
        return {}
    refs: dict[str, TensorRef] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = directory / shard
        if not shard_path.exists():
            names = sorted(k for k, v in weight_map.items() if v == shard)
            problems.append(f"{shard_path}: shard listed in {index.name} is missing "
                            f"(holds {len(names)} tensors, e.g. {names[0]!r})")
            continue
        shard_refs = read_header(shard_path, problems)
        for name, ref in shard_refs.items():
            if name in refs:
                problems.append(f"{shard_path}: tensor {name!r} is also stored in "
                                f"{refs[name].file.name}")
            elif weight_map.get(name) != shard:
                problems.append(f"{shard_path}: tensor {name!r} is not listed for this "
                                f"shard in {index.name}")
            refs[name] = ref
        if shard_refs:
            for name in sorted(k for k, v in weight_map.items() if v == shard):
                if name not in shard_refs:
                    problems.append(f"{shard_path}: tensor {name!r} listed in {index.name} "
                                    f"is not in the shard")
    listed = set(weight_map.values())
    stray = sorted(p.name for p in directory.glob("*.safetensors") if p.name not in listed)
    if stray:
        warnings.warn(f"{directory}: {stray} are not listed in {index.name}: their tensors are "
                      f"not read", stacklevel=3)
    return refs


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
HEAD = "lm_head.weight"


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
                  where: Path, problems: list[str], hint: str = "",
                  report_missing: bool = True) -> None:
    """Missing / unexpected / wrong-shape / non-float tensors, all appended to problems.

    report_missing=False when a file could not be read: that problem (already reported once)
    explains every missing tensor, and listing each of them would bury it.
    """
    for name, shape in expected.items():
        ref = refs.get(name)
        if ref is None:
            if report_missing:
                problems.append(f"{where}: missing tensor {name!r} (expected shape {shape})")
            continue
        if ref.shape != tuple(shape):
            problems.append(f"{ref.file}: tensor {name!r} has shape {ref.shape}, "
                            f"expected {tuple(shape)}")
        if ref.dtype not in FLOAT_DTYPES:
            problems.append(f"{ref.file}: tensor {name!r} has dtype {ref.dtype}, "
                            f"expected one of {FLOAT_DTYPES}")
    for name in sorted(set(refs) - set(expected)):
        problems.append(f"{refs[name].file}: unexpected tensor {name!r}{hint}")


def read_hf_checkpoint(directory: Path, cfg: Qwen3Config,
                       problems: list[str]) -> dict[str, TensorRef]:
    """The tensors of a Hugging Face Qwen3 checkpoint, each checked against cfg's HF names and
    shapes exactly, for callers whose config is fixed (train_tiny's init_from): a stored
    lm_head.weight with a tied cfg is a problem here (`read_hf` applies transformers' rule
    instead). Problems are appended."""
    before = len(problems)
    refs = read_checkpoint(directory, problems)
    unread = len(problems) > before
    others = dict(refs)
    if cfg.tie_word_embeddings and others.pop(HEAD, None) is not None:
        problems.append(f"{refs[HEAD].file}: stores {HEAD!r} but the config ties the head to "
                        f"embed_tokens")
    check_tensors(others, {k: s for k, (_, s) in hf_expected(cfg).items()}, directory, problems,
                  report_missing=not unread)
    return refs


def read_hf(directory: Path) -> tuple[Qwen3Config, dict[str, TensorRef]]:
    """config.json and the checked tensors of an HF Qwen3 checkpoint; raises ConfigError, then
    CheckpointError, with every problem at once.

    A config with tie_word_embeddings=true whose files store their own lm_head.weight:
    transformers 5 uses the stored head (with a warning) rather than re-tying it to
    embed_tokens, so we do the same and warn; the returned config is untied.
    """
    cfg = Qwen3Config.from_file(directory / "config.json")
    problems: list[str] = []
    refs = read_checkpoint(directory, problems)
    if "embed_tokens" in refs and not any(n.startswith("model.") for n in refs):
        raise CheckpointError([f"{directory}: already converted (tensor names 'layers.*'): "
                               f"load it with load_model or open_model"])
    if cfg.tie_word_embeddings and HEAD in refs:
        warnings.warn(f"{refs[HEAD].file}: stores its own {HEAD!r} although "
                      f"{directory / 'config.json'} sets tie_word_embeddings=true; using the "
                      f"stored head, as transformers 5 does (the model is untied). Set "
                      f"tie_word_embeddings to false to silence this.", stacklevel=2)
        cfg = dataclasses.replace(cfg, tie_word_embeddings=False)
    check_tensors(refs, {k: s for k, (_, s) in hf_expected(cfg).items()}, directory, problems,
                  report_missing=not problems)
    if problems:
        raise CheckpointError(problems)
    return cfg, refs


def hf_to_ours(refs: dict[str, TensorRef], cfg: Qwen3Config, dtype) -> dict[str, Lazy]:
    """Apply HF_RULES lazily (refs already validated): our name -> Lazy tensor in `dtype`.

    Every ref must be used: a tensor this table would not convert is an error, never dropped.
    """
    dtype = np.dtype(dtype)
    shapes = param_shapes(cfg)
    out, used = {}, set()
    for rule in HF_RULES:
        if rule.ours == "lm_head" and cfg.tie_word_embeddings:
            continue
        names = ([rule.hf.format(i=i) for i in range(cfg.num_hidden_layers)]
                 if "{i}" in rule.hf else [rule.hf])
        used.update(names)

        def make(names=names, fn=TRANSFORMS[rule.transform]):
            return fn([refs[n].array() for n in names]).astype(dtype)

        out[rule.ours] = Lazy(shapes[rule.ours], dtype, make)
    unused = sorted(set(refs) - used)
    if unused:
        raise CheckpointError([f"{refs[n].file}: tensor {n!r} would not be converted"
                               for n in unused])
    return out
