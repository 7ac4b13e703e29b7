"""`Case` and the id-level assembly every generator shares.

Why id level: a case must be exactly `n_tokens` long in the tokens of the model that reads it,
and its needle positions must be exact. Re-tokenizing one long string would merge tokens across
piece boundaries and make both uncertain. Instead every piece (header, filler sentence or word,
needle, question) is tokenized on its own and the id arrays are concatenated. Pieces start with
a space or a newline, which byte-level BPE pre-tokenizers split on anyway, so the ids are almost
always what encoding `case.text` would give, but the ids, not the text, are the case.

Budget: fixed pieces (header, needles, question) are placed whole; the haystack gets the rest.
Whole filler units are added while they fit, then the next unit is cut to the exact remainder
(sentence haystacks) or the remainder is filled with extra words and, last resort, one-token
"." pads (word-list tasks, so that no word is cut into a different word).
Needles go between filler units, never inside one: a requested depth snaps to the nearest unit
boundary, and `Case.depth` reports the depth actually used (fraction of haystack tokens before
the first evidence needle).
"""

import dataclasses
import math

import numpy as np

from pflash_jax.tasks.task_tokenizer import Bank, TaskTokenizer


class BudgetError(ValueError):
    """n_tokens cannot hold the task's fixed pieces (needles + question); `need` is the
    smallest n_tokens that can (None where unknown)."""

    def __init__(self, message: str, need: int | None = None):
        super().__init__(message)
        self.need = need


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One generated prompt. ids end with the question and answer prefix, so a model's greedy
    continuation is its answer; `target` is the reference continuation used for training."""

    task: str
    seed: int
    ids: np.ndarray  # int32 [n_tokens]
    answers: list[str]  # expected values (all must appear; see grading.py)
    target: str  # reference continuation text, e.g. " 1234567."
    needle_positions: np.ndarray  # int32 [n]: every token of every evidence needle, sorted
    distractor_positions: np.ndarray  # int32 [m]: tokens of distractor needles (not evidence)
    depth: float  # fraction of the haystack before the first evidence needle; nan if spread out
    question: str
    text: str | None = None  # decode(ids), when requested
    prompt_format: str = "raw"  # "chat": wrapped in a chat template (chat.py)
    template_prefix: int = 0  # chat template tokens before the user message (positions include
    #                           them)
    template_tokens: int = 0  # all tokens the chat template adds (before + after the message)

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass
class Ctx:
    """What a generator gets: its RNG, tokenizer, and a way to learn its haystack budget.

    `prompt_budget(fixed)` returns the prompt length left for filler once `fixed` tokens of
    needles/header/question are placed. With `answer_in_budget` (training rows) the target and
    an eos are reserved too, so prompt + target + eos is exactly n_tokens.
    """

    task: str
    seed: int
    rng: np.random.Generator
    tok: TaskTokenizer
    n_tokens: int
    answer_in_budget: bool = False
    with_text: bool = True
    target_len: int = 0

    def set_target(self, target: str) -> None:
        self.target_len = len(self.tok.encode(target)) + 1 if self.answer_in_budget else 0

    @property
    def prompt_tokens(self) -> int:
        return self.n_tokens - self.target_len

    def haystack_budget(self, fixed: int, min_haystack: int = 0) -> int:
        h = self.prompt_tokens - fixed
        if h < min_haystack:
            need = fixed + min_haystack + self.target_len
            extra = " plus the answer and eos" if self.answer_in_budget else ""
            raise BudgetError(
                f"n_tokens={self.n_tokens} is too small for task {self.task!r} (seed "
                f"{self.seed}): its fixed pieces (header, needles, question{extra}) need "
                f"{need} tokens; minimum n_tokens is {need}", need
            )
        return h


def filler_stream(bank: Bank, n: int, rng: np.random.Generator, order: str):
    """Exactly n filler ids from bank units ('random' order or 'cycle' in bank order), and the
    unit boundaries (token offsets where a needle may go, 0 and n included)."""
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    mean = float(bank.lengths.mean())
    m = int(n / max(mean, 1.0) * 1.2) + 8
    while True:
        if order == "cycle":
            items = np.arange(m) % len(bank)
        else:
            items = rng.integers(0, len(bank), size=m)
        ends = np.cumsum(bank.lengths[items])
        if ends[-1] >= n:
            break
        m *= 2
    k = int(np.searchsorted(ends, n)) + 1  # units needed; the last one may be cut
    ids = bank.gather(items[:k])[:n]
    bounds = np.concatenate([[0], ends[: k - 1], [n]]).astype(np.int64)
    return ids, np.unique(bounds)


def snap(bounds: np.ndarray, n: int, depth: float) -> int:
    """Index into bounds of the boundary nearest to depth * n."""
    return int(np.argmin(np.abs(bounds - depth * n)))


def pick_slots(bounds, n, rng, k: int, lo: float, hi: float) -> np.ndarray:
    """k distinct boundary indices, uniform among those in [lo*n, hi*n] (widened if too few)."""
    idx = np.flatnonzero((bounds >= lo * n) & (bounds <= hi * n))
    if len(idx) < k:
        idx = np.arange(len(bounds))
    if len(idx) >= k:
        return np.sort(rng.choice(idx, size=k, replace=False))
    return np.sort(rng.choice(idx, size=k, replace=True))  # tiny haystack: needles adjacent


def insert_pieces(hay, bounds, slots, pieces, kinds):
    """Haystack with pieces[i] inserted at boundary bounds[slots[i]] (slots sorted ascending).

    Returns ids and, per kind, the token positions (relative to the haystack start) of the
    pieces of that kind."""
    out, pos = [], {}
    cur, off = 0, 0
    for s, p, kind in zip(slots, pieces, kinds, strict=True):
        b = int(bounds[s])
        out.append(hay[cur:b])
        off += b - cur
        pos.setdefault(kind, []).append(np.arange(off, off + len(p)))
        out.append(p)
        off += len(p)
        cur = b
    out.append(hay[cur:])
    return np.concatenate(out).astype(np.int32), pos


def finish(ctx: Ctx, parts, evidence, distractors, *, answers, target, question, depth) -> Case:
    """Concatenate [(ids)] parts, offset positions given relative to part index, build Case.

    evidence/distractors: lists of (part_index, relative positions array)."""
    starts = np.cumsum([0] + [len(p) for p in parts])
    ids = np.concatenate(parts).astype(np.int32)
    if ids.shape[0] != ctx.prompt_tokens:
        raise AssertionError(f"assembly bug: {ids.shape[0]} != {ctx.prompt_tokens} tokens")

    def absolute(rel):
        if not rel:
            return np.zeros(0, np.int32)
        return np.sort(np.concatenate([starts[i] + r for i, r in rel])).astype(np.int32)

    return Case(
        task=ctx.task,
        seed=ctx.seed,
        ids=ids,
        answers=list(answers),
        target=target,
        needle_positions=absolute(evidence),
        distractor_positions=absolute(distractors),
        depth=float(depth) if depth is not None else math.nan,
        question=question,
        text=ctx.tok.decode(ids) if ctx.with_text else None,
    )


def join_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]
