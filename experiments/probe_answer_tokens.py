"""Where a target's answers go wrong, token by token: for held-out cases of one task, the
target reads the prompt plus the reference answer (teacher forcing) and every answer token it
would not have predicted greedily is marked. One line per case: a mask ('.' right, 'X' wrong),
then the answer's tokens with the prediction beside each wrong one.

    python experiments/probe_answer_tokens.py --task variable_tracking --seq 1024 --cases 6
    python experiments/probe_answer_tokens.py --task niah_multikey --models DIR   # another pair

Full prefill on the whole prompt (no PFlash): it says what the target has learned, not what
selection drops. CPU is fine at short lengths (reference attention).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pflash_jax.models.qwen3 import logits
from pflash_jax.run import load
from pflash_jax.run_config import ModelSpec
from pflash_jax.tasks import make_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="variable_tracking")
    ap.add_argument("--seq", type=int, default=1024, help="prompt tokens per case")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--models", type=Path, default=None,
                    help="a folder with target/ (default: the embedded pair)")
    a = ap.parse_args()
    path = str(a.models / "target") if a.models else None
    target = load(ModelSpec("tiny_target", path=path, embedded="target"), "target")
    tok = target.tokenizer
    wrong = total = 0
    for case in make_cases(a.task, a.cases, a.seq, tok.path):
        answer = np.asarray(tok.encode(case.target))
        ids = np.concatenate([case.ids, answer])
        pred = np.asarray(logits(target, ids))[len(case.ids) - 1:-1].argmax(-1)
        mask = "".join("." if p == t else "X" for p, t in zip(pred, answer, strict=True))
        shown = " ".join(repr(tok.decode([t])) + ("" if p == t else f"(got {tok.decode([p])!r})")
                         for p, t in zip(pred, answer, strict=True))
        print(f"{mask}  |  {shown}")
        wrong += int((pred != answer).sum())
        total += answer.size
    print(f"{a.task} at {a.seq} tokens: {wrong} of {total} answer tokens wrong "
          f"({wrong / max(total, 1):.1%}), {a.cases} cases")


if __name__ == "__main__":
    main()
