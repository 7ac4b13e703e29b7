"""Tasks whose evidence is spread out: variable tracking, common words, frequent words.

Word-list layout: every list item is one word " w" tokenized on its own, so the item multiset
fixes the token count before the order is shuffled. The budget is met by choosing how many
filler words to add (greedily, then single one-token-fitting words), and only as a last resort
by appending "." pads, so no word is ever cut into a different word.
"""

import numpy as np

from pflash_jax.tasks import words
from pflash_jax.tasks.case import Ctx, finish, join_list
from pflash_jax.tasks.niah import place

_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def variable_tracking(ctx: Ctx, *, n_hops=4, n_chains=2, haystack="repeat", depth_range=(0.0, 1.0)):
    """Chains `VAR A = 12345.`, `VAR B = VAR A.`, ... (n_hops links each) hidden in filler.

    Chain 0 is asked about (its statements are the evidence, in chain order); the other
    n_chains - 1 chains hold other values and are distractors. Answer: every variable of chain
    0, in assignment order."""
    rng = ctx.rng
    n_vars = n_chains * (n_hops + 1)
    names: list[str] = []
    while len(names) < n_vars:
        name = "".join(_LETTERS[rng.integers(0, 26, size=5)])
        if name not in names:
            names.append(name)
    values: list[int] = []
    while len(values) < n_chains:
        v = int(rng.integers(10_000, 100_000))
        if v not in values:
            values.append(v)
    chains = [names[c * (n_hops + 1) : (c + 1) * (n_hops + 1)] for c in range(n_chains)]
    statements = [
        [f" VAR {ch[0]} = {values[c]}."]
        + [f" VAR {ch[i]} = VAR {ch[i - 1]}." for i in range(1, len(ch))]
        for c, ch in enumerate(chains)
    ]
    # Interleave chains at random but keep each chain's statements in assignment order.
    labels = rng.permutation(np.repeat(np.arange(n_chains), n_hops + 1))
    nxt = [0] * n_chains
    needles, kinds = [], []
    for c in labels:
        needles.append(statements[c][nxt[c]])
        kinds.append("evidence" if c == 0 else "distractor")
        nxt[c] += 1
    q = (
        f"\nQuestion: Which variables are assigned the value {values[0]} in the text above?"
        f"\nAnswer: The variables assigned the value {values[0]} are:"
    )
    header = (
        "Memorize the variable assignments hidden in the text below: you will be asked "
        "which variables hold a given value."
    )
    return place(
        ctx,
        header=header,
        needles=needles,
        kinds=kinds,
        question=q,
        haystack=haystack,
        depth_range=depth_range,
        answers=chains[0],
        target=f" {join_list(chains[0])}.",
    )


def _word_pool(ctx: Ctx):
    return ctx.tok.bank(
        "wordpool", lambda: [" " + w for w in words.real_words() + words.pseudo_words()]
    )


def _pad_id(ctx: Ctx) -> np.ndarray:
    pad = ctx.tok.encode(".")
    if len(pad) != 1:
        raise ValueError(f"'.' must encode to one token for padding, got {pad.tolist()}")
    return pad


def _fill_singles(lengths: np.ndarray, candidates: np.ndarray, r: int, limit=4000):
    """Greedy: candidates (in order) whose length fits the remainder r, one copy each."""
    chosen = []
    for c in candidates[:limit]:
        if r == 0:
            break
        if lengths[c] <= r:
            chosen.append(c)
            r -= int(lengths[c])
    return np.array(chosen, dtype=np.int64), r


def _word_list_case(
    ctx: Ctx, *, header, question, items, top_words, rename, answers, target, n_pad
):
    """Shuffle the list items (word-pool indices) and build [header, list, pads, question].

    With `rename`, items hold the top words as labels -1-j (j = answer index) and each label
    is given its word only after shuffling, so the top words' first appearances follow the
    answer order (only valid when all top words have the same count)."""
    rng, pool = ctx.rng, _word_pool(ctx)
    items = rng.permutation(items)
    if rename:
        is_top = items < 0
        labels = -1 - items[is_top]
        _, first = np.unique(labels, return_index=True)
        word_for_label = np.empty(len(top_words), dtype=np.int64)
        word_for_label[np.argsort(first)] = top_words
        items[is_top] = word_for_label[labels]
    else:
        is_top = np.isin(items, top_words)
    body = pool.gather(items)
    evidence = np.flatnonzero(np.repeat(is_top, pool.lengths[items]))
    parts = [ctx.tok.encode(header), body, np.repeat(_pad_id(ctx), n_pad), ctx.tok.encode(question)]
    return finish(
        ctx,
        parts,
        evidence=[(1, evidence)],
        distractors=[],
        answers=answers,
        target=target,
        question=question,
        depth=None,
    )


