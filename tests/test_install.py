"""`pip install .` (not editable) gives a working `pflash-run`, run from another directory.

The fresh environment is a new venv into which the package is pip-installed from this checkout
(a built wheel: only what pyproject.toml ships gets there). Its third-party dependencies are
borrowed from the running interpreter's site-packages through a .pth file, so the test
downloads nothing but the build backend and takes about a minute; pflash_jax itself is the
installed copy, never the checkout (asserted below).
"""

import json
import os
import site
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    sp = Path(subprocess.check_output(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    # dependencies (jax, hydra, ...) from this interpreter; its editable pflash_jax hook is a
    # .pth file of that site-packages, which a path added this way does not run
    (sp / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    p = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(REPO)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode and "Could not find a version that satisfies" in p.stderr:
        pytest.skip(f"no package index reachable to fetch the build backend: {p.stderr[-300:]}")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return env_dir


def test_installed_package_is_not_the_checkout(installed, tmp_path):
    out = subprocess.check_output(
        [installed / "bin" / "python", "-c",
         "import pflash_jax, pathlib; print(pathlib.Path(pflash_jax.__file__).resolve())"],
        cwd=tmp_path, text=True).strip()
    assert str(REPO) not in out, out
    pkg = Path(out).parent
    for data in ("configs/config.yaml", "configs/experiment/smoke.yaml",
                 "assets/tiny/target/model.safetensors", "assets/tiny/drafter/tokenizer.json"):
        assert (pkg / data).is_file(), f"{data} not installed under {pkg}"


def test_pflash_run_from_another_directory(installed, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([installed / "bin" / "pflash-run", "task.seq_len=512", "max_new_tokens=2",
                        f"metrics_dir={tmp_path}/m"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["cases"][0]["S"] == 512 and m["cases"][0]["n_kept"] > 0
    assert "TTFT speedup over full prefill" in p.stdout
    # a sweep from the installed configs too (Hydra finds the experiment group in the package)
    h = subprocess.run([installed / "bin" / "pflash-run", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert h.returncode == 0 and "experiment: kernel, quality, smoke, speedup" in h.stdout
