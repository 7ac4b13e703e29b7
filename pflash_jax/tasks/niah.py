"""Needle-in-a-haystack tasks: single (RULER-style and exact PFlash format), multi-key,
multi-value, multi-query.

Values are 7-digit numbers (first digit nonzero), keys are distinct nouns from words.NOUNS.
Random draws happen in a fixed order, keys and values first, so one seed gives the same needles
at every n_tokens (useful for length sweeps); only the haystack and the depth change.
"""

import numpy as np

from pflash_jax.tasks import words
from pflash_jax.tasks.case import (
    Ctx,
    filler_stream,
    finish,
    insert_pieces,
    join_list,
    pick_slots,
    snap,
)

HEADER = (
    "Some special magic numbers are hidden in the text below. Remember them: you will be "
    "asked about them at the end."
)
NEEDLE = " One of the special magic numbers for {key} is: {value}."
PFLASH_NEEDLE = " The special magic {key} number is: {value}."
PFLASH_QUESTION = "\nWhat is the special magic {key} number?\nThe special magic {key} number is:"
HAYSTACKS = ("essay", "words", "repeat")


def haystack_bank(ctx: Ctx, kind: str):
    """(Bank, order) for a haystack kind; banks are tokenized once per tokenizer."""
    if kind == "essay":
        return ctx.tok.bank("essay", lambda: [" " + s for s in words.essay_sentences()]), "random"
    if kind == "words":
        return ctx.tok.bank("words", lambda: [" " + w for w in words.real_words()]), "random"
    if kind == "repeat":
        return ctx.tok.bank("pflash", lambda: [" " + s for s in words.PFLASH_FILLER]), "cycle"
    raise ValueError(f"unknown haystack {kind!r}; valid: {', '.join(HAYSTACKS)}")


def draw_values(rng, k: int, digits: int = 7) -> list[str]:
    lo, hi = 10 ** (digits - 1), 10**digits
    vals: list[int] = []
    while len(vals) < k:
        v = int(rng.integers(lo, hi))
        if v not in vals:
            vals.append(v)
    return [str(v) for v in vals]


def draw_keys(rng, k: int) -> list[str]:
    nouns = list(dict.fromkeys(words.NOUNS))
    return [nouns[i] for i in rng.choice(len(nouns), size=k, replace=False)]


def place(
    ctx: Ctx,
    *,
    header,
    needles,
    kinds,
    question,
    haystack,
    depth=None,
    depth_range=(0.0, 1.0),
    shuffle=False,
    answers,
    target,
):
    """Shared NIAH layout: header, haystack with needles between filler units, question.

    needles/kinds: texts and 'evidence'/'distractor' labels. With `depth` (single needle) the
    needle snaps to the unit boundary nearest that depth; otherwise needles take distinct
    boundaries drawn uniformly within depth_range, in the given order unless shuffle."""
    ctx.set_target(target)
    tok = ctx.tok
    head = tok.encode(header) if header else np.zeros(0, np.int32)
    q = tok.encode(question)
    pieces = [tok.encode(t) for t in needles]
    fixed = len(head) + len(q) + sum(len(p) for p in pieces)
    n_hay = ctx.haystack_budget(fixed)
    bank, order = haystack_bank(ctx, haystack)
    hay, bounds = filler_stream(bank, n_hay, ctx.rng, order)
    if depth is not None:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        slots = np.array([snap(bounds, n_hay, depth)] * len(pieces))
    else:
        slots = pick_slots(bounds, n_hay, ctx.rng, len(pieces), *depth_range)
    if shuffle:
        perm = ctx.rng.permutation(len(pieces))
        pieces, kinds = [pieces[i] for i in perm], [kinds[i] for i in perm]
    body, pos = insert_pieces(hay, bounds, slots, pieces, kinds)
    first = [int(bounds[s]) for s, k in zip(slots, kinds, strict=True) if k == "evidence"][0]
    return finish(
        ctx,
        [head, body, q],
        evidence=[(1, pos["evidence"][i]) for i in range(len(pos["evidence"]))],
        distractors=[(1, p) for p in pos.get("distractor", [])],
        answers=answers,
        target=target,
        question=question,
        depth=first / n_hay if n_hay else 0.0,
    )


