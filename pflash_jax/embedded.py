"""The embedded default models (the tiny trained pair), loading from either format, and the
conversion cache.

`open_model(path)` accepts a converted directory or a Hugging Face Qwen3 directory; an HF one
is converted once into the conversion cache, then loaded. The tiny pair ships as HF
checkpoints in pflash_jax/assets/tiny/{drafter,target} (DESIGN section 5), so it goes through
exactly the converter and loader a user's real Qwen3 would.

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

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from pflash_jax.models.loading import Model, load_model
from pflash_jax.models.weights import DTYPES, read_header_json

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_DIR = ASSETS / "tiny"
MARKER = "pflash_cache.json"  # written last: an entry without it is never served
_KEY_VERSION = "pflash-cache-1"  # bump when the converted layout changes
_SAMPLE_EDGE, _SAMPLE_BLOCKS, _SAMPLE_BLOCK = 1 << 20, 16, 64 << 10


def cache_root() -> Path:
    return Path(os.environ.get("PFLASH_CACHE", Path.home() / ".cache" / "pflash_jax"))


def is_hf_checkpoint(path: Path) -> bool:
    """HF Qwen3 checkpoints name tensors 'model.layers...'; converted ones 'layers....'.
    Unreadable weights count as converted: the loader then reports the file, once."""
    index = path / "model.safetensors.index.json"
    names = {}
    if index.exists():
        with contextlib.suppress(OSError, ValueError):
            names = json.loads(index.read_text())
        names = names.get("weight_map", {}) if isinstance(names, dict) else {}
    else:
        parsed = read_header_json(path / "model.safetensors", [])
        names = parsed[0] if parsed else {}
    return isinstance(names, dict) and any(n.startswith("model.") for n in names)


def content_key(path: Path, dtype_code: str) -> str:
    """16 hex digits from the checkpoint's content and the output dtype (see module docstring)."""
    from pflash_jax.convert import SIDE_FILES

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
    from pflash_jax.convert import DTYPE_NAMES, read_hf_safely, target_dtype, write_converted

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
    from pflash_jax.convert import sweep_stale

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


# ---------------------------------------------------------------- loading
def open_model(path: str | os.PathLike, *, dtype: str | None = None) -> Model:
    """Load a converted checkpoint, converting an HF checkpoint first (cached).

    dtype: None keeps the checkpoint's own dtype; "bf16", "f32" or "f16" converts (HF) or casts
    (an already converted folder) to it.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (expected a Qwen3 checkpoint directory)")
    if not is_hf_checkpoint(path):
        from pflash_jax.convert import OUT_DTYPES, check_dtype

        check_dtype(dtype)
        cast = None if dtype in (None, "source") else DTYPES[OUT_DTYPES[dtype]]
        return load_model(path, dtype=cast)
    return load_model(cached_conversion(path, dtype))


def tiny_pair(dtype: str | None = None) -> tuple[Model, Model]:
    """(drafter, target): the embedded tiny trained pair (stored in float32)."""
    missing = [n for n in ("drafter", "target") if not (TINY_DIR / n / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"embedded tiny model(s) {missing} missing under {TINY_DIR}: train them with "
            f"`python experiments/train_tiny.py` (see README)")
    return (open_model(TINY_DIR / "drafter", dtype=dtype),
            open_model(TINY_DIR / "target", dtype=dtype))
