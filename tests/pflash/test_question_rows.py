"""Question-aware tail rows (scoring tail_rows="question"): the question's first row is found
from the tokenizer's line breaks, only rows from it vote, and the option is checked."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from pflash_jax.embedded import tiny_pair
from pflash_jax.pflash import importance as imp_mod
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.drafter import (
    drafter_pass,
    drafter_scores,
    question_first_row,
    tail_row_weights,
    template_tail_lines,
)
from pflash_jax.tasks import make_cases
from pflash_jax.tasks.task_tokenizer import TINY_TOKENIZER_PATH


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.mark.parametrize("task", ["niah_single", "niah_multiquery", "variable_tracking"])
def test_first_row_is_the_question_start(pair, task):
    """The rows from first_row decode to the question's two lines; the row before it ends the
    haystack line (its text holds no question character)."""
    tok = pair[1].tokenizer
    case = make_cases(task, 1, 1024, TINY_TOKENIZER_PATH)[0]
    tail = case.ids[-64:]
    f = question_first_row(tail, tok, 2)
    question = tok.decode(tail[f:]).lstrip("\n")
    assert question.count("\n") == 1, repr(question)  # the question line, then "Answer: ..."
    assert question.split("\n")[1].startswith("Answer:"), repr(question)
    assert "\n" not in tok.decode(tail[f - 1:f]).rstrip("\n"), repr(tok.decode(tail[f - 1:f]))
    assert question_first_row(tail, tok, 1) > f  # one line: the answer prefix alone
    assert question_first_row(tail[-3:], tok, 2) == 0  # no line break in the tail: every row


def test_question_rows_vote_alone(pair):
    """tail_row_weights: 0 before the question's first row, then uniform, linear or rarity
    weights; importance with them = the weighted mean of the running max by hand; drafter_pass
    applies them."""
    drafter = pair[0]
    case = make_cases("niah_multiquery", 1, 2048, TINY_TOKENIZER_PATH)[0]
    cfg = preset("pflash", n_tail=64, tail_rows="question", attention_impl="reference")
    S = case.ids.shape[0]
    Sb = -(-S // cfg.block_size) * cfg.block_size
    ids_p = np.zeros(Sb, np.int32)
    ids_p[:S] = case.ids
    rmax = np.asarray(drafter_scores(drafter.params, drafter.config, jnp.asarray(ids_p)[None],
                                     jnp.int32(S), cfg)[0])
    f = question_first_row(case.ids[-64:], drafter.tokenizer, 2)
    assert 0 < f < 64
    tail = case.ids[-64:]
    vals, counts = np.unique(case.ids, return_counts=True)
    rarity = np.log1p(S / counts[np.searchsorted(vals, tail)])
    for weights, base in (("uniform", np.ones(64)), ("linear", np.arange(1, 65.0)),
                          ("rarity", rarity)):
        c = dataclasses.replace(cfg, scoring=dataclasses.replace(
            cfg.scoring, tail_weights=weights, pooling="per_row"))
        w = np.where(np.arange(64) >= f, base, 0.0)
        rw = tail_row_weights(drafter, case.ids, c)
        np.testing.assert_allclose(np.asarray(rw), w, rtol=1e-6)
        got = np.asarray(imp_mod.importance(jnp.asarray(rmax), c.scoring, row_weights=rw))
        np.testing.assert_allclose(got, (w[:, None] * rmax).sum(0) / w.sum(), rtol=1e-5,
                                   atol=1e-9)
    # rarity alone, every row voting: a question's key (rare) outweighs its template words
    r = tail_row_weights(drafter, case.ids, preset("pflash", n_tail=64, tail_weights="rarity"))
    np.testing.assert_allclose(np.asarray(r), rarity, rtol=1e-6)
    assert tail_row_weights(drafter, case.ids, preset("pflash", n_tail=64)) is None
    got = drafter_pass(drafter, case.ids, cfg).importance
    ref = np.asarray(imp_mod.importance(jnp.asarray(rmax), cfg.scoring, length=jnp.int32(S),
                                        row_weights=jnp.asarray(np.arange(64) >= f,
                                                                jnp.float32)))[:S]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)
    last = drafter_pass(drafter, case.ids, preset("pflash", n_tail=64,
                                                 attention_impl="reference")).importance
    assert not np.allclose(got, last)  # the haystack rows no longer vote


def test_question_rows_are_checked(pair):
    with pytest.raises(ValueError, match="tail_rows='question' needs tail_mode='tail'"):
        preset("specprefill", tail_rows="question")
    with pytest.raises(ValueError, match="tail_weights='rarity' needs tail_mode='tail'"):
        preset("specprefill", tail_weights="rarity")
    with pytest.raises(ValueError, match="tail_rows must be one of"):
        preset("pflash", tail_rows="first")
    no_tok = dataclasses.replace(pair[0], tokenizer=None)
    ids = make_cases("niah_single", 1, 1024, TINY_TOKENIZER_PATH)[0].ids
    with pytest.raises(ValueError, match="needs the drafter's tokenizer"):
        drafter_pass(no_tok, ids, preset("pflash", tail_rows="question",
                                         attention_impl="reference"))


CHAT_FRAME = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("task", ["niah_single", "niah_multikey", "variable_tracking"])
def test_chat_question_rows_skip_the_template(pair, task):
    """In the chat format the template's lines sit between the question and the answer prefix:
    question_lines + template_tail_lines rows start at the question's line again, while the
    raw count alone would start inside the template."""
    tok = pair[1].tokenizer
    case = make_cases(task, 1, 1024, TINY_TOKENIZER_PATH, chat=CHAT_FRAME)[0]
    tail = case.ids[-128:]  # the tiny tokenizer spells the template's markers out in pieces
    assert template_tail_lines(tok, CHAT_FRAME[1]) == 3
    f = question_first_row(tail, tok, 2 + template_tail_lines(tok, CHAT_FRAME[1]))
    text = tok.decode(tail[f:]).lstrip("\n")
    raw = make_cases(task, 1, 1024, TINY_TOKENIZER_PATH)[0].ids[-64:]
    asked = tok.decode(raw[question_first_row(raw, tok, 2):]).lstrip("\n").split("\n")[0]
    assert text.split("\n")[0] == asked + "<|im_end|>", repr(text)  # the question's line
    assert text.rstrip().split("\n")[-1].startswith("Answer:"), repr(text)
    assert asked not in tok.decode(tail[question_first_row(tail, tok, 2):])


def test_chat_run_config_raises_question_lines(pair, tmp_path):
    """run.chat_question_lines: question rows get the template's lines added (the target's own
    chat template), other tail rows are left alone."""
    import json
    import shutil

    from pflash_jax.embedded import TINY_DIR
    from pflash_jax.run import chat_question_lines
    from pflash_jax.run_config import ModelSpec

    d = tmp_path / "target"
    shutil.copytree(TINY_DIR / "target", d)
    cfg_path = d / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    tc["chat_template"] = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                           "<|im_end|>\n{% endfor %}<|im_start|>assistant\n<think>\n\n</think>"
                           "\n\n")
    cfg_path.write_text(json.dumps(tc))
    spec = ModelSpec("tiny_target", path=str(d))
    qa = preset("pflash_qa")
    got = chat_question_lines(qa, pair[0], spec)
    assert got.scoring.question_lines == qa.scoring.question_lines + 3
    assert dataclasses.replace(got, scoring=qa.scoring) == qa
    plain = preset("pflash")
    assert chat_question_lines(plain, pair[0], spec) == plain
