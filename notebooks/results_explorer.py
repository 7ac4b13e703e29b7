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
# # Results explorer
#
# Loads every `metrics.json` under `results/` (or the folder in `$PFLASH_RESULTS`) with the
# functions of `experiments/report.py`, and draws the same speed and quality tables and plots
# the report writes, plus one chart per recorded run. Nothing here is edited by hand: rerun the
# experiments (`pflash-run`, `python experiments/run.py -m experiment=...`) to change it.
# An empty or missing folder is reported, not an error.

# %%
import os
import tempfile

import matplotlib.pyplot as plt

from pflash_jax import viz

ROOT = os.environ.get("PFLASH_RESULTS", "results")
rows = viz.load_results(ROOT)

# %% [markdown]
# ## Tables
# Speed: TTFT of full prefill and of PFlash with its stage breakdown, speedup measured in the
# same process. Quality: exact-match accuracy of both paths on the same cases and the drafter's
# needle recall.

# %%
if rows:
    viz.show_markdown(viz.results_tables(rows) or "(no speed or quality rows)")
else:
    print(f"nothing to tabulate: no pipeline-run metrics under {ROOT}/")

# %% [markdown]
# ## Per run

# %%
if rows:
    fig = viz.plot_result_rows(rows)
    plt.show()
else:
    print("no runs to plot")

# %% [markdown]
# ## The report's plots
# TTFT against S needs runs at several S; the accuracy heatmap and accuracy against keep ratio
# need a span-size / keep-ratio sweep. Whatever the rows allow is drawn.

# %%
made = viz.report_plots(rows, tempfile.mkdtemp(prefix="pflash_report_")) if rows else []
for path in made:
    viz.show_image(path)
if not made:
    print("no sweep plots: they need runs at several S or several keep ratios / span sizes")

# %% [markdown]
# ## Other experiments
# Kernel benchmarks, prefill baselines, tiny-pair evaluations: the table each script wrote
# beside its metrics.json, and the kernel speedup against density where there is one.

# %%
if not viz.show_other_results(ROOT):
    print(f"no other experiments' metrics under {ROOT}/")
