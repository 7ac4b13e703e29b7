# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # PFlash pipeline walkthrough on the tiny pair
#
# One needle-in-a-haystack prompt in the PFlash benchmark format goes through both paths:
#
# - **PFlash**: the drafter reads the whole prompt (block-sparse attention), scores every token
#   by the attention its last 8 tokens pay it, the top spans are kept, and the target prefills
#   only those tokens, then decodes the answer;
# - **full prefill**: the target reads every token (the baseline).
#
# Models: the embedded tiny trained Qwen3-architecture pair (`pflash_jax/assets/tiny`,
# docs/design.md section 5). They are small and may be retrained: the answers below are whatever
# the current weights say, right or wrong. Runs on a CPU; `PFLASH_NB_SMALL=1` halves the prompt.

# %%
import os

import matplotlib.pyplot as plt

from pflash_jax import viz
from pflash_jax.embedded import tiny_pair
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.pipeline import full_prefill, speculative_prefill
from pflash_jax.pflash.spans import needle_recall
from pflash_jax.tasks import make_case, score

SMALL = os.environ.get("PFLASH_NB_SMALL") == "1"
S = 2048 if SMALL else 4096

drafter, target = tiny_pair()
tok = target.tokenizer
for name, m in (("drafter", drafter), ("target", target)):
    c = m.config
    print(f"{name}: {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{c.num_attention_heads} q / {c.num_key_value_heads} kv heads, vocab {c.vocab_size}")

# %% [markdown]
# ## The case
# `niah_pflash`: a repeated filler paragraph, one needle sentence at a random depth, the
# question last. The prompt is exactly S tokens of the tiny tokenizer.

# %%
case = make_case("niah_pflash", S, tok.path, seed=0)
print(f"S = {case.n_tokens} tokens, needle at tokens {case.needle_positions[0]}-"
      f"{case.needle_positions[-1]} (depth {case.depth:.2f})")
print("needle:  ", repr(tok.decode(case.ids[case.needle_positions])))
print("question:", repr(case.question))
print("expected:", case.answers)

# %% [markdown]
# ## Configuration
# The `pflash` preset (NoPE scoring, smoothing after the mean, floor budget, the kept tokens
# renumbered 0..K-1 for the target) with two changes: keep 10% of the spans; and force only 1
# head and 2 tail spans (the preset's 8 + 24 forced spans would be half of a 2K prompt and hide
# the selection). `positions="original"` would keep the tokens' prompt positions instead
# (docs/design.md 1.2).

# %%
cfg = preset("pflash", keep_ratio=0.1, forced_head_spans=1, forced_tail_spans=2)
print(cfg.to_dict())
n_new = len(tok.encode(case.target)) + 2  # the answer's tokens and a little slack

# %%
pf = speculative_prefill(drafter, target, case.ids, cfg, max_new_tokens=n_new)
full = full_prefill(target, case.ids, max_new_tokens=n_new)

# %% [markdown]
# ## What the drafter saw
# Importance per token (mean over tail queries of the max over layers and heads of their
# attention, smoothed), the span means that selection ranks, the needle in red; below, the
# kept spans.

# %%
fig = viz.plot_importance(pf.importance, needle_positions=case.needle_positions,
                          kept_positions=pf.kept_positions, span_size=cfg.selection.span_size,
                          title=f"drafter importance over the {S}-token prompt")
plt.show()
recall = needle_recall(pf.kept_positions, case.needle_positions)
print(f"kept {pf.n_kept} of {S} tokens ({pf.n_kept / S:.1%}); needle recall {recall:.2f}; "
      f"drafter block density {pf.block_density}")

# %% [markdown]
# The kept runs alone, zoomed on the needle's neighbourhood:

# %%
lo = max(0, int(case.needle_positions[0]) - 256)
hi = min(S, int(case.needle_positions[-1]) + 256)
fig = viz.plot_kept_spans(pf.kept_positions, S, needle_positions=case.needle_positions,
                          xlim=(lo, hi), title=f"tokens {lo}-{hi}")
plt.show()
print("kept runs:", viz.runs(pf.kept_positions))

# %% [markdown]
# ## Answers
# Exact match: the first whitespace-separated run of the continuation must equal the value.

# %%
expected = case.answers[0]
for name, toks in (("full prefill", full.tokens), ("PFlash", pf.tokens)):
    text = tok.decode(toks)
    print(f"{name:13s} {text!r:40s} exact match {score(case, text):.0f}  (expected {expected})")

# %% [markdown]
# ## Time to first token (CPU, first call: includes compilation)
# Speed on a CPU with toy models means little; `pflash-run` on a GPU measures warm calls.

# %%
fig = viz.plot_ttft_breakdown({"PFlash": pf.timings, "full prefill": full.timings},
                              title="TTFT by stage (first call, CPU)")
plt.show()
print({k: round(v, 3) for k, v in pf.timings.items()})
print({k: round(v, 3) for k, v in full.timings.items()})
