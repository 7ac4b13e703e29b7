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

Sparse rows (`SparseRows`, off by default): a share of the rows shows the target what PFlash
feeds it at original positions (`selection.positions=original`; the renumbered default puts
the kept tokens at 0..K-1 instead), a selection of a longer prompt. The case is made
`stretch` x longer, every span holding a needle (evidence or distractor) and the question's
last `question` tokens are kept, random other spans fill the row, and `positions` carries the
kept tokens' original positions (the answer continues after the last one). Why: the tiny
target answers multi-value / multi-query cases at full prefill but not from the same evidence
kept sparsely (docs/LOG.md session 5, failure probe). Those rows weigh no haystack loss (next
token across a gap is not language).

Every batch is (ids int32 [B, seq_len], loss_mask float32 [B, seq_len], positions int32
[B, seq_len]); a dense row's positions are 0..seq_len-1.

Seeds come from `rng` in [0, TRAIN_SEED_LIMIT), disjoint from held-out seeds (>= 1e9).
Filler sentences and word pools are tokenized once per tokenizer and cached, so a 16K-token
row costs a few milliseconds.
"""

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class SparseRows:
    """Span-dropped training rows (module docstring). prob 0: none (the default)."""

    prob: float = 0.0  # share of the rows made sparse
    stretch: int = 4  # the source case has stretch x seq_len tokens
    span: int = 32  # tokens per kept span
    question: int = 96  # last prompt tokens always kept (the question)

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"sparse.prob must be in [0, 1], got {self.prob}")
        for name in ("stretch", "span", "question"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"sparse.{name} must be a positive int, got {v!r}")


def sparse_row(case, tail: np.ndarray, seq_len: int, cfg: SparseRows,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, positions) of one span-dropped row of exactly seq_len tokens from a long case:
    needle spans + the question + random spans, then the tail (target + eos) after the last
    prompt position. None when the must-keep tokens alone do not fit (the caller makes a
    dense row instead)."""
    S, span = case.n_tokens, cfg.span
    room = seq_len - tail.size
    n_spans = -(-S // span)
    needles = np.concatenate([case.needle_positions, case.distractor_positions])
    must = np.union1d(np.unique(needles.astype(np.int64) // span),
                      np.arange(max(0, S - cfg.question), S) // span)
    keep = [np.arange(i * span, min((i + 1) * span, S)) for i in must]
    have = sum(k.size for k in keep)
    if have > room:
        return None
    for i in rng.permutation(np.setdiff1d(np.arange(n_spans), must)):
        if have >= room:
            break
        piece = np.arange(i * span, min((i + 1) * span, S))[: room - have]
        keep.append(piece)
        have += piece.size
    kept = np.sort(np.concatenate(keep))
    if kept.size != room:  # the case is too short to fill the row: not a sparse view
        return None
    ids = np.concatenate([case.ids[kept], tail]).astype(np.int32)
    pos = np.concatenate([kept, S + np.arange(tail.size)]).astype(np.int32)
    return ids, pos


def training_batch(
    tasks: str | Sequence[str] | Mapping[str, float],
    batch: int,
    seq_len: int,
    tokenizer,
    rng: np.random.Generator,
    *,
    lm_weight: float = 0.0,
    task_opts: Mapping[str, dict] | None = None,
    sparse: SparseRows | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32, loss_mask float32, positions int32), each [B, seq_len]; one case per row, its
    task drawn from `tasks` (names, uniformly, or a name -> weight mapping); task_opts: per-task
    options for the generators (e.g. {"niah_multikey": {"n_distractors": 5}}); sparse: the
    share and shape of span-dropped rows (module docstring; None: every row dense)."""
    tok = as_tokenizer(tokenizer)
    if tok.eos_id is None:
        raise ValueError("the tokenizer has no eos id (<|endoftext|>)")
    names, p = _task_weights(tasks)
    task_opts = task_opts or {}
    ids = np.empty((batch, seq_len), np.int32)
    mask = np.full((batch, seq_len), lm_weight, np.float32)
    mask[:, 0] = 0.0
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy()
    for b in range(batch):
        task = names[rng.choice(len(names), p=p)]
        seed = int(rng.integers(TRAIN_SEED_LIMIT))
        opts = draw_options(task_opts.get(task, {}), rng)
        # the draw happens only when sparse rows are on: prob 0 keeps the old batches exactly
        if sparse is not None and sparse.prob > 0 and rng.random() < sparse.prob:
            long = make_training_case(task, sparse.stretch * seq_len, tok, seed, **opts)
            tail = np.concatenate([tok.encode(long.target), [tok.eos_id]])
            row = sparse_row(long, tail, seq_len, sparse, rng)
            if row is not None:
                ids[b], positions[b] = row
                mask[b] = 0.0
                mask[b, seq_len - tail.size:] = 1.0
                continue
        case = make_training_case(task, seq_len, tok, seed, **opts)
        n = case.n_tokens
        tail = np.concatenate([tok.encode(case.target), [tok.eos_id]])
        ids[b, :n], ids[b, n:] = case.ids, tail  # raises on a length bug: shapes must match
        mask[b, n:] = 1.0
    return ids, mask, positions


def draw_options(opts: Mapping, rng: np.random.Generator) -> dict:
    """A row's generator options: a value written {"one_of": [a, b, ...]} is drawn uniformly
    per row (e.g. n_distractors {"one_of": [1, 3, 5, 7]}), others are passed as given. Only
    such draws use rng, so options without them keep the old batches exactly."""
    out = {}
    for k, v in opts.items():
        if isinstance(v, Mapping) and set(v) == {"one_of"}:
            choices = list(v["one_of"])
            if not choices:
                raise ValueError(f"task option {k}: one_of needs at least one value")
            v = choices[int(rng.integers(len(choices)))]
        out[k] = v
    return out


def step_batch(spec: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch of one training step, a pure function of spec (picklable, for worker processes):
    spec = (tasks, seed, step, seq_len, batch, lm_weight, tokenizer_path, task_opts[, sparse]),
    task_opts as in training_batch (None or {}: the generators' defaults), sparse a dict of
    SparseRows fields (absent or None: dense rows only)."""
    tasks, seed, step, seq_len, batch, lm_weight, tok_path, task_opts, *rest = spec
    sparse = SparseRows(**rest[0]) if rest and rest[0] else None
    rng = np.random.default_rng([seed, step])
    return training_batch(tasks, batch, seq_len, as_tokenizer(tok_path), rng,
                          lm_weight=lm_weight, task_opts=task_opts, sparse=sparse)
