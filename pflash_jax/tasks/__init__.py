"""Synthetic long-context tasks (RULER-style NIAH variants, variable tracking, word
extraction), sized to an exact token budget in the reader's tokenizer, scored by exact match.

    from pflash_jax.tasks import make_case, score, tiny_tokenizer
    case = make_case("niah_pflash", 4096, tiny_tokenizer(), seed=0)
    case.ids            # int32 [4096], ends with the question + answer prefix
    case.needle_positions   # token indices of the evidence, for drafter recall
    score(case, " 1234567.")

Layout rules (id-level assembly, exact budgets) are in case.py, scoring rules in grading.py,
seed convention in registry.py.
"""

from pflash_jax.tasks.case import BudgetError, Case
from pflash_jax.tasks.grading import score
from pflash_jax.tasks.registry import (
    EVAL_SEED_BASE,
    TASKS,
    TRAIN_SEED_LIMIT,
    make_case,
    make_cases,
    make_training_case,
)
from pflash_jax.tasks.task_tokenizer import (
    ByteTokenizer,
    TaskTokenizer,
    as_tokenizer,
    tiny_tokenizer,
)

__all__ = [
    "BudgetError",
    "ByteTokenizer",
    "Case",
    "EVAL_SEED_BASE",
    "TASKS",
    "TRAIN_SEED_LIMIT",
    "TaskTokenizer",
    "as_tokenizer",
    "make_case",
    "make_cases",
    "make_training_case",
    "score",
    "tiny_tokenizer",
]
