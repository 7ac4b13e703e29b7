"""Train the tiny byte-level BPE tokenizer on text from the task generators.

    python scripts/train_tokenizer.py [--vocab-size 2048] [--seeds 30] [--out PATH]

PATH defaults to pflash_jax/assets/tiny_tokenizer/tokenizer.json.

Corpus: cases of every task (generated with the byte tokenizer, which needs no vocabulary, at
several lengths and seeds, training seeds only), their target answers, and every filler
sentence and word the generators can emit, so all real words end up as single tokens.
Pre-tokenization: digits are split one by one (Digits, individual) before the ByteLevel split,
so a 7-digit value is always 7 tokens, as in the Qwen3 tokenizer; tiny models copy numbers
digit by digit. Special token <|endoftext|> (id 0) is the eos and pad token. Deterministic:
same corpus and trainer settings give the same file.
"""

import argparse
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout

from pflash_jax.tasks import TASKS, ByteTokenizer, make_case, words  # noqa: E402
from pflash_jax.tasks.task_tokenizer import EOS_TOKEN, TINY_TOKENIZER_PATH  # noqa: E402


def corpus(n_seeds: int):
    bt = ByteTokenizer()
    for task in TASKS:
        for seed in range(n_seeds):
            n_bytes = (4000, 12000, 30000)[seed % 3]
            case = make_case(task, n_bytes, bt, seed)
            yield case.text + case.target
    for _ in range(3):  # the whole vocabulary, a few times, so rare words still merge
        yield "\n".join(" " + s for s in words.essay_sentences())
        yield " ".join(words.real_words() + tuple(words.VERBS))
        yield " ".join(words.pseudo_words())


def build(vocab_size: int, n_seeds: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(n_seeds), trainer=trainer)
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--seeds", type=int, default=30, help="cases per task")
    ap.add_argument("--out", type=Path, default=TINY_TOKENIZER_PATH)
    args = ap.parse_args()
    tok = build(args.vocab_size, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"saved {args.out}: vocab {tok.get_vocab_size()}, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
