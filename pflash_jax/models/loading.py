"""Load a converted checkpoint directory (docs/design.md section 4) into a `Model`.

The directory holds config.json (checked by `Qwen3Config.from_file`), model.safetensors (or
shards with model.safetensors.index.json) in our flattened names, and tokenizer.json when
present. Tensors are memory-mapped and put on the default device one at a time, so host memory
never holds a second copy of the model. All problems are reported in one `CheckpointError`; an
unreadable file is reported once, without the list of tensors it would have held.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import Params, param_shapes, unflatten
from pflash_jax.models.tokenizer import Tokenizer
from pflash_jax.models.weights import CheckpointError, check_tensors, read_checkpoint


@dataclasses.dataclass(frozen=True)
class Model:
    config: Qwen3Config
    params: Params
    tokenizer: Tokenizer | None = None

    @property
    def dtype(self):
        return self.params.embed_tokens.dtype


def load_model(path: str | Path, *, dtype=None) -> Model:
    """Load a converted checkpoint. dtype: cast on device (default: the file's dtype)."""
    path = Path(path)
    cfg = Qwen3Config.from_file(path / "config.json")
    problems: list[str] = []
    refs = read_checkpoint(path, problems)
    if any(n.startswith("model.") for n in refs):  # one cause: not one line per tensor
        raise CheckpointError([f"{path}: an unconverted Hugging Face checkpoint (tensor names "
                               f"'model.*'): run pflash-convert, or load it with "
                               f"pflash_jax.embedded.open_model"])
    check_tensors(refs, param_shapes(cfg), path, problems, report_missing=not problems)
    dtypes = {r.dtype for r in refs.values()}
    if len(dtypes) > 1:
        problems.append(f"{path}: tensors mix dtypes {sorted(dtypes)}; a converted checkpoint "
                        f"has one dtype")
    if problems:
        raise CheckpointError(problems)
    flat = {}
    for name in param_shapes(cfg):
        a = jnp.asarray(refs[name].array())
        flat[name] = a if dtype is None else a.astype(dtype)
    params = jax.block_until_ready(unflatten(flat))
    tok_path = path / "tokenizer.json"
    tokenizer = Tokenizer(tok_path) if tok_path.exists() else None
    return Model(cfg, params, tokenizer)
