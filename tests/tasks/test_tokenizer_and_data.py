import numpy as np
import pytest

from pflash_jax.data import training_batch
from pflash_jax.tasks import TASKS, as_tokenizer, make_case, make_training_case
from pflash_jax.tasks.task_tokenizer import TINY_TOKENIZER_PATH


def test_tiny_tokenizer_file(tiny):
    assert TINY_TOKENIZER_PATH.stat().st_size < 1_000_000
    assert tiny.raw.get_vocab_size() == 2048 and tiny.eos_id == 0
    # Digits are single tokens, so a 7-digit value is 7 tokens after its space.
    assert len(tiny.encode(" 1234567")) == 8
    for s in [" The special magic apple number is: 9876543.", "\nVAR QWERT = VAR ASDFG."]:
        assert tiny.decode(tiny.encode(s)) == s


class _Thin:
    """Minimal encode/decode object (as a user might pass), delegating to the tiny tokenizer."""

    def __init__(self, tok):
        self.tok, self.eos_id = tok, tok.eos_id

    def encode(self, text):
        return self.tok.encode(text).tolist()

    def decode(self, ids):
        return self.tok.decode(ids)


def test_thin_wrapper_matches_tokenizer(tiny):
    thin = _Thin(tiny)
    a, b = make_case("niah_multikey", 1500, tiny, 4), make_case("niah_multikey", 1500, thin, 4)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert as_tokenizer(thin) is as_tokenizer(thin)  # one wrapper (and bank cache) per object


@pytest.mark.parametrize("seq_len", [1024, 3000])
def test_training_batch_layout(seq_len, tiny):
    rng = np.random.default_rng(0)
    ids, mask, pos = training_batch(list(TASKS), 6, seq_len, tiny, rng, lm_weight=0.05)
    assert ids.shape == mask.shape == pos.shape == (6, seq_len)
    assert (pos == np.arange(seq_len)).all()  # dense rows: positions 0..seq_len-1
    assert ids.dtype == np.int32 and mask.dtype == np.float32
    assert np.all(ids[:, -1] == tiny.eos_id) and np.all(mask[:, 0] == 0)
    for row, m in zip(ids, mask, strict=True):
        answer = np.flatnonzero(m == 1.0)
        assert answer[-1] == seq_len - 1 and np.all(np.diff(answer) == 1)
        assert np.allclose(m[1 : answer[0]], 0.05)
        text = tiny.decode(row[answer[:-1]])
        prompt = tiny.decode(row[: answer[0]])
        assert prompt.rstrip().endswith(("is:", "are:")) and text.endswith(".")


def test_training_batch_deterministic_and_errors(tiny):
    a = training_batch(
        {"niah_pflash": 1.0, "common_words": 0.0}, 2, 800, tiny, np.random.default_rng(1)
    )
    b = training_batch(
        {"niah_pflash": 1.0, "common_words": 0.0}, 2, 800, tiny, np.random.default_rng(1)
    )
    np.testing.assert_array_equal(a[0], b[0])
    assert "The special magic" in tiny.decode(a[0][0])
    with pytest.raises(ValueError, match="unknown tasks"):
        training_batch(["nope"], 1, 800, tiny, np.random.default_rng(0))


@pytest.mark.parametrize("task", list(TASKS))
def test_training_case_leaves_room_for_answer(task, tiny):
    case = make_training_case(task, 1500, tiny, 11)
    assert case.n_tokens + len(tiny.encode(case.target)) + 1 == 1500
    # Same seed, same needles as the evaluation case of the full length.
    assert case.answers == make_case(task, 1500, tiny, 11).answers


def test_sparse_rows_are_pflash_views_of_a_longer_case(tiny):
    """A sparse row keeps every needle (evidence and distractor) and the question of a case
    `stretch` x longer, at their original positions; the answer follows the last prompt
    position; the row is exactly seq_len; no haystack loss; prob 0 leaves batches unchanged."""
    from pflash_jax.data import SparseRows, sparse_row
    from pflash_jax.tasks import make_training_case

    cfg = SparseRows(prob=1.0, stretch=4, span=32, question=96)
    rng = np.random.default_rng(3)
    for task in ("niah_multikey", "niah_multivalue", "niah_multiquery", "niah_single"):
        long = make_training_case(task, 4 * 1024, tiny, 5)
        tail = np.concatenate([tiny.encode(long.target), [tiny.eos_id]])
        ids, pos = sparse_row(long, tail, 1024, cfg, rng)
        S = long.n_tokens
        prompt = pos[: 1024 - tail.size]
        assert ids.size == pos.size == 1024 and np.all(np.diff(pos) > 0), task
        assert set(long.needle_positions) <= set(prompt), task
        assert set(long.distractor_positions) <= set(prompt), task
        assert set(range(S - 96, S)) <= set(prompt), task
        np.testing.assert_array_equal(ids[: prompt.size], long.ids[prompt])
        np.testing.assert_array_equal(pos[prompt.size:], S + np.arange(tail.size))
    ids, mask, pos = training_batch(["niah_multikey"], 3, 1024, tiny,
                                    np.random.default_rng(0), lm_weight=0.05, sparse=cfg)
    assert pos[:, -1].min() > 1024  # every row sparse: positions run past the row length
    assert np.all(mask[mask != 1.0] == 0.0)  # no haystack loss on sparse rows
    off = training_batch(["niah_multikey"], 3, 1024, tiny, np.random.default_rng(0),
                         lm_weight=0.05, sparse=SparseRows(prob=0.0))
    dense = training_batch(["niah_multikey"], 3, 1024, tiny, np.random.default_rng(0),
                           lm_weight=0.05)
    for a, b in zip(off, dense, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="sparse.prob"):
        SparseRows(prob=2.0)