def niah_single(ctx: Ctx, *, haystack="essay", depth=None, depth_range=(0.0, 1.0)):
    """One needle in an essay-like (or word-noise, or repeated-sentence) haystack."""
    (key,), (value,) = draw_keys(ctx.rng, 1), draw_values(ctx.rng, 1)
    q = (
        f"\nWhat is the special magic number for {key} mentioned in the text above?"
        f"\nAnswer: The special magic number for {key} is:"
    )
    return place(
        ctx,
        header=HEADER,
        needles=[NEEDLE.format(key=key, value=value)],
        kinds=["evidence"],
        question=q,
        haystack=haystack,
        depth=depth,
        depth_range=depth_range,
        answers=[value],
        target=f" {value}.",
    )


def niah_pflash(ctx: Ctx, *, depth=None, depth_range=(0.25, 0.75)):
    """The PFlash benchmark format: repeated filler paragraph (words.PFLASH_FILLER), the needle
    at a depth drawn uniformly from depth_range (snapped to a sentence boundary), question last.
    No header."""
    (key,), (value,) = draw_keys(ctx.rng, 1), draw_values(ctx.rng, 1)
    if depth is None:
        depth = float(ctx.rng.uniform(*depth_range))
    return place(
        ctx,
        header="",
        needles=[PFLASH_NEEDLE.format(key=key, value=value)],
        kinds=["evidence"],
        question=PFLASH_QUESTION.format(key=key),
        haystack="repeat",
        depth=depth,
        answers=[value],
        target=f" {value}.",
    )


def niah_multikey(ctx: Ctx, *, n_distractors=3, haystack="essay", depth_range=(0.0, 1.0)):
    """One true needle plus n_distractors needles of the same form with other keys."""
    keys = draw_keys(ctx.rng, 1 + n_distractors)
    values = draw_values(ctx.rng, 1 + n_distractors)
    q = (
        f"\nWhat is the special magic number for {keys[0]} mentioned in the text above?"
        f"\nAnswer: The special magic number for {keys[0]} is:"
    )
    return place(
        ctx,
        header=HEADER,
        needles=[NEEDLE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)],
        kinds=["evidence"] + ["distractor"] * n_distractors,
        question=q,
        haystack=haystack,
        depth_range=depth_range,
        shuffle=True,
        answers=[values[0]],
        target=f" {values[0]}.",
    )


def niah_multivalue(ctx: Ctx, *, n_values=4, haystack="essay", depth_range=(0.0, 1.0)):
    """One key with n_values needles; every value is expected. Needles appear in draw order,
    which is also the target's order."""
    (key,), values = draw_keys(ctx.rng, 1), draw_values(ctx.rng, n_values)
    q = (
        f"\nWhat are all the special magic numbers for {key} mentioned in the text above?"
        f"\nAnswer: The special magic numbers for {key} are:"
    )
    return place(
        ctx,
        header=HEADER,
        needles=[NEEDLE.format(key=key, value=v) for v in values],
        kinds=["evidence"] * n_values,
        question=q,
        haystack=haystack,
        depth_range=depth_range,
        answers=values,
        target=f" {join_list(values)}.",
    )


def niah_multiquery(ctx: Ctx, *, n_queries=4, haystack="essay", depth_range=(0.0, 1.0)):
    """n_queries keys, one value each, all asked at once; the target follows the question's
    key order while the needles appear in random order."""
    keys, values = draw_keys(ctx.rng, n_queries), draw_values(ctx.rng, n_queries)
    ks = join_list(keys)
    q = (
        f"\nWhat are the special magic numbers for {ks} mentioned in the text above?"
        f"\nAnswer: The special magic numbers for {ks} are:"
    )
    return place(
        ctx,
        header=HEADER,
        needles=[NEEDLE.format(key=k, value=v) for k, v in zip(keys, values, strict=True)],
        kinds=["evidence"] * n_queries,
        question=q,
        haystack=haystack,
        depth_range=depth_range,
        shuffle=True,
        answers=values,
        target=f" {join_list(values)}.",
    )
