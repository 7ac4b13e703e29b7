"""`pflash-convert HF_DIR OUT_DIR [--dtype source|bf16|f32|f16] [--quantize int8|int4|fp8]`:
Hugging Face Qwen3 -> ours.

Reads config.json (strictly, see models/config.py) and model.safetensors or its shards, checks
every tensor against the config (all problems reported at once), applies the declarative
HF_RULES table (transpose to [in, out], stack layers on L), and writes model.safetensors plus
config.json and tokenizer files.

Design choices:
- dtype: the source checkpoint's own by default, the same rule as the automatic conversion
  (`embedded.open_model`), so one checkpoint gives one set of logits whichever way it was
  converted; another dtype only when asked. A checkpoint mixing float dtypes (e.g. f32 norms,
  bf16 matrices) converts to the dtype holding most of its bytes (a tie: the wider one), with a
  warning: the matrices set the model's precision and widening them would double its size;
  `--dtype f32` keeps every value exact.
- `--quantize`: the layer projections are stored quantized (`layers.NAME.qvalues` +
  `layers.NAME.scale`, and quantization.json; models/quant.py), quantized from exactly what a
  plain conversion at that dtype would store, so `pflash-convert --quantize F` and a plain
  conversion loaded with `load_model(quantize=F)` give bitwise-identical params. The other
  tensors keep the dtype rule above. One projection is held on the host at a time.
- A tied config (tie_word_embeddings=true) whose file stores its own lm_head.weight is
  converted untied, with the stored head, as transformers 5 loads it (`weights.read_hf`).
- Nothing half-written: output goes to a sibling `.OUT.pflash-tmp.HOST.PID.RAND` folder that is
  renamed into place at the end. An exception or Ctrl-C removes it (the CLI turns SIGTERM into
  the same clean-up); after SIGKILL or a power cut, the next conversion into the same parent
  folder sweeps it: its PID is dead, or nothing in it changed for STALE_AFTER_S.
- Permissions follow the umask like any file the user writes (folders 0o777 & ~umask, files
  0o666 & ~umask); the source files' modes are not copied.
- Errors: a bad checkpoint raises one ConfigError / CheckpointError naming each file; the CLI
  prints `pflash-convert: error: ...` and exits 2 without a traceback (PFLASH_DEBUG=1 shows it);
  Ctrl-C prints one line and exits 130.

The conversion cache:
- Where: `$PFLASH_CACHE/converted`, default `~/.cache/pflash_jax/converted`. Each entry is a
  full converted copy (an 8B checkpoint in bf16: 16 GB), so point PFLASH_CACHE at a disk with
  room. `pflash-convert --list-cache` lists the entries with their sizes, `--clear-cache`
  deletes them.
- dtype: the source checkpoint's own unless `open_model(dtype=...)` asks for another (the rule
  of `pflash-convert`, so both give the same logits); a bf16 checkpoint is stored in bf16.
- Key: the content and the dtype, never mtimes (a `touch`, copy or move reuses the entry):
  sha256 over config.json, the shard index and tokenizer files (whole: they are small), and for
  each safetensors file its name, size, whole header and a data sample (the first and last MiB
  and 16 evenly spaced 64 KiB blocks). Why a sample and not a full hash: a full hash reads the
  whole checkpoint at every start (a 64 GB 32B checkpoint: about a minute, each run), while
  the sample reads about 3 MiB per file and still changes with any retraining or
  re-quantization, which touch every tensor. What it can miss: an edit confined to a few
  unsampled bytes of an unchanged header; convert such a checkpoint with `pflash-convert`.
- Never half-written: an entry is converted under a lock (flock, which the kernel releases if
  the process dies) and served only once its marker file MARKER, written last, exists; an
  entry without it (a run killed mid-write) is deleted and converted again. Temp folders of
  killed conversions are swept by the next conversion (`convert.sweep_stale`).
- Eviction: writing an entry deletes the older entries converted from the same source folder
  at the same dtype (a folder retrained in place leaves no stale copies behind). Nothing else
  is evicted automatically.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from pflash_jax.models import quant
from pflash_jax.models.config import ProblemsError, Qwen3Config
from pflash_jax.models.weights import (
    DTYPES,
    CheckpointError,
    TensorRef,
    hf_to_ours,
    read_hf,
    write_safetensors,
)

OUT_DTYPES = {"bf16": "BF16", "f32": "F32", "f16": "F16"}  # CLI name -> safetensors code
DTYPE_NAMES = {v: k for k, v in OUT_DTYPES.items()}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "vocab.json", "merges.txt", "special_tokens_map.json",
              "added_tokens.json")
STALE_AFTER_S = 6 * 3600  # a live writer touches its file every few seconds
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_WORK_DIR = re.compile(r"^\.(?P<out>.+)\.pflash-(?:tmp|old)\.(?P<host>[A-Za-z0-9-]+)"
                       r"\.(?P<pid>\d+)\.[0-9a-f]+$")


# ---------------------------------------------------------------- dtype
def target_dtype(refs: dict[str, TensorRef], dtype: str | None, where: Path) -> str:
    """The safetensors code to convert to: `dtype` (a name of OUT_DTYPES), or for None /
    "source" the dtype holding most of the source's bytes (a tie: the widest), with a warning
    if the source mixes dtypes."""
    check_dtype(dtype)
    if dtype not in (None, "source"):
        return OUT_DTYPES[dtype]
    nbytes = Counter()
    for r in refs.values():
        nbytes[r.dtype] += r.end - r.start
    code = max(nbytes, key=lambda c: (nbytes[c], np.dtype(DTYPES[c]).itemsize))
    if len(nbytes) > 1:
        warnings.warn(f"{where}: tensors mix dtypes {sorted(nbytes)}; converting all to {code}, "
                      f"the dtype of most bytes (--dtype f32 keeps every value exact)",
                      stacklevel=3)
    return code


def check_dtype(dtype: str | None) -> None:
    if dtype not in (None, "source", *OUT_DTYPES):
        raise ValueError(f"dtype must be source or one of {sorted(OUT_DTYPES)}, got {dtype!r}")


# ---------------------------------------------------------------- work folders
def _work_dir(out_dir: Path, kind: str) -> Path:
    """A fresh sibling folder named as ours, with our host and PID (the sweep reads them)."""
    d = out_dir.with_name(f".{out_dir.name}.pflash-{kind}.{_HOST}.{os.getpid()}."
                          f"{secrets.token_hex(4)}")
    if kind == "tmp":
        d.mkdir(mode=0o777)  # the umask applies (tempfile.mkdtemp would force 0o700)
    return d


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _newest_mtime(d: Path) -> float:
    times = [d.lstat().st_mtime]
    with os.scandir(d) as it:
        times += [e.stat(follow_symlinks=False).st_mtime for e in it]
    return max(times)


def sweep_stale(parent: Path) -> list[Path]:
    """Remove our work folders left in `parent` by a killed conversion: the PID on this host
    is dead, or (any host, or a reused PID) nothing in the folder changed for STALE_AFTER_S."""
    swept = []
    if not parent.is_dir():
        return swept
    for d in parent.iterdir():
        m = _WORK_DIR.match(d.name)
        if m is None or not d.is_dir():
            continue
        try:
            dead = m["host"] == _HOST and not _pid_alive(int(m["pid"]))
            stale = dead or time.time() - _newest_mtime(d) > STALE_AFTER_S
        except FileNotFoundError:  # another sweeper or its writer got there first
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            swept.append(d)
    return swept


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# ---------------------------------------------------------------- conversion
def _check_not_source(hf_dir: Path, out_dir: Path) -> None:
    src = hf_dir.resolve()
    if out_dir.resolve() in (src, *src.parents):
        raise ValueError(f"{out_dir}: writing there would replace the source {hf_dir}")


def convert(hf_dir: str | Path, out_dir: str | Path, dtype: str | None = None,
            overwrite: bool = False, quantize: str | None = None) -> Path:
    """Convert an HF Qwen3 checkpoint into out_dir. dtype: None / "source" (the checkpoint's
    own, see the module docstring) or a name of OUT_DTYPES; quantize: None or a name of
    quant.FORMATS (the projections stored quantized)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    check_dtype(dtype)
    if quantize is not None:
        quant.check_format(quantize)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass --overwrite to replace it)")
    _check_not_source(hf_dir, out_dir)
    cfg, refs = read_hf_safely(hf_dir)
    return write_converted(hf_dir, cfg, refs, out_dir, target_dtype(refs, dtype, hf_dir),
                           overwrite, quantize)


