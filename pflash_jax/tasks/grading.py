"""Exact-match grading of a model's continuation.

The continuation (ids cut at the first eos and decoded, or text cut at the eos token) is split
into runs: maximal pieces between whitespace and commas, each stripped of surrounding
punctuation .;:!?"'()[] and lowercased (answers are digits, lowercase words or upper-case
variable names, so case never decides a match).
- Single-value tasks (niah_single, niah_pflash, niah_multikey): 1.0 iff the FIRST run equals
  the value. " 1234567." and " 1234567 is the number" score 1; " 12345678", " 123 4567" and
  " The number is 1234567" score 0.
- Multi-value tasks: 1.0 iff every expected value is one of the runs (whole-run match, so
  "123" never matches inside "1234"); order is free; extra runs are not penalized (as in
  RULER), a missing one gives 0.0 (no partial credit).
"""

import re

import numpy as np

from pflash_jax.tasks.case import Case
from pflash_jax.tasks.task_tokenizer import EOS_TOKEN, as_tokenizer

_SPLIT = re.compile(r"[\s,]+")
_PUNCT = ".;:!?\"'()[]"


def runs(text: str) -> list[str]:
    out = (r.strip(_PUNCT).lower() for r in _SPLIT.split(text))
    return [r for r in out if r]


def continuation_text(generated, tokenizer=None) -> str:
    if isinstance(generated, str):
        # text decoded with special tokens kept: the answer ends at the first eos too
        return generated.split(EOS_TOKEN, 1)[0]
    if tokenizer is None:
        raise ValueError("scoring generated ids needs the tokenizer")
    tok = as_tokenizer(tokenizer)
    ids = np.asarray(generated).reshape(-1)
    if tok.eos_id is not None:
        hit = np.flatnonzero(ids == tok.eos_id)
        if len(hit):
            ids = ids[: hit[0]]
    return tok.decode(ids)


def score(case: Case, generated, tokenizer=None) -> float:
    """1.0 or 0.0: exact match of `generated` (str, or ids with tokenizer) against case."""
    from pflash_jax.tasks.registry import TASKS

    got = runs(continuation_text(generated, tokenizer))
    want = [a.lower() for a in case.answers]
    if not TASKS[case.task].multi:
        return float(bool(got) and got[0] == want[0])
    return float(set(want) <= set(got))
