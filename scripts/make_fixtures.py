"""Make the tiny Hugging Face Qwen3 fixtures CI checks our logits against (no torch in CI).

Run with a Python that has torch + transformers (here: .venv-ref/bin/python):
    .venv-ref/bin/python scripts/make_fixtures.py [OUT_DIR]   # default tests/fixtures/models

Each case is a seeded random float32 Qwen3ForCausalLM saved with save_pretrained plus
reference.npz holding transformers' own outputs:
  full_ids [T], full_logits [T,V]          positions 0..T-1
  pf_ids [P], pf_pos [P], pf_logits [P,V]  prefill at scattered increasing position_ids
  dec_ids [n], dec_pos [n], dec_logits [n,V]  decode steps after that prefill (HF cache)
  gen_prompt [p], gen_tokens [20]          greedy generation (model.generate)
The model functions are importable (`build_case`, `reference_outputs`) so the live parity test
can make a fresh model the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

VOCAB = 512
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256,
            initializer_range=0.05)
CASES = {
    # name: overrides (GQA ratio = heads / kv heads)
    "gqa1_tied": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                      tie_word_embeddings=True),
    "gqa2_untied_hd32": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             tie_word_embeddings=False),
    "gqa4_sharded": dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                         tie_word_embeddings=False),
    "yarn": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                 tie_word_embeddings=True, max_position_embeddings=128,
                 rope_scaling={"rope_type": "yarn", "factor": 4.0,
                               "original_max_position_embeddings": 32}),
}
SHARDED = {"gqa4_sharded"}
WITH_TOKENIZER = {"gqa1_tied"}
N_GEN = 20


def build_case(overrides: dict, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen3Config(**{**BASE, **overrides})
    model = Qwen3ForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms are ones at init: perturb them so a dropped weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _scattered_positions(rng, n: int, hi: int) -> np.ndarray:
    return np.sort(rng.choice(hi, size=n, replace=False)).astype(np.int64)


@torch.no_grad()
def reference_outputs(model: Qwen3ForCausalLM, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    max_pos = model.config.max_position_embeddings
    out = {}
    T = 40
    ids = rng.integers(0, VOCAB, T)
    out["full_ids"] = ids
    out["full_logits"] = model(torch.tensor(ids)[None]).logits[0].float().numpy()

    # Prefill at scattered positions (past original_max_position_embeddings for the yarn
    # case), then decode with HF's cache at positions continuing after the last one. A cache is
    # passed so transformers never reads the position gaps as packed-sequence boundaries.
    from transformers import DynamicCache

    P, n_dec = 20, 6
    pos = _scattered_positions(rng, P, max_pos - n_dec - 8)
    pf_ids = rng.integers(0, VOCAB, P)
    cache = DynamicCache(config=model.config)
    o = model(torch.tensor(pf_ids)[None], position_ids=torch.tensor(pos)[None],
              past_key_values=cache, use_cache=True)
    out |= {"pf_ids": pf_ids, "pf_pos": pos, "pf_logits": o.logits[0].float().numpy()}
    dec_ids = rng.integers(0, VOCAB, n_dec)
    dec_pos = pos[-1] + 1 + np.arange(n_dec) * 2  # gaps in decode positions too
    cache, dec_logits = o.past_key_values, []
    for tok, p in zip(dec_ids, dec_pos, strict=True):
        o = model(torch.tensor([[tok]]), position_ids=torch.tensor([[p]]),
                  past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        dec_logits.append(o.logits[0, -1].float().numpy())
    out |= {"dec_ids": dec_ids, "dec_pos": dec_pos, "dec_logits": np.stack(dec_logits)}

    prompt = rng.integers(0, VOCAB, 16)
    gen = model.generate(torch.tensor(prompt)[None], max_new_tokens=N_GEN, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(gen.scores)[:, 0]
    top2 = scores.topk(2, dim=-1).values
    out["gen_min_margin"] = np.float32((top2[:, 0] - top2[:, 1]).min())
    out |= {"gen_prompt": prompt, "gen_tokens": gen.sequences[0, len(prompt):].numpy()}
    return {k: (v.astype(np.int32) if v.dtype == np.int64 else v) for k, v in out.items()}


def _tiny_tokenizer(path: Path) -> None:
    """A word-level tokenizer over VOCAB tokens, to test the tokenizer wrapper and copying."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1} | {f"w{i}": i for i in range(2, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


def make_case(name: str, out_root: Path, seed: int) -> Path:
    model = build_case(CASES[name], seed)
    d = out_root / name
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    shard = "150KB" if name in SHARDED else "50GB"
    model.save_pretrained(d, safe_serialization=True, max_shard_size=shard)
    (d / "generation_config.json").unlink(missing_ok=True)
    if name in WITH_TOKENIZER:
        _tiny_tokenizer(d)
    ref = reference_outputs(model, seed)
    assert ref["gen_min_margin"] > 1e-3, f"{name}: greedy top-2 margin too small to be stable"
    np.savez_compressed(d / "reference.npz", **ref)
    return d


def main(argv: list[str]) -> None:
    out_root = Path(argv[0]) if argv else Path(__file__).parents[1] / "tests/fixtures/models"
    total = 0
    for seed, name in enumerate(CASES):
        d = make_case(name, out_root, seed)
        size = sum(f.stat().st_size for f in d.iterdir())
        total += size
        print(f"{name}: {sorted(f.name for f in d.iterdir())} {size / 1e3:.0f} kB")
    print(f"total {total / 1e6:.2f} MB; torch {torch.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
