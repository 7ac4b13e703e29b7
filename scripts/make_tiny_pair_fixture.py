"""Reference logits of the committed tiny pair from transformers (run with torch installed).

    python scripts/make_tiny_pair_fixture.py      # writes tests/fixtures/tiny_pair_logits.npz
    python scripts/make_tiny_pair_fixture.py --pair DIR --out FILE   # another pair folder

The test tests/test_tiny_pair.py compares our converter + loader + forward against these, so CI
needs no torch; it also runs live against transformers wherever torch is importable.
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "tiny_pair_logits.npz"


def reference_ids(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, vocab, 24).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", type=Path, default=REPO / "pflash_jax/assets/tiny",
                    help="a folder with drafter/ and target/ (default: the embedded pair)")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    arrays = {}
    for name in ("drafter", "target"):
        m = AutoModelForCausalLM.from_pretrained(a.pair / name,
                                                 dtype=torch.float32).eval()
        ids = reference_ids(m.config.vocab_size)
        with torch.no_grad():
            logits = m(torch.from_numpy(ids)[None]).logits[0].numpy()
        arrays[f"{name}_ids"] = ids
        arrays[f"{name}_logits"] = logits.astype(np.float32)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out, **arrays)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
