"""Load a converted checkpoint directory (docs/design.md section 4) into a `Model`.

The directory holds config.json (checked by `Qwen3Config.from_file`), model.safetensors (or
shards with model.safetensors.index.json) in our flattened names, and tokenizer.json when
present. Tensors are memory-mapped and put on the default device one at a time, so host memory
never holds a second copy of the model. All problems are reported in one `CheckpointError`; an
unreadable file is reported once, without the list of tensors it would have held.

Placement (`place`, a params.Placement from the caller, e.g. sharding.Placement for a target
split over N devices): asked once, before any tensor is read, where every tensor goes (so a
layout it refuses fails before any transfer); each tensor then goes from its memory map (or
its host quantization) straight into its layout, each device receiving only its own slice. A
target too big for one device is never whole on one device, not even one tensor at a time.

Quantization (models/quant.py, docs/design.md section 8): a checkpoint written by
`pflash-convert --quantize` has quantization.json and stores each projection as
`layers.NAME.qvalues` + `layers.NAME.scale`; it loads as stored. `load_model(quantize=...)`
quantizes a full-precision checkpoint while loading: each projection is read from its memory
map, quantized on the host in numpy (one layer slice at a time) and only then put on the
device, so the device never holds a full-precision copy of the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from pflash_jax.models import quant
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import (
    PROJECTIONS,
    Params,
    Placement,
    abstract_params,
    param_shapes,
    put,
    shardings_of,
    unflatten,
)
from pflash_jax.models.tokenizer import Tokenizer
from pflash_jax.models.weights import (
    DTYPES,
    CheckpointError,
    TensorRef,
    check_tensors,
    read_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class Model:
    config: Qwen3Config
    params: Params
    tokenizer: Tokenizer | None = None

    @property
    def dtype(self):
        return self.params.embed_tokens.dtype

    @property
    def quantization(self) -> str | None:
        """The projections' format ("int8", "int4", "fp8"), or None when unquantized."""
        return quant.quantized_format(self.params)


def _is_projection(name: str) -> bool:
    return name.removeprefix("layers.") in PROJECTIONS


def load_model(path: str | Path, *, dtype=None, quantize: str | None = None,
               place: Placement | None = None) -> Model:
    """Load a converted checkpoint.

    dtype: cast on device (default: the file's dtype); of a quantized model it casts the
    unquantized tensors (embeddings, norms, head), i.e. it sets the compute dtype.
    quantize: None, or "int8" / "int4" / "fp8" to quantize the layer projections while loading,
    from the values as stored. A checkpoint stored quantized loads as stored (quantize must be
    None or its own format: re-quantizing quantized values would compound both errors).
    place: where the tensors go (module docstring); None: the default device.
    """
    path = Path(path)
    if quantize is not None:
        quant.check_format(quantize)
    cfg = Qwen3Config.from_file(path / "config.json")
    problems: list[str] = []
    stored = quant.read_side_file(path, problems)
    before = len(problems)
    refs = read_checkpoint(path, problems)
    unread = len(problems) > before
    if any(n.startswith("model.") for n in refs):  # one cause: not one line per tensor
        raise CheckpointError([f"{path}: an unconverted Hugging Face checkpoint (tensor names "
                               f"'model.*'): run pflash-convert, or load it with "
                               f"pflash_jax.embedded.open_model"])
    shapes = param_shapes(cfg)
    layout = {}
    if stored is not None:
        fmt, group = stored
        if quantize not in (None, fmt):
            problems.append(f"{path}: stored quantized as {fmt}; it cannot be loaded as "
                            f"{quantize} (convert the full-precision checkpoint instead)")
        try:
            layout = quant.stored_layout(shapes, fmt, group or quant.INT4_GROUP)
        except ValueError as e:
            problems.append(f"{path / quant.SIDE_FILE}: {e}")
        shapes = {k: s for k, s in shapes.items() if not _is_projection(k)}
    hint = ""
    if stored is None and any(n.endswith(".qvalues") for n in refs):
        hint = f" (quantized tensors, but no {quant.SIDE_FILE} says how to read them)"
    floats = {k: r for k, r in refs.items() if k not in layout}
    check_tensors(floats, shapes, path, problems, hint=hint, report_missing=not unread)
    _check_quantized(refs, layout, path, problems, report_missing=not unread)
    dtypes = {r.dtype for r in floats.values()}
    if len(dtypes) > 1:
        problems.append(f"{path}: tensors mix dtypes {sorted(dtypes)}; a converted checkpoint "
                        f"has one dtype")
    if problems:
        raise CheckpointError(problems)
    (code,) = dtypes  # one: checked above
    fmt, group = stored if stored is not None else (quantize, None)
    abstract = (abstract_params(cfg, DTYPES[code]) if fmt is None else
                quant.abstract_quantized(cfg, fmt, DTYPES[code], group or quant.INT4_GROUP))
    shardings = shardings_of(place, cfg, abstract)
    flat = {}
    for name in param_shapes(cfg):
        where = shardings.get(name)
        if stored is not None and _is_projection(name):
            w = quant.from_disk(refs[f"{name}.qvalues"].array(), refs[f"{name}.scale"].array(),
                                *stored)
            flat[name] = quant.to_device(w, where)
        elif quantize is not None and _is_projection(name):
            flat[name] = quant.to_device(quant.quantize_array(refs[name].array(), quantize),
                                         where)
        else:
            a = put(refs[name].array(), where)  # a cast keeps the layout (elementwise)
            flat[name] = a if dtype is None else a.astype(dtype)
    params = jax.block_until_ready(unflatten(flat))
    tok_path = path / "tokenizer.json"
    tokenizer = Tokenizer(tok_path) if tok_path.exists() else None
    return Model(cfg, params, tokenizer)


def _check_quantized(refs: dict[str, TensorRef], layout: dict, where: Path,
                     problems: list[str], report_missing: bool) -> None:
    """Each stored .qvalues / .scale tensor: present, of its shape and dtype code."""
    for name, (shape, code) in layout.items():
        ref = refs.get(name)
        if ref is None:
            if report_missing:
                problems.append(f"{where}: missing tensor {name!r} (expected shape {shape}, "
                                f"{code})")
            continue
        if ref.shape != tuple(shape):
            problems.append(f"{ref.file}: tensor {name!r} has shape {ref.shape}, "
                            f"expected {tuple(shape)}")
        if ref.dtype != code:
            problems.append(f"{ref.file}: tensor {name!r} has dtype {ref.dtype}, expected "
                            f"{code}")
