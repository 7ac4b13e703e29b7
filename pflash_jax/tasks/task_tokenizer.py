"""The tokenizer seen by the task generators, and the tiny tokenizer shipped with the package.

Generators accept any of: a `tokenizers.Tokenizer`, a path to a tokenizer.json, or a thin object
with `encode(str) -> list[int]` and `decode(list[int]) -> str` (optional `eos_id` /
`eos_token_id`). `as_tokenizer` wraps each once in a `TaskTokenizer`, which encodes without
special tokens and caches the pre-tokenized banks (filler sentences, word pools) so a 16K-token
case costs a few milliseconds after the first one.
"""

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EOS_TOKEN = "<|endoftext|>"
TINY_TOKENIZER_PATH = (
    Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer" / ("tokenizer.json")
)


class Bank:
    """A list of strings tokenized once: flat ids plus per-item offsets and lengths."""

    def __init__(self, encoded: Sequence[np.ndarray]):
        self.lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.flat = np.concatenate(encoded).astype(np.int32) if encoded else np.zeros(0, np.int32)

    def __len__(self):
        return len(self.lengths)

    def gather(self, items: np.ndarray) -> np.ndarray:
        """Concatenated ids of items (an index array), vectorized: no Python loop per item."""
        lens = self.lengths[items]
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, np.int32)
        starts = np.repeat(self.offsets[items] - (np.cumsum(lens) - lens), lens)
        return self.flat[starts + np.arange(total)]


class TaskTokenizer:
    """Uniform encode/decode over the accepted tokenizer kinds, with a bank cache."""

    def __init__(self, tok):
        self.raw = tok
        self._is_hf = hasattr(tok, "encode_batch") and hasattr(tok, "token_to_id")
        self._banks: dict[str, Bank] = {}
        if self._is_hf:
            self.eos_id = tok.token_to_id(EOS_TOKEN)
        else:
            self.eos_id = getattr(tok, "eos_id", getattr(tok, "eos_token_id", None))

    def encode(self, text: str) -> np.ndarray:
        if self._is_hf:
            ids = self.raw.encode(text, add_special_tokens=False).ids
        else:
            ids = self.raw.encode(text)
            ids = getattr(ids, "ids", ids)
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        if self._is_hf:
            encs = self.raw.encode_batch(list(texts), add_special_tokens=False)
            return [np.asarray(e.ids, dtype=np.int32) for e in encs]
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self._is_hf:
            return self.raw.decode(ids, skip_special_tokens=True)
        return self.raw.decode(ids)

    def bank(self, name: str, texts_fn) -> Bank:
        """The Bank for `name`, tokenizing texts_fn() on first use only."""
        if name not in self._banks:
            self._banks[name] = Bank(self.encode_batch(texts_fn()))
        return self._banks[name]


class ByteTokenizer:
    """UTF-8 bytes as ids (0-255), eos 256: needs no file; used to bootstrap the tiny tokenizer."""

    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


# One wrapper per tokenizer object, so bank caches survive across calls. Holding the object in
# the value keeps its id() from being reused while the entry exists.
_WRAPPERS: dict[int, tuple[object, TaskTokenizer]] = {}


def as_tokenizer(tok) -> TaskTokenizer:
    if isinstance(tok, TaskTokenizer):
        return tok
    if isinstance(tok, (str, Path)):
        return as_tokenizer(_load_file(str(tok)))
    hit = _WRAPPERS.get(id(tok))
    if hit is not None and hit[0] is tok:
        return hit[1]
    if not (hasattr(tok, "encode") and hasattr(tok, "decode")):
        raise TypeError(
            f"tokenizer must be a tokenizers.Tokenizer, a tokenizer.json path, or an object with "
            f"encode(str)->list[int] and decode(list[int])->str; got {type(tok).__name__}"
        )
    wrapped = TaskTokenizer(tok)
    _WRAPPERS[id(tok)] = (tok, wrapped)
    return wrapped


@functools.cache
def _load_file(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def tiny_tokenizer():
    """The project's tiny byte-level BPE (`tokenizers.Tokenizer`), trained on task text."""
    if not TINY_TOKENIZER_PATH.exists():
        raise FileNotFoundError(
            f"{TINY_TOKENIZER_PATH} is missing: run `python scripts/train_tokenizer.py`"
        )
    return _load_file(str(TINY_TOKENIZER_PATH))
