import numpy as np
import pytest

from pflash_jax.tasks import TASKS, make_case, score


@pytest.mark.parametrize("task", list(TASKS))
def test_reference_target_scores_one(task, tiny):
    case = make_case(task, 2000, tiny, 0)
    assert score(case, case.target) == 1.0
    ids = np.concatenate([tiny.encode(case.target), [tiny.eos_id], tiny.encode(" 999 junk")])
    assert score(case, ids, tiny) == 1.0  # text after eos is ignored
    assert score(case, " nothing here.") == 0.0
    assert score(case, "") == 0.0


def test_single_value_first_run(tiny):
    case = make_case("niah_pflash", 1000, tiny, 0)
    v = case.answers[0]
    assert score(case, f" {v}") == 1.0
    assert score(case, f"{v}, I think.") == 1.0
    assert score(case, f" {v}0.") == 0.0  # a longer number is wrong
    assert score(case, f" {v[:3]} {v[3:]}.") == 0.0
    assert score(case, f" The number is {v}.") == 0.0  # the answer must come first
    assert score(case, f" 1{v[1:]}." if v[0] != "1" else f" 2{v[1:]}.") == 0.0


def test_multi_value_all_or_nothing(tiny):
    case = make_case("niah_multivalue", 2000, tiny, 0)
    vals = case.answers
    assert score(case, " " + " and ".join(reversed(vals))) == 1.0  # order is free
    assert score(case, " " + ", ".join(vals[:-1]) + ".") == 0.0  # partial gives 0
    assert score(case, " " + ", ".join(v + "1" for v in vals)) == 0.0  # whole-run match


def test_words_case_insensitive(tiny):
    case = make_case("common_words", 2000, tiny, 0)
    assert score(case, " " + ", ".join(w.upper() for w in case.answers)) == 1.0


def test_ids_need_tokenizer(tiny):
    case = make_case("niah_single", 1000, tiny, 0)
    with pytest.raises(ValueError, match="tokenizer"):
        score(case, [1, 2, 3])


def test_eos_ends_the_answer_in_ids_and_in_text():
    """Regression: text decoded with special tokens kept ends at the eos token too."""
    from pflash_jax.tasks import make_case, score, tiny_tokenizer

    tok = tiny_tokenizer()
    case = make_case("niah_pflash", 512, tok, seed=1)
    value = case.answers[0]
    eos = tok.token_to_id("<|endoftext|>")
    ids = list(tok.encode(f" {value}.").ids) + [eos] + list(tok.encode(".").ids) + [eos]
    assert score(case, ids, tok) == 1.0
    assert score(case, f" {value}.<|endoftext|>.<|endoftext|>") == 1.0
    assert score(case, f" {value}9.<|endoftext|>") == 0.0
