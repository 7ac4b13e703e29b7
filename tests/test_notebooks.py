"""Every notebook in notebooks/ executes headless on the CPU and draws its figures (issue 8).

Notebooks are jupytext percent-format .py files: read with jupytext, run with nbclient in a
python3 kernel of this interpreter (its directory first on PATH, so the kernelspec's "python" is
this venv's), from the repo root, with PFLASH_NB_SMALL=1 (small sizes) and JAX on the CPU.
A figure counts when a cell output carries image/png. The playground's reference check must
also FAIL when its inline kernel is broken: the test edits the kernel's source text.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NB = REPO / "notebooks"
# The online-softmax rescale of the accumulator; dropping it is a classic flash-attention bug.
KERNEL_LINE = "acc = acc * corr[:, None] + plgpu.dot(p.astype(v.dtype), v)"
BROKEN_LINE = "acc = acc + plgpu.dot(p.astype(v.dtype), v)"


@pytest.fixture
def nb_env(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PFLASH_NB_SMALL", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # keep the kernel's inline backend
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return monkeypatch


def execute(name: str, text: str | None = None):
    """Run notebooks/<name>.py (or `text`, an edited copy of it) and return the notebook."""
    source = text if text is not None else (NB / f"{name}.py").read_text()
    nb = jupytext.reads(source, fmt="py:percent")
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    return nb


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def n_images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def stdout(nb) -> str:
    return "".join(o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream")


def test_every_notebook_is_tested():
    assert {p.stem for p in NB.glob("*.py")} == {"kernel_playground", "pipeline_walkthrough",
                                                 "results_explorer"}


def test_kernel_playground(nb_env):
    nb = execute("kernel_playground")
    assert n_images(nb) >= 1, "block-mask figure missing"
    out = stdout(nb)
    assert "causal diagonal only" in out and "S % block != 0" in out
    assert " NO" not in out
    if "gpu" not in out.splitlines()[0]:
        assert "No GPU here: skipping the timing against cuDNN" in out


def test_kernel_playground_check_fails_on_broken_kernel(nb_env):
    text = (NB / "kernel_playground.py").read_text()
    assert text.count(KERNEL_LINE) == 1, "the test's kernel line moved: update KERNEL_LINE"
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        execute("kernel_playground", text.replace(KERNEL_LINE, BROKEN_LINE))
    msg = str(e.value)
    assert "AssertionError" in msg and "kernel mismatch against the reference" in msg
    assert "max err" in msg and "mean err" in msg


def test_check_kernel_catches_future_leak():
    """In-process: a kernel that ignores causality on the diagonal block must fail the check."""
    from pflash_jax.attention import block_sparse_attention, playground

    def leaky(q, k, v, bm):
        return block_sparse_attention(q, k, v, bm.mask, impl="reference",
                                      block_size=bm.block_size, causal=False)

    cases = [c for c in playground.SMALL_CASES if c.mask == "diagonal"]
    with pytest.raises(AssertionError, match="causal diagonal only.*max err"):
        playground.check_kernel(leaky, cases, verbose=False)
    rows = playground.check_kernel(playground.reference, cases, verbose=False)
    assert all(r["ok"] and r["max_err"] == 0.0 for r in rows)


def test_pipeline_walkthrough(nb_env):
    nb = execute("pipeline_walkthrough")
    assert n_images(nb) >= 3, "importance, kept-span and TTFT figures expected"
    out = stdout(nb)
    assert out.count("exact match") == 2  # full prefill and PFlash answers, whatever they are
    assert "needle recall" in out


@pytest.fixture(scope="module")
def run_results(tmp_path_factory):
    """Two real pipeline runs (tiny pair, S = 512 and 768) written as metrics.json."""
    from pflash_jax.bench import write_metrics
    from pflash_jax.run import run_job
    from pflash_jax.run_config import RunConfig, SelectionSpec, TaskSpec

    root = tmp_path_factory.mktemp("results")
    for S in (512, 768):
        m = run_job(RunConfig(task=TaskSpec(seq_len=S), max_new_tokens=4, quiet=True,
                              selection=SelectionSpec(keep_ratio=0.2, forced_head_spans=1,
                                                      forced_tail_spans=2)))
        write_metrics(root / f"run_{S}" / "metrics.json", m)
    return root


def test_results_explorer(nb_env, run_results):
    nb_env.setenv("PFLASH_RESULTS", str(run_results))
    nb = execute("results_explorer")
    assert n_images(nb) >= 2, "per-run chart and the report's TTFT-vs-S plot expected"
    md = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs(nb))
    assert "### Speed" in md and "### Quality" in md


def test_results_explorer_missing_folder(nb_env, tmp_path):
    nb_env.setenv("PFLASH_RESULTS", str(tmp_path / "nothing_here"))
    nb = execute("results_explorer")
    assert "does not exist" in stdout(nb)
    assert n_images(nb) == 0
