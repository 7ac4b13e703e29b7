"""`pflash-convert HF_DIR OUT_DIR [--dtype bf16|f32]`: Hugging Face Qwen3 -> converted layout.

Reads config.json (strictly, see models/config.py) and model.safetensors or its shards, checks
every tensor against the config (all problems reported at once), applies the declarative
HF_RULES table (transpose to [in, out], stack layers on L), and writes model.safetensors plus
config.json and tokenizer files. Output goes to a temporary sibling directory that is renamed
into place at the end, so an interrupted conversion never leaves a half-written OUT_DIR.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.weights import (
    CheckpointError,
    hf_to_ours,
    read_hf_checkpoint,
    write_safetensors,
)

OUT_DTYPES = {"bf16": ml_dtypes.bfloat16, "f32": np.float32}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json")


def convert(hf_dir: str | Path, out_dir: str | Path, dtype: str = "bf16",
            overwrite: bool = False) -> Path:
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(OUT_DTYPES)}, got {dtype!r}")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass --overwrite to replace it)")
    cfg = Qwen3Config.from_file(hf_dir / "config.json")
    problems: list[str] = []
    refs = read_hf_checkpoint(hf_dir, cfg, problems)
    if problems:
        raise CheckpointError(problems)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tensors = hf_to_ours(refs, cfg, OUT_DTYPES[dtype])
        write_safetensors(tmp / "model.safetensors", tensors,
                          metadata={"format": "pflash_jax", "source": hf_dir.name})
        for name in SIDE_FILES:
            if (hf_dir / name).exists():
                shutil.copy2(hf_dir / name, tmp / name)
        if out_dir.exists():  # overwrite: swap, then delete the old copy
            old = out_dir.with_name(f".{out_dir.name}.old")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pflash-convert", description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir", help="Hugging Face Qwen3 checkpoint directory")
    ap.add_argument("out_dir", help="output directory (must not exist unless --overwrite)")
    ap.add_argument("--dtype", choices=sorted(OUT_DTYPES), default="bf16")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    try:
        out = convert(args.hf_dir, args.out_dir, args.dtype, args.overwrite)
    except (CheckpointError, ValueError, FileExistsError) as e:
        print(f"pflash-convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
