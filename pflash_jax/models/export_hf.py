"""Write our params as an ordinary Hugging Face Qwen3 checkpoint (the inverse of conversion).

Used to ship the tiny trained pair (docs/design.md section 5): the export goes through the same
converter and loader as a real Qwen3 checkpoint and loads in transformers too. The mapping is
`weights.HF_RULES` read backwards, so the two directions cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.params import Params, flatten
from pflash_jax.models.weights import HF_RULES, write_safetensors


def hf_tensors(params: Params, cfg: Qwen3Config, dtype=np.float32) -> dict[str, np.ndarray]:
    """HF name -> numpy array ([out, in] Linear weights, one tensor per layer)."""
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()
            if v is not None}
    out = {}
    for rule in HF_RULES:
        if rule.ours not in flat:  # lm_head of a tied model
            continue
        a = flat[rule.ours]
        if rule.transform == "identity":
            out[rule.hf] = a
        elif rule.transform == "transpose":
            out[rule.hf] = a.T
        elif rule.transform in ("stack", "stack_transpose"):
            for i in range(cfg.num_hidden_layers):
                out[rule.hf.format(i=i)] = a[i].T if rule.transform == "stack_transpose" else a[i]
        else:
            raise AssertionError(f"no inverse for transform {rule.transform!r}")
    return {k: np.ascontiguousarray(v).astype(dtype) for k, v in out.items()}


def export_hf(params: Params, cfg: Qwen3Config, out_dir: str | os.PathLike, *,
              tokenizer_json: str | os.PathLike | None = None, eos_token: str | None = None,
              dtype=np.float32) -> Path:
    """Export to out_dir atomically (written to a temp dir beside it, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf_cfg = cfg.to_hf_config()
        hf_cfg["torch_dtype"] = np.dtype(dtype).name if np.dtype(dtype) != np.float32 else "float32"
        if tokenizer_json is not None:
            shutil.copy(tokenizer_json, tmp / "tokenizer.json")
            if eos_token is not None:
                from tokenizers import Tokenizer

                eos_id = Tokenizer.from_file(str(tokenizer_json)).token_to_id(eos_token)
                hf_cfg.update(eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=eos_id)
                (tmp / "tokenizer_config.json").write_text(json.dumps(
                    {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token,
                     "pad_token": eos_token, "model_max_length": cfg.max_position_embeddings},
                    indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        write_safetensors(tmp / "model.safetensors", hf_tensors(params, cfg, dtype),
                          metadata={"format": "pt"})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o755)  # mkdtemp makes it private
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
