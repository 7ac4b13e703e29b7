"""Task cases in a chat template: `task.prompt_format=chat` (docs/design.md section 5.1).

A raw case is [header, haystack with needles, question], where the question's last line is the
answer prefix ("Answer: The special magic number for X is:"). The chat case is

    before + [header, haystack with needles, question minus its last line] + after + answer prefix

where (before, after) is the chat template's text around one user message, generation prompt
included (`models.chat_template.ChatTemplate.frame`; Qwen3 with thinking off:
"<|im_start|>user\\n" and "<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n").
The answer prefix goes after the generation prompt, as RULER does for chat models: the model's
greedy continuation is then the bare answer, and grading.py needs no change.

Sizing: the chat case has exactly n_tokens ids. The template's tokens come out of the haystack
budget: the raw case is generated at n_tokens minus what the wrapping adds, which depends only
on the question (drawn before the haystack), so a second generation at the corrected length
is exact. Every piece is tokenized on its own as in case.py; the frame's boundaries are special
tokens or newlines, where byte-level BPE splits anyway. Needle and distractor positions shift
by the tokens of `before`.
"""

import dataclasses

import numpy as np

from pflash_jax.tasks.case import BudgetError, Case
from pflash_jax.tasks.task_tokenizer import TaskTokenizer


def split_question(question: str) -> tuple[str, str]:
    """(question without its last line, that line: the answer prefix)."""
    ask, sep, prefix = question.rpartition("\n")
    if not sep or not prefix.strip():
        raise ValueError(f"question {question!r} has no answer-prefix line to move after the "
                         f"chat template's generation prompt")
    return ask, prefix


def wrap_case(case: Case, frame: tuple[str, str], tok: TaskTokenizer) -> Case:
    """The raw `case` as one user message of a chat template; `frame` = (before, after)."""
    before, after = frame
    q = tok.encode(case.question)
    if not np.array_equal(case.ids[len(case.ids) - len(q):], q):
        raise AssertionError(f"case of task {case.task!r} does not end with its question")
    ask, prefix = split_question(case.question)
    head, tail = tok.encode(before), tok.encode(after)
    user = case.ids[: len(case.ids) - len(q)]
    ids = np.concatenate([head, user, tok.encode(ask), tail, tok.encode(prefix)]).astype(np.int32)
    text = None
    if case.text is not None:
        text = before + tok.decode(user) + ask + after + prefix
    shift = np.int32(len(head))
    return dataclasses.replace(
        case, ids=ids, text=text, needle_positions=case.needle_positions + shift,
        distractor_positions=case.distractor_positions + shift, prompt_format="chat",
        template_prefix=int(len(head)), template_tokens=int(len(head) + len(tail)))


def make_chat_case(make, n_tokens: int, frame: tuple[str, str], tok: TaskTokenizer) -> Case:
    """A chat case of exactly n_tokens ids; make(n) builds the raw case of n tokens."""
    added = len(tok.encode(frame[0])) + len(tok.encode(frame[1]))  # first guess: the frame
    for _ in range(3):  # the second try is exact unless the question depends on the length
        try:
            if n_tokens - added < 1:
                raise BudgetError("no room left", None)
            case = wrap_case(make(n_tokens - added), frame, tok)
        except BudgetError as e:
            least = f"; minimum n_tokens is {e.need + added}" if e.need is not None else ""
            raise BudgetError(f"n_tokens={n_tokens} is too small with prompt_format=chat: the "
                              f"chat template takes {added} tokens, the case the rest{least}",
                              None if e.need is None else e.need + added) from None
        if case.n_tokens == n_tokens:
            return case
        added += case.n_tokens - n_tokens
    raise AssertionError(f"chat case of task {case.task!r}: {case.n_tokens} != {n_tokens} tokens")
