"""A thin wrapper over `tokenizers` (tokenizer.json): ids as int32 numpy arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class Tokenizer:
    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _HFTokenizer

        path = Path(path)
        self.path = path
        self._tok = _HFTokenizer.from_file(str(path))
        cfg_path = path.with_name("tokenizer_config.json")
        self.eos_token: str | None = None
        if cfg_path.exists():
            eos = json.loads(cfg_path.read_text()).get("eos_token")
            self.eos_token = eos.get("content") if isinstance(eos, dict) else eos

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=add_special_tokens).ids,
                          np.int32)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __len__(self) -> int:
        return self.vocab_size
