import re
from collections import Counter

import numpy as np
import pytest

from pflash_jax.tasks import (
    EVAL_SEED_BASE,
    TASKS,
    BudgetError,
    ByteTokenizer,
    make_case,
    make_cases,
)

NIAH = ["niah_single", "niah_pflash", "niah_multikey", "niah_multivalue", "niah_multiquery"]


@pytest.mark.parametrize("task", list(TASKS))
def test_deterministic_per_seed(task, tiny):
    a, b = make_case(task, 2048, tiny, 5), make_case(task, 2048, tiny, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.needle_positions, b.needle_positions)
    assert a.answers == b.answers and a.text == b.text
    c = make_case(task, 2048, tiny, 6)
    assert not np.array_equal(a.ids, c.ids)
    assert a.answers != c.answers


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("n_tokens", [700, 1531, 4097])
def test_exact_budget(task, n_tokens, any_tok):
    for seed in range(2):
        case = make_case(task, n_tokens, any_tok, seed)
        assert case.ids.shape == (n_tokens,) and case.ids.dtype == np.int32
        assert case.n_tokens == n_tokens
        pos = case.needle_positions
        assert pos.dtype == np.int32 and len(pos) > 0
        assert pos.min() >= 0 and pos.max() < n_tokens and np.all(np.diff(pos) > 0)
        assert len(np.intersect1d(pos, case.distractor_positions)) == 0
        # The prompt ends with the answer prefix, so the target continues it.
        assert any_tok.decode(case.ids[-12:]).rstrip().endswith(("is:", "are:"))


def test_same_seed_same_needle_across_lengths(tiny):
    short, long = make_case("niah_pflash", 1000, tiny, 3), make_case("niah_pflash", 5000, tiny, 3)
    assert short.answers == long.answers and short.question == long.question


@pytest.mark.parametrize("task", NIAH)
def test_needle_where_recorded(task, any_tok):
    for seed in range(3):
        case = make_case(task, 3000, any_tok, seed)
        evidence = any_tok.decode(case.ids[case.needle_positions])
        for value in case.answers:
            assert value in evidence
            # The value occurs once in the prompt: the haystack holds no digits.
            assert case.text.count(value) == 1
        key = re.search(r"(?:for|magic) (\w+)", case.question).group(1)
        assert key in evidence
        # Evidence positions are whole needle sentences, each one contiguous run.
        pos = case.needle_positions
        runs = np.split(pos, np.flatnonzero(np.diff(pos) > 1) + 1)
        assert len(runs) == len(case.answers)
        for r in runs:
            assert re.fullmatch(
                r" (One of the|The) special magic .* is: \d{7}\.", any_tok.decode(case.ids[r])
            )


def test_multikey_distractors(tiny):
    case = make_case("niah_multikey", 3000, tiny, 1, n_distractors=5)
    text = tiny.decode(case.ids[case.distractor_positions])
    assert text.count("special magic") == 5 and case.answers[0] not in text


def test_pflash_depth_and_format(tiny):
    depths = []
    for seed in range(20):
        case = make_case("niah_pflash", 2000, tiny, seed)
        depths.append(case.depth)
        assert case.text.startswith(" The lake is calm.")
        assert case.text.endswith(case.question)
        assert re.search(
            r"\nWhat is the special magic \w+ number\?\nThe special magic \w+ "
            r"number is:$",
            case.text,
        )
    assert 0.24 <= min(depths) and max(depths) <= 0.76  # snapping moves it by < one sentence
    fixed = make_case("niah_pflash", 2000, tiny, 0, depth=0.5)
    assert abs(fixed.depth - 0.5) < 0.01


def test_variable_tracking_chain(any_tok):
    case = make_case("variable_tracking", 3000, any_tok, 2)
    evidence = any_tok.decode(case.ids[case.needle_positions])
    names = re.findall(r"VAR (\w+) =", evidence)
    assert names == case.answers
    value = re.search(r"value (\d+)", case.question).group(1)
    assert f"VAR {names[0]} = {value}." in evidence
    distract = any_tok.decode(case.ids[case.distractor_positions])
    assert value not in distract and len(re.findall("VAR", distract)) >= 5


def _list_words(case):
    body = case.text.split("\nQuestion:")[0]
    return body.split("others.", 1)[1].replace(".", " ").split()


def test_common_words_counts(any_tok):
    case = make_case("common_words", 4000, any_tok, 0)
    counts = Counter(_list_words(case))
    top = counts.most_common()
    assert {w for w, _ in top[:10]} == set(case.answers)
    assert all(counts[w] == 30 for w in case.answers) and top[10][1] <= 3
    # Answer order is the order of first appearance.
    seen = list(dict.fromkeys(w for w in _list_words(case) if w in case.answers))
    assert seen == case.answers
    evidence = any_tok.decode(case.ids[case.needle_positions]).split()
    assert Counter(evidence) == {w: 30 for w in case.answers}


def test_frequent_words_counts(any_tok):
    for seed in range(3):
        case = make_case("frequent_words", 4000, any_tok, seed)
        ranked = Counter(_list_words(case)).most_common()
        assert [w for w, _ in ranked[:3]] == case.answers
        assert ranked[0][1] > ranked[1][1] > ranked[2][1] > ranked[3][1]


def test_make_cases_held_out(tiny):
    cases = make_cases("niah_single", 3, 1000, tiny, seed=1)
    assert [c.seed for c in cases] == [EVAL_SEED_BASE + 10**6 + i for i in range(3)]
    assert len({c.answers[0] for c in cases}) == 3


def test_byte_tokenizer_and_wrapper():
    case = make_case("niah_pflash", 900, ByteTokenizer(), 0)
    assert case.ids.shape == (900,) and case.text.encode() == bytes(case.ids.tolist())


def test_unknown_task_lists_valid(tiny):
    with pytest.raises(ValueError, match="unknown task 'niah'.*niah_single.*frequent_words"):
        make_case("niah", 1000, tiny, 0)


@pytest.mark.parametrize("task", list(TASKS))
def test_budget_too_small_names_minimum(task, tiny):
    with pytest.raises(BudgetError, match=r"minimum n_tokens is \d+") as err:
        make_case(task, 20, tiny, 0)
    minimum = int(re.search(r"minimum n_tokens is (\d+)", str(err.value)).group(1))
    assert make_case(task, minimum, tiny, 0).n_tokens == minimum
    with pytest.raises(BudgetError):
        make_case(task, minimum - 1, tiny, 0)


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="n_tokens"):
        make_case("niah_single", 0, tiny, 0)
    with pytest.raises(ValueError, match="seed"):
        make_case("niah_single", 100, tiny, -1)
    with pytest.raises(ValueError, match="haystack"):
        make_case("niah_single", 1000, tiny, 0, haystack="novel")
    with pytest.raises(TypeError, match="tokenizer"):
        make_case("niah_single", 1000, 42, 0)


@pytest.mark.parametrize("haystack", ["essay", "words", "repeat"])
def test_haystack_kinds_and_fixed_depth(haystack, tiny):
    for depth in (0.0, 0.3, 1.0):
        case = make_case("niah_single", 1200, tiny, 9, haystack=haystack, depth=depth)
        assert case.n_tokens == 1200 and abs(case.depth - depth) < 0.03
        assert case.answers[0] in tiny.decode(case.ids[case.needle_positions])
