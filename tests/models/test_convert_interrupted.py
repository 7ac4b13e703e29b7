"""Nothing half-written survives: an interrupted conversion cleans up (Ctrl-C, SIGTERM) or is
swept by the next one (SIGKILL); output modes follow the umask."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pflash_jax import convert as convert_mod
from pflash_jax.convert import STALE_AFTER_S, cache_entries, convert, main
from pflash_jax.embedded import open_model
from pflash_jax.models.loading import load_model

from .conftest import FIXTURES, hf_copy

CASE = "gqa1_tied"  # has tokenizer files
HOST = convert_mod._HOST
REPO = Path(__file__).resolve().parents[2]


def _work_dirs(parent):
    return sorted(p.name for p in parent.rglob(".*.pflash-*"))


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _leave(parent, name, age_s=0.0):
    d = parent / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"partial")
    t = time.time() - age_s
    for p in (d / "model.safetensors", d):
        os.utime(p, (t, t))
    return d


def test_next_conversion_sweeps_stale_work_folders(tmp_path):
    dead = _leave(tmp_path, f".out.pflash-tmp.{HOST}.{_dead_pid()}.0a1b2c3d")
    old_swap = _leave(tmp_path, f".out.pflash-old.{HOST}.{_dead_pid()}.0a1b2c3e")
    hung = _leave(tmp_path, f".x.pflash-tmp.{HOST}.{os.getpid()}.0a1b2c3f", STALE_AFTER_S + 60)
    live = _leave(tmp_path, f".y.pflash-tmp.{HOST}.{os.getpid()}.0a1b2c40")  # ours, running
    remote = _leave(tmp_path, f".z.pflash-tmp.otherhost.{_dead_pid()}.0a1b2c41")  # can't tell
    foreign = _leave(tmp_path, ".out.abcd.tmp")  # not named as ours: never touched
    out = convert(FIXTURES / CASE, tmp_path / "out")
    assert not dead.exists() and not old_swap.exists() and not hung.exists()
    assert live.exists() and remote.exists() and foreign.exists()
    assert load_model(out).tokenizer is not None


def test_cli_ctrl_c_cleans_up_exits_130(tmp_path, monkeypatch, capsys):
    def interrupted(path, tensors, metadata=None):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_mod, "write_safetensors", interrupted)
    assert main([str(FIXTURES / CASE), str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "pflash-convert: interrupted; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


# A converter that finishes writing model.safetensors, says so, then hangs before the rename:
# the state a kill mid-conversion leaves, reached deterministically.
HANG = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pflash_jax.convert as c

    real = c.write_safetensors

    def hang(path, tensors, metadata=None):
        real(path, tensors, metadata)
        Path(sys.argv[1]).write_text("ready")
        time.sleep(120)

    c.write_safetensors = hang
    if sys.argv[2] == "cli":
        sys.exit(c.main(sys.argv[3:]))
    from pflash_jax.embedded import open_model
    open_model(sys.argv[3])
""")


def _start_and_kill(tmp_path, sig, *args):
    ready = tmp_path / "ready"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", HANG, str(ready), *args], env=env,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists():
        if p.poll() is not None or time.time() > deadline:
            p.kill()
            pytest.fail(f"converter did not start: {p.communicate()[1]}")
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    return p.returncode, err


def test_sigterm_cleans_up(tmp_path):
    out = tmp_path / "out"
    rc, err = _start_and_kill(tmp_path, signal.SIGTERM, "cli", str(FIXTURES / CASE), str(out))
    assert rc == 128 + signal.SIGTERM and err == "pflash-convert: terminated; nothing was written\n"
    assert not out.exists() and _work_dirs(tmp_path) == []


def test_sigkill_leaves_a_work_folder_the_next_run_sweeps(tmp_path):
    out = tmp_path / "out"
    rc, _ = _start_and_kill(tmp_path, signal.SIGKILL, "cli", str(FIXTURES / CASE), str(out))
    assert rc == -signal.SIGKILL and not out.exists()
    assert len(_work_dirs(tmp_path)) == 1  # what the kill left behind
    convert(FIXTURES / CASE, out)
    assert _work_dirs(tmp_path) == [] and load_model(out).tokenizer is not None


def test_sigkill_during_cache_conversion_is_not_served(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PFLASH_CACHE", str(cache))  # the child inherits it
    rc, _ = _start_and_kill(tmp_path, signal.SIGKILL, "cache", str(FIXTURES / CASE))
    assert rc == -signal.SIGKILL
    assert cache_entries() == [] and len(_work_dirs(cache)) == 1
    assert open_model(FIXTURES / CASE).tokenizer is not None
    assert [info is not None for _, info in cache_entries()] == [True]
    assert _work_dirs(cache) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(umask, tmp_path, monkeypatch):
    monkeypatch.setenv("PFLASH_CACHE", str(tmp_path / "cache"))
    d = hf_copy(tmp_path, CASE)
    (d / "tokenizer.json").chmod(0o444)  # a source mode is not copied
    old = os.umask(umask)
    try:
        out = convert(d, tmp_path / "out")
        open_model(d)
    finally:
        os.umask(old)
    (entry, _), = cache_entries()
    for folder in (out, entry):
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, folder  # was 0o700
        for f in folder.iterdir():
            assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