def common_words(ctx: Ctx, *, n_common=10, freq_common=30, freq_uncommon=3):
    """A word list where n_common words appear freq_common times each and every other word at
    most freq_uncommon times (< freq_common); answer: the common words (order of first
    appearance). Filler words come from the real words then the pseudo-words; when the pool
    runs out it is reused, keeping every filler word below freq_common."""
    if not 0 < freq_uncommon < freq_common:
        raise ValueError("need 0 < freq_uncommon < freq_common")
    rng, pool = ctx.rng, _word_pool(ctx)
    n_real = len(words.real_words())
    common = rng.choice(n_real, size=n_common, replace=False)
    rest = np.setdiff1d(np.arange(len(pool)), common)
    order = rest[rng.permutation(len(rest))]
    answers = [words.real_words()[i] for i in common]
    k = n_common
    header = "Below is a list of words. A few of them appear many more times than the others."
    question = (
        f"\nQuestion: What are the {k} most common words in the list above?"
        f"\nAnswer: The {k} most common words are:"
    )
    target = f" {join_list(answers)}."
    ctx.set_target(target)
    fixed = len(ctx.tok.encode(header)) + len(ctx.tok.encode(question))
    common_cost = int(pool.lengths[common].sum()) * freq_common
    r = ctx.haystack_budget(fixed, min_haystack=common_cost) - common_cost
    passes = (freq_common - 1) // freq_uncommon
    cand = np.tile(order, passes)
    cum = np.cumsum(pool.lengths[cand] * freq_uncommon)
    t = int(np.searchsorted(cum, r, side="right"))
    r -= int(cum[t - 1]) if t else 0
    if t == len(cand):
        raise ValueError(
            f"n_tokens={ctx.n_tokens} exhausts the word pool for common_words; "
            f"lower it or raise freq_uncommon"
        )
    # Words not yet taken in the current pass: one more copy keeps them below freq_common.
    singles, r = _fill_singles(pool.lengths, order[(t % len(order)) :], r)
    items = np.concatenate(
        [
            np.repeat(-1 - np.arange(k), freq_common),
            np.repeat(cand[:t], freq_uncommon),
            singles,
        ]
    )
    return _word_list_case(
        ctx,
        header=header,
        question=question,
        items=items,
        top_words=common,
        rename=True,
        answers=answers,
        target=target,
        n_pad=r,
    )


def _zipf_counts(M: float, p: np.ndarray, n_top: int) -> np.ndarray:
    """floor(M * p), then the top n_top made strictly decreasing and above all the rest."""
    n = np.floor(M * p).astype(np.int64)
    for j in range(n_top - 1, -1, -1):
        n[j] = max(n[j], n[j + 1] + 1)
    return n


def frequent_words(ctx: Ctx, *, n_top=3, alpha=2.0):
    """RULER's frequent-words extraction: a text of coded (pseudo) words with Zipf(alpha)
    frequencies; answer: the n_top most frequent, most frequent first.

    Counts are exact, not sampled: count(rank r) = floor(M / r^alpha / Z) with M the largest
    value that fits the budget, and the top n_top forced strictly decreasing, so the answer is
    never a tie."""
    rng, pool = ctx.rng, _word_pool(ctx)
    n_real = len(words.real_words())
    ranked = n_real + rng.permutation(len(pool) - n_real)  # pseudo-words in rank order
    answers = [words.pseudo_words()[i - n_real] for i in ranked[:n_top]]
    header = "Below is a coded text. Some coded words appear far more often than others."
    question = (
        f"\nQuestion: What are the {n_top} most frequent coded words in the text "
        f"above?\nAnswer: The {n_top} most frequent coded words are:"
    )
    target = f" {join_list(answers)}."
    ctx.set_target(target)
    fixed = len(ctx.tok.encode(header)) + len(ctx.tok.encode(question))
    lens = pool.lengths[ranked]
    p = np.arange(1, len(ranked) + 1, dtype=np.float64) ** -alpha
    p /= p.sum()

    def cost(M):
        return int((_zipf_counts(M, p, n_top) * lens).sum())

    h = ctx.haystack_budget(fixed, min_haystack=cost(0.0))
    lo, hi = 0.0, float(h)  # every counted word costs >= 1 token, so M <= h
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= h else (lo, mid)
    counts = _zipf_counts(lo, p, n_top)
    r = h - int((counts * lens).sum())
    if counts[n_top - 1] >= 2:  # single extra words cannot tie with the top ones
        singles, r = _fill_singles(pool.lengths, ranked[counts == 0], r)
    else:
        singles = np.zeros(0, np.int64)
    items = np.concatenate([np.repeat(ranked, counts), singles])
    return _word_list_case(
        ctx,
        header=header,
        question=question,
        items=items,
        top_words=ranked[:n_top],
        rename=False,
        answers=answers,
        target=target,
        n_pad=r,
    )
