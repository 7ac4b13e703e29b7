"""Task registry, `make_case` / `make_cases`, and the seed convention.

Seeds: a case is a pure function of (task, n_tokens, tokenizer, seed, opts); its RNG is
`default_rng([seed, crc32(task)])`, so two tasks with one seed still differ. Training draws
seeds in [0, TRAIN_SEED_LIMIT); held-out sets (`make_cases`) use seeds from EVAL_SEED_BASE
= 1e9 up, so no held-out case can appear in training.
"""

import dataclasses
import zlib
from collections.abc import Callable

import numpy as np

from pflash_jax.tasks import aggregation, niah
from pflash_jax.tasks.case import Case, Ctx
from pflash_jax.tasks.chat import make_chat_case
from pflash_jax.tasks.task_tokenizer import as_tokenizer

TRAIN_SEED_LIMIT = 10**6
EVAL_SEED_BASE = 10**9
EVAL_SET_STRIDE = 10**6  # make_cases(seed=s) uses EVAL_SEED_BASE + s * stride + i


@dataclasses.dataclass(frozen=True)
class TaskGenerator:
    """A task's case generator and how its answers are graded."""

    fn: Callable[..., Case]
    multi: bool  # several expected values (all must appear) vs one (first run must match)


TASKS: dict[str, TaskGenerator] = {
    "niah_single": TaskGenerator(niah.niah_single, multi=False),
    "niah_pflash": TaskGenerator(niah.niah_pflash, multi=False),
    "niah_multikey": TaskGenerator(niah.niah_multikey, multi=False),
    "niah_multivalue": TaskGenerator(niah.niah_multivalue, multi=True),
    "niah_multiquery": TaskGenerator(niah.niah_multiquery, multi=True),
    "variable_tracking": TaskGenerator(aggregation.variable_tracking, multi=True),
    "common_words": TaskGenerator(aggregation.common_words, multi=True),
    "frequent_words": TaskGenerator(aggregation.frequent_words, multi=True),
}


def _ctx(task, n_tokens, tokenizer, seed, *, answer_in_budget, with_text) -> Ctx:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if int(n_tokens) != n_tokens or n_tokens <= 0:
        raise ValueError(f"n_tokens must be a positive integer, got {n_tokens!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), zlib.crc32(task.encode())])
    return Ctx(
        task=task,
        seed=int(seed),
        rng=rng,
        tok=as_tokenizer(tokenizer),
        n_tokens=int(n_tokens),
        answer_in_budget=answer_in_budget,
        with_text=with_text,
    )


def make_case(task: str, n_tokens: int, tokenizer, seed: int, *, with_text=True,
              chat: tuple[str, str] | None = None, **opts) -> Case:
    """A case of exactly n_tokens prompt tokens ending in the question + answer prefix.

    chat: a chat template's (before, after) text around one user message; the case is then
    wrapped in it, still n_tokens long, the answer prefix after the generation prompt (chat.py).
    opts go to the task function (e.g. depth=0.5, haystack="words", n_distractors=5)."""
    def make(n: int) -> Case:
        ctx = _ctx(task, n, tokenizer, seed, answer_in_budget=False, with_text=with_text)
        return TASKS[task].fn(ctx, **opts)

    if chat is None:
        return make(n_tokens)
    _ctx(task, n_tokens, tokenizer, seed, answer_in_budget=False, with_text=False)  # arg checks
    return make_chat_case(make, n_tokens, chat, as_tokenizer(tokenizer))


def make_training_case(task: str, seq_len: int, tokenizer, seed: int, **opts) -> Case:
    """A case whose prompt leaves room for its target + eos: len(ids) + len(target ids) + 1
    == seq_len. Text is not decoded (speed)."""
    ctx = _ctx(task, seq_len, tokenizer, seed, answer_in_budget=True, with_text=False)
    return TASKS[task].fn(ctx, **opts)


def make_cases(task: str, n: int, n_tokens: int, tokenizer, seed: int = 0, *,
               chat: tuple[str, str] | None = None, **opts) -> list[Case]:
    """n held-out cases with seeds EVAL_SEED_BASE + seed * EVAL_SET_STRIDE + i (i < n)."""
    if not 0 < n <= EVAL_SET_STRIDE:
        raise ValueError(f"n must be in [1, {EVAL_SET_STRIDE}], got {n}")
    base = EVAL_SEED_BASE + seed * EVAL_SET_STRIDE
    return [make_case(task, n_tokens, tokenizer, base + i, chat=chat, **opts) for i in range(n)]