def read_hf_safely(hf_dir: Path) -> tuple[Qwen3Config, dict[str, TensorRef]]:
    """`weights.read_hf`, with any raw exception it did not foresee turned into one
    CheckpointError naming the folder (the cause stays chained for PFLASH_DEBUG)."""
    try:
        return read_hf(hf_dir)
    except ProblemsError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise CheckpointError([f"{hf_dir}: cannot read this checkpoint "
                               f"({type(e).__name__}: {e})"]) from e


def write_converted(hf_dir: Path, cfg: Qwen3Config, refs: dict[str, TensorRef],
                    out_dir: Path, code: str, overwrite: bool = False,
                    quantize: str | None = None) -> Path:
    """Write checked `refs` (from read_hf) into out_dir in dtype `code`, atomically; with
    `quantize`, the projections quantized (quant.lazy_quantized) and quantization.json."""
    _check_not_source(hf_dir, out_dir)
    tensors = hf_to_ours(refs, cfg, DTYPES[code])
    metadata = {"format": "pflash_jax", "source": hf_dir.name}
    if quantize is not None:
        tensors = quant.lazy_quantized(tensors, quantize)  # shape problems raise before writing
        metadata["quantization"] = quantize
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out_dir.parent)
    tmp = _work_dir(out_dir, "tmp")
    try:
        write_safetensors(tmp / "model.safetensors", tensors, metadata=metadata)
        if quantize is not None:
            quant.write_side_file(tmp, quantize)
        for name in SIDE_FILES:
            if (hf_dir / name).exists():
                shutil.copyfile(hf_dir / name, tmp / name)  # content only: the umask's mode
        src_cfg = json.loads((hf_dir / "config.json").read_text())
        if src_cfg.get("tie_word_embeddings") and not cfg.tie_word_embeddings:
            # The stored head was kept: say so in the config the loader will read.
            (tmp / "config.json").write_text(
                json.dumps({**src_cfg, "tie_word_embeddings": False}, indent=2) + "\n")
        if out_dir.exists():  # overwrite: swap, then delete the old copy
            old = _work_dir(out_dir, "old")  # swept like tmp if we die before deleting it
            out_dir.rename(old)
            tmp.rename(out_dir)
            _remove(old)
        else:
            tmp.rename(out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # e.g. a full disk: say which conversion it hit
            raise OSError(e.errno, f"converting {hf_dir} into {out_dir}: "
                                   f"{e.strerror or e}") from e
        raise
    return out_dir


# ---------------------------------------------------------------- CLI
# ---------------------------------------------------------------- the conversion cache
MARKER = "pflash_cache.json"  # written last: an entry without it is never served
_KEY_VERSION = "pflash-cache-1"  # bump when the converted layout changes
_SAMPLE_EDGE, _SAMPLE_BLOCKS, _SAMPLE_BLOCK = 1 << 20, 16, 64 << 10


def cache_root() -> Path:
    return Path(os.environ.get("PFLASH_CACHE", Path.home() / ".cache" / "pflash_jax"))


def content_key(path: Path, dtype_code: str) -> str:
    """16 hex digits from the checkpoint's content and the output dtype (see module docstring)."""

    h = hashlib.sha256(f"{_KEY_VERSION}:{dtype_code}".encode())
    for name in sorted({*SIDE_FILES, "model.safetensors.index.json"}):
        if (path / name).is_file():
            h.update(f"\0{name}\0".encode())
            h.update((path / name).read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        _hash_sample(f, h)
    return h.hexdigest()[:16]


def _hash_sample(f: Path, h) -> None:
    size = f.stat().st_size
    h.update(f"\0{f.name}:{size}\0".encode())
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        h.update(fh.read(min(n, size, 100 << 20)))  # the whole header (a sane one)
        data = fh.tell()
        step = max((size - data) // _SAMPLE_BLOCKS, 1)
        blocks = [(data, _SAMPLE_EDGE), (max(size - _SAMPLE_EDGE, data), _SAMPLE_EDGE)]
        blocks += [(data + i * step, _SAMPLE_BLOCK) for i in range(_SAMPLE_BLOCKS)]
        for start, length in blocks:
            fh.seek(start)
            h.update(fh.read(length))


# ---------------------------------------------------------------- cache entries
def _read_marker(entry: Path) -> dict | None:
    try:
        return json.loads((entry / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(entry: Path, info: dict) -> None:
    tmp = entry / f".{MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, entry / MARKER)  # atomic: the marker is whole or absent


@contextlib.contextmanager
def _locked(lock: Path, blocking: bool = True):
    """An exclusive flock on `lock` (yields False if non-blocking and held elsewhere)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def cached_conversion(path: Path, dtype: str | None = None) -> Path:
    """The cache entry holding `path` converted at `dtype` (None: the source's), converted now
    if absent or half-written."""
    cfg, refs = read_hf_safely(path)  # every config and tensor problem, before any write
    code = target_dtype(refs, dtype, path)
    name = f"{path.name}-{DTYPE_NAMES[code]}-{content_key(path, code)}"
    root = cache_root() / "converted"
    entry = root / name
    if _read_marker(entry) is not None:
        return entry
    with _locked(root / f".{name}.lock"):
        if _read_marker(entry) is None:  # nobody finished it while we waited
            if entry.exists():
                shutil.rmtree(entry)  # half-written by a killed run: never served
            write_converted(path, cfg, refs, entry, code)
            source = str(path.resolve())
            _write_marker(entry, {"source": source, "dtype": DTYPE_NAMES[code],
                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
            for other, info in cache_entries():
                if (other != entry and info is not None and info.get("source") == source
                        and info.get("dtype") == DTYPE_NAMES[code]):
                    shutil.rmtree(other, ignore_errors=True)
    return entry


def cache_entries() -> list[tuple[Path, dict | None]]:
    """(entry folder, its marker or None if half-written) for every cache entry."""
    root = cache_root() / "converted"
    if not root.is_dir():
        return []
    return [(d, _read_marker(d)) for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".")]


def _size(d: Path) -> int:
    return sum(f.lstat().st_size for f in d.rglob("*") if f.is_file())


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe_cache() -> str:
    """One line per entry (size, dtype, name, source) and a total, for `--list-cache`."""
    root = cache_root() / "converted"
    lines, total = [f"conversion cache {root} (PFLASH_CACHE={cache_root()}):"], 0
    entries = cache_entries()
    for d, info in entries:
        size = _size(d)
        total += size
        what = (f"{info.get('dtype', '?'):4}  from {info.get('source', '?')}" if info
                else "half-written (deleted on next use)")
        lines.append(f"  {_human(size):>9}  {d.name}  {what}")
    lines.append(f"  {_human(total):>9}  total, {len(entries)} entries")
    return "\n".join(lines)


def clear_cache() -> str:
    """Delete every entry not being converted right now; a one-line summary with the size."""
    root = cache_root() / "converted"
    freed, n, busy, swept = 0, 0, [], []
    for d, _ in cache_entries():
        lock = root / f".{d.name}.lock"
        with _locked(lock, blocking=False) as got:
            if not got:
                busy.append(d.name)
                continue
            freed += _size(d)
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    if root.is_dir():
        swept = sweep_stale(root)  # temp folders of killed conversions
        for lock in root.glob(".*.lock"):  # of removed entries; a held one stays
            with _locked(lock, blocking=False) as got:
                if got:
                    lock.unlink()
    msg = f"removed {n} entries ({_human(freed)}) from {root}"
    if swept:
        msg += f" and {len(swept)} temp folders of killed conversions"
    return msg + (f"; kept {busy} (being converted now)" if busy else "")



# ---------------------------------------------------------------- the CLI
class _Terminated(BaseException):
    """SIGTERM, raised so that `convert` cleans up exactly as on Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


def _cache_command(args) -> int:
    if args.list_cache:
        print(describe_cache())
    if args.clear_cache:
        print(clear_cache())
    return 0


EPILOG = """\
The automatic conversion (pflash-run, pflash_jax.embedded.open_model on a Hugging Face folder)
keeps its converted copies in $PFLASH_CACHE/converted (default ~/.cache/pflash_jax/converted),
one per checkpoint content and dtype. --list-cache shows them with their sizes; --clear-cache
deletes them. Set PFLASH_DEBUG=1 for full tracebacks."""


def debug_requested() -> bool:
    """PFLASH_DEBUG set to anything but "" or "0": user errors show their traceback (the one
    rule of pflash-convert and pflash-run)."""
    return os.environ.get("PFLASH_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pflash-convert", description=__doc__.splitlines()[0],
                                 epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", nargs="?", help="Hugging Face Qwen3 checkpoint directory")
    ap.add_argument("out_dir", nargs="?",
                    help="output directory (must not exist unless --overwrite)")
    ap.add_argument("--dtype", choices=["source", *OUT_DTYPES], default="source",
                    help="tensor dtype of the output (default: the checkpoint's own; a mixed "
                         "checkpoint: the dtype of most of its bytes)")
    ap.add_argument("--quantize", choices=list(quant.FORMATS), default=None,
                    help="store the layer projections quantized: int8 per output channel, "
                         "int4 in groups of 128 inputs, fp8 (e4m3, W8A8 at run time); "
                         "embeddings, norms and the head stay in --dtype")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--list-cache", action="store_true",
                    help="list the automatic conversion cache ($PFLASH_CACHE) with sizes")
    ap.add_argument("--clear-cache", action="store_true",
                    help="delete every entry of the automatic conversion cache")
    args = ap.parse_args(argv)
    if args.list_cache or args.clear_cache:
        if args.hf_dir:
            ap.error("--list-cache / --clear-cache take no HF_DIR / OUT_DIR")
        return _cache_command(args)
    if not (args.hf_dir and args.out_dir):
        ap.error("HF_DIR and OUT_DIR are required")

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _print_warning
            out = convert(args.hf_dir, args.out_dir, args.dtype, args.overwrite,
                          args.quantize)
    except KeyboardInterrupt:
        print("pflash-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _Terminated:
        print("pflash-convert: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except (ProblemsError, ValueError, OSError) as e:  # ValueError includes bad arguments
        if debug_requested():
            traceback.print_exc()
        print(f"pflash-convert: error: {e}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    print(f"wrote {out}")
    return 0


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"pflash-convert: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
