"""Training batches for the tiny target/drafter pair, drawn from the task generators.

Row layout (exactly seq_len tokens):  [ prompt ............ | target tokens | eos ]
The prompt is a case built by `make_training_case`, which sizes its haystack so that prompt +
target + eos is exactly seq_len; the target is the case's reference continuation (e.g.
" 1234567."), tokenized on its own like every other piece.

loss_mask[b, t] weights the loss of predicting ids[b, t] from ids[b, :t] (aligned with the
predicted token, so loss_mask[:, 0] == 0). A training step therefore uses
    logits = model(ids)[:, :-1];  labels = ids[:, 1:];  weights = loss_mask[:, 1:]
Weights: 1.0 on target tokens and the eos, `lm_weight` (default 0.0) on every prompt token:
a small value (e.g. 0.02) also teaches the haystack's language statistics, which is cheap
since those logits are computed anyway; the prompt's tokens are mostly predictable filler, so
a large value would drown the answer signal.

Seeds come from `rng` in [0, TRAIN_SEED_LIMIT), disjoint from held-out seeds (>= 1e9).
Filler sentences and word pools are tokenized once per tokenizer and cached, so a 16K-token
row costs a few milliseconds.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from pflash_jax.tasks import TASKS, TRAIN_SEED_LIMIT, as_tokenizer, make_training_case


def _task_weights(tasks) -> tuple[list[str], np.ndarray]:
    if isinstance(tasks, str):
        tasks = [tasks]
    if isinstance(tasks, Mapping):
        names, w = list(tasks), np.array([float(tasks[k]) for k in tasks])
    else:
        names, w = list(tasks), np.ones(len(tasks))
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown tasks {unknown}; valid tasks: {', '.join(TASKS)}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"task weights must be >= 0 with a positive sum, got {w.tolist()}")
    return names, w / w.sum()


def training_batch(
    tasks: str | Sequence[str] | Mapping[str, float],
    batch: int,
    seq_len: int,
    tokenizer,
    rng: np.random.Generator,
    *,
    lm_weight: float = 0.0,
    task_opts: Mapping[str, dict] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ids int32 [B, seq_len], loss_mask float32 [B, seq_len]; one case per row, its task drawn
    from `tasks` (names, uniformly, or a name -> weight mapping); task_opts: per-task options
    for the generators (e.g. {"niah_multikey": {"n_distractors": 5}})."""
    tok = as_tokenizer(tokenizer)
    if tok.eos_id is None:
        raise ValueError("the tokenizer has no eos id (<|endoftext|>)")
    names, p = _task_weights(tasks)
    task_opts = task_opts or {}
    ids = np.empty((batch, seq_len), np.int32)
    mask = np.full((batch, seq_len), lm_weight, np.float32)
    mask[:, 0] = 0.0
    for b in range(batch):
        task = names[rng.choice(len(names), p=p)]
        seed = int(rng.integers(TRAIN_SEED_LIMIT))
        case = make_training_case(task, seq_len, tok, seed, **task_opts.get(task, {}))
        n = case.n_tokens
        tail = np.concatenate([tok.encode(case.target), [tok.eos_id]])
        ids[b, :n], ids[b, n:] = case.ids, tail  # raises on a length bug: shapes must match
        mask[b, n:] = 1.0
    return ids, mask


def step_batch(spec: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Batch of one training step, a pure function of spec (picklable, for worker processes):
    spec = (tasks, seed, step, seq_len, batch, lm_weight, tokenizer_path, task_opts), task_opts
    as in training_batch (None or {}: the generators' defaults)."""
    tasks, seed, step, seq_len, batch, lm_weight, tok_path, task_opts = spec
    rng = np.random.default_rng([seed, step])
    return training_batch(tasks, batch, seq_len, as_tokenizer(tok_path), rng,
                          lm_weight=lm_weight, task_opts=task_opts)
