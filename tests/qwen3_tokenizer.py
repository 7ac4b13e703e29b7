"""Where tests find the real Qwen3 tokenizer files (tokenizer.json + tokenizer_config.json with
the chat template): $PFLASH_QWEN3_TOKENIZER, else ../shared/qwen3-tokenizer beside the repo.
Tests that need them skip where they are absent (a user's fresh clone, CI)."""

import os
from pathlib import Path

import pytest

QWEN3_DIR = Path(os.environ.get("PFLASH_QWEN3_TOKENIZER")
                 or Path(__file__).resolve().parents[1].parent / "shared" / "qwen3-tokenizer")
QWEN3_JSON = QWEN3_DIR / "tokenizer.json"


def require_qwen3_dir() -> Path:
    """QWEN3_DIR, or skip the calling test."""
    if not (QWEN3_JSON.is_file() and (QWEN3_DIR / "tokenizer_config.json").is_file()):
        pytest.skip(f"Qwen3 tokenizer files not found in {QWEN3_DIR} (set "
                    f"PFLASH_QWEN3_TOKENIZER to a folder with tokenizer.json and "
                    f"tokenizer_config.json)")
    return QWEN3_DIR
