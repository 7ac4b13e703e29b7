"""`pflash-run` (also `python -m pflash_jax.run` and `python experiments/run.py`): the main job.

Loads a drafter and a target (the embedded tiny pair by default; any Qwen3 checkpoint by path;
or random weights of a Qwen3 preset for speed runs), builds the prompt(s) (a text file or
generated task cases), runs PFlash and the full-prefill baseline in the same process, prints
the kept spans, the answers, the TTFT breakdown and the speedup, and writes metrics.json.

    pflash-run                                         # tiny pair, one niah_pflash case
    pflash-run task.seq_len=16384 selection.keep_ratio=0.1 selection.span_size=16
    pflash-run drafter.path=/ckpt/Qwen3-0.6B target.path=/ckpt/Qwen3-8B task.prompt_file=p.txt
    pflash-run drafter.path=... target.path=... task.prompt_format=chat   # in the chat template
    python experiments/run.py -m experiment=smoke       # a sweep (Hydra multirun)

Timing protocol: per case, one untimed call of each path compiles (its time is reported as
compile time), then `repeats` warm calls; the median of each stage is recorded.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pflash_jax.bench import host_peak_bytes, peak_memory_bytes, provenance, write_metrics
from pflash_jax.run_config import ModelSpec, RunConfig

CONFIGS = Path(__file__).resolve().parent / "configs"  # package data: works installed too


# ---------------------------------------------------------------- models and prompts
def checkpoint_dir(spec: ModelSpec):
    """The checkpoint folder a (not random-init) spec reads: its path, else the embedded pair's
    model of that name; None if neither is set."""
    from pflash_jax.embedded import TINY_DIR

    return spec.path or (TINY_DIR / spec.embedded if spec.embedded else None)


def load(spec: ModelSpec, role: str, place=None):
    """The model `spec` names; `place` (a params.Placement, e.g. `placement(spec)`'s) says where
    its tensors go, each made there directly (never whole on one device first); None: the
    default device."""
    from pflash_jax.embedded import open_model
    from pflash_jax.models.config import model_preset
    from pflash_jax.models.loading import Model
    from pflash_jax.models.params import init_params

    on_gpu = jax.default_backend() == "gpu"
    dtype = {"auto": jnp.bfloat16 if on_gpu else jnp.float32, "bf16": jnp.bfloat16,
             "f32": jnp.float32}.get(spec.dtype)
    if dtype is None:
        raise ValueError(f"{role}.dtype must be auto, bf16 or f32, got {spec.dtype!r}")
    if spec.random_init:
        if not spec.preset:
            raise ValueError(f"{role}.random_init needs {role}.preset (e.g. qwen3-0.6b)")
        cfg = with_yarn(model_preset(spec.preset), spec)
        seed = {"drafter": 1, "target": 2}[role]
        if spec.quantize:  # made and quantized one layer at a time: never whole in bf16
            from pflash_jax.models.quant import init_quantized_params

            return Model(cfg, init_quantized_params(cfg, jax.random.key(seed), spec.quantize,
                                                    dtype, place=place))
        return Model(cfg, init_params(cfg, jax.random.key(seed), dtype, place=place))
    path = checkpoint_dir(spec)
    if path is None:
        raise ValueError(f"{role}: set {role}.path (a checkpoint dir) or {role}.random_init")
    if not Path(path).is_dir():
        what = "is a file, not a checkpoint folder" if Path(path).exists() else "does not exist"
        raise FileNotFoundError(f"{role}.path: {path} {what}")
    m = open_model(path, quantize=spec.quantize, place=place)
    if m.params.embed_tokens.dtype != dtype:  # elementwise: each shard cast where it is
        m = Model(m.config, cast_params(m.params, dtype), m.tokenizer)
    return Model(with_yarn(m.config, spec), m.params, m.tokenizer)


def cast_params(params, dtype):
    """Every unquantized tensor to `dtype` (the compute dtype); quantized weights keep theirs."""
    from pflash_jax.models.quant import QuantizedWeight

    return jax.tree.map(lambda a: a if isinstance(a, QuantizedWeight) else a.astype(dtype),
                        params, is_leaf=lambda a: isinstance(a, QuantizedWeight))


def placement(spec: ModelSpec):
    """`target.tensor_parallel` N > 1: a `sharding.Placement` over the first N devices, which
    `load` follows to put each of the target's tensors straight onto its shards (a target that
    does not fit one device loads); None for N = 1 (the default device)."""
    if spec.tensor_parallel == 1:
        return None
    from pflash_jax import sharding

    return sharding.Placement(sharding.make_mesh(spec.tensor_parallel),
                              what="target.tensor_parallel")


def target_attention(place, attn: str):
    """(dense attention for prefill_at, fuse_qkv) of a target loaded with `place`: under a
    sharding.Placement, `attn` (an impl name) run on each device's heads and fuse_qkv off;
    without one, (attn, True)."""
    if place is None:
        return attn, True
    from pflash_jax import sharding

    # fuse_qkv off: concatenating head-sharded [Wq|Wk|Wv] makes XLA reshuffle them every layer
    return sharding.ShardedAttention(place.mesh, attn), False


def with_yarn(cfg, spec: ModelSpec):
    """`{role}.yarn=true`: Qwen3's long-context setting (YaRN, factor `yarn_factor` over the
    32K pretraining length), for presets and loaded checkpoints alike. A checkpoint whose
    config.json already has rope_scaling keeps its own values: they were set on purpose."""
    if not spec.yarn or cfg.rope_scaling is not None:
        return cfg
    return cfg.with_yarn(factor=spec.yarn_factor)


@dataclasses.dataclass
class Prompt:
    ids: np.ndarray
    case: object | None = None  # a tasks.Case when generated
    template_tokens: int = 0  # tokens the chat template added (prompt_format=chat)


def prompts(c: RunConfig, target) -> list[Prompt]:
    t = c.task
    tok = target.tokenizer
    template = chat_template(c.target) if t.prompt_format == "chat" else None
    if t.prompt_file:
        if tok is None:
            raise ValueError(f"task.prompt_file={t.prompt_file!r} needs a target with a "
                             f"tokenizer.json")
        text = read_prompt(Path(t.prompt_file))
        if template is None:
            return [Prompt(tok.encode(text))]
        ids = tok.encode(template.render([{"role": "user", "content": text}]))
        return [Prompt(ids, template_tokens=len(ids) - len(tok.encode(text)))]
    if t.name == "random":
        rng = np.random.default_rng(t.seed)
        V = target.config.vocab_size
        return [Prompt(rng.integers(1, V, t.seq_len).astype(np.int32)) for _ in range(t.n_cases)]
    from pflash_jax.tasks import make_cases

    if tok is None:
        raise ValueError(f"task.name={t.name!r} needs a target with a tokenizer.json "
                         f"(or task.name=random for random-weight speed runs)")
    # chat: the case is sized with the template's tokens counted (tasks/chat.py)
    frame = template.frame() if template is not None else None
    return [Prompt(c_.ids, c_, c_.template_tokens)
            for c_ in make_cases(t.name, t.n_cases, t.seq_len, tok.path, seed=t.seed,
                                 chat=frame)]


def chat_template(spec: ModelSpec):
    """The target checkpoint's chat template (task.prompt_format=chat); a ValueError naming
    its tokenizer_config.json when it has none."""
    from pflash_jax.models.chat_template import ChatTemplateError, load_chat_template

    folder = None if spec.random_init else checkpoint_dir(spec)
    if folder is None:
        raise ValueError("task.prompt_format=chat renders the target checkpoint's chat template; "
                         "a random_init target has none (use task.prompt_format=raw)")
    try:
        return load_chat_template(folder)
    except ChatTemplateError as e:
        raise ValueError(f"task.prompt_format=chat: {e}; use task.prompt_format=raw for "
                         f"this checkpoint") from None


def prompt_record(p: Prompt, fmt: str) -> dict:
    """What metrics record of a prompt's layout: its format, the chat template's tokens and, for
    task cases, where the template's prefix ends and the needles' [start, end) runs (shifted by
    that prefix), so recall can be checked against the ids."""
    out: dict = {"prompt_format": fmt}
    if fmt == "chat":
        out["template_tokens"] = p.template_tokens
    if p.case is not None:
        out["template_prefix"] = p.case.template_prefix
        out["needle_spans"] = [list(s) for s in _spans(np.asarray(p.case.needle_positions))]
    return out


def read_prompt(path: Path) -> str:
    """The text of task.prompt_file; every way it can be unusable named with the file."""
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"task.prompt_file: {path} {what}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise OSError(f"task.prompt_file: cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise ValueError(f"task.prompt_file: {path} looks binary (it holds NUL bytes); give a "
                         f"UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"task.prompt_file: {path} is not UTF-8 text (byte {e.start}: "
                         f"{data[e.start:e.start + 1]!r}); re-save it as UTF-8, e.g. "
                         f"`iconv -f latin1 -t utf-8`") from None
    if not text.strip():
        raise ValueError(f"task.prompt_file: {path} is empty")
    return text


def pflash_config(c: RunConfig):
    from pflash_jax.pflash.config import preset

    s = dataclasses.asdict(c.selection)
    name = s.pop("preset")
    overrides = {k: v for k, v in s.items() if v is not None}
    a = c.attention
    # Only what the run sets overrides the preset: an unset attention option (None) keeps the
    # preset's value, so selection=specprefill runs SpecPrefill's dense drafter.
    attention = {"attention_impl": a.impl, "alpha": a.alpha, "block_density": a.density,
                 "block_size": a.block_size, "attention_qk": a.qk, "attention_pv": a.pv}
    overrides.update({k: v for k, v in attention.items() if v is not None})
    return preset(name, **overrides)


# ---------------------------------------------------------------- the job
def _median(dicts: list[dict]) -> dict:
    return {k: statistics.median(d[k] for d in dicts) for k in dicts[0]}


def _spans(kept: np.ndarray) -> list[tuple[int, int]]:
    """Kept positions as [start, end) runs."""
    if kept.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(kept) != 1)
    starts = np.concatenate([[kept[0]], kept[breaks + 1]])
    ends = np.concatenate([kept[breaks] + 1, [kept[-1] + 1]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def run_job(c: RunConfig) -> dict:
    """One run: PFlash and (compare_full) full prefill on every prompt -> metrics dict."""
    if c.grid.span_sizes or c.grid.keep_ratios:
        raise ValueError("run_job runs one cell; use run_cells for a grid")
    return run_cells(c)[0][1]


def grid_cells(c: RunConfig) -> list[tuple[str | None, RunConfig]]:
    """(cell name, the RunConfig of that cell): one unnamed cell without a grid."""
    if not (c.grid.span_sizes or c.grid.keep_ratios):
        return [(None, c)]
    spans = c.grid.span_sizes or [c.selection.span_size]
    keeps = c.grid.keep_ratios or [c.selection.keep_ratio]
    cells = []
    for sp in spans:
        for kr in keeps:
            sel = dataclasses.replace(c.selection, span_size=sp, keep_ratio=kr)
            cell = dataclasses.replace(c, selection=sel, grid=type(c.grid)())
            pc = pflash_config(cell)  # the preset's value where the grid leaves one axis
            cells.append((f"span{pc.selection.span_size}_keep{pc.selection.keep_ratio}", cell))
    return cells


def run_cells(c: RunConfig) -> list[tuple[str | None, dict]]:
    """Every cell of the job's grid on the same prompts. Per prompt the drafter pass and the
    full-prefill baseline run once (they do not depend on span size or keep ratio); each cell
    then selects spans, prefills the target and decodes. Timings are per cell as in a single
    run (the drafter pass's time counted in each)."""
    from tqdm import tqdm

    from pflash_jax.pflash.pipeline import check_inputs

    cells = grid_cells(c)
    cfgs = [pflash_config(cc) for _, cc in cells]
    pcfg = cfgs[0]
    # One drafter pass serves every cell: the cells may differ in span size and keep ratio only.
    assert all(dataclasses.replace(cfg, selection=pcfg.selection) == pcfg for cfg in cfgs)
    check_kernels(c, pcfg)
    if c.task.prompt_format == "chat":
        chat_template(c.target)  # a checkpoint without one fails before any model loads
    t0 = time.perf_counter()
    place = placement(c.target)  # tensor_parallel: the target loads straight onto its shards
    drafter, target = load(c.drafter, "drafter"), load(c.target, "target", place)
    loading = {"load_s": time.perf_counter() - t0, "device_peak_bytes": peak_memory_bytes(),
               "host_peak_bytes": host_peak_bytes()}
    if c.task.prompt_format == "chat":  # question rows skip the template's own lines
        cfgs = [chat_question_lines(cfg, drafter, c.target) for cfg in cfgs]
        pcfg = cfgs[0]
    if place is not None:  # each of the target's devices (the first holds the drafter too)
        loading["device_peaks_bytes"] = [peak_memory_bytes(d) for d in place.mesh.devices.flat]
    # the same dense attention for both paths (sharded per device's heads under tensor_parallel)
    target_attn, fuse_qkv = target_attention(place, c.attention.target)
    models = {"drafter": describe(drafter, c.drafter), "target": describe(target, c.target)}
    if not c.quiet:
        for role, spec in (("drafter", c.drafter), ("target", c.target)):
            d = models[role]
            src = ("random init" if spec.random_init else spec.path
                   or f"embedded tiny pair ({spec.embedded})")
            print(f"{role}: {d['name']} [{src}], {d['layers']} layers, hidden {d['hidden']}, "
                  f"{d['heads']}/{d['kv_heads']} heads, {d['dtype']}, {jax.default_backend()}"
                  + (f" x {spec.tensor_parallel} devices" if spec.tensor_parallel > 1 else ""))
    tok = target.tokenizer
    eos = tok.eos_token_id if tok is not None else None
    kw = dict(max_new_tokens=c.max_new_tokens, chunk=c.chunk, eos_id=eos,
              kv_cache=c.target.kv_cache, fuse_qkv=fuse_qkv)
    rows: list[list[dict]] = [[] for _ in cells]
    ps = prompts(c, target)
    plans = memory_plans(c, drafter, target, ps, cfgs, target_attn, fuse_qkv)
    # planning compiles each stage; on the GPU compiling (GEMM autotuning) allocates too
    loading["device_peak_after_plan_bytes"] = peak_memory_bytes()
    # Progress: a bar for quiet sweeps; otherwise each case's summary, numbered, is the
    # progress (a bar between those summaries would be redrawn around every one of them).
    bar = tqdm(total=len(ps) * len(cells), desc="cases x cells", disable=not c.quiet)
    for p in ps:
        S = int(p.ids.shape[0])
        layout = prompt_record(p, c.task.prompt_format)
        for cfg in cfgs:
            check_inputs(drafter, target, p.ids, cfg, max_new_tokens=c.max_new_tokens,
                         chunk=c.chunk)
        plan = plans[S]
        skip = {path: plan.paths[path].verdict(plan.budget) for path in ("pflash", "full")
                if not plan.paths[path].fits(plan.budget)}
        # PFlash first, then the baseline: the process's peak after each is that path's
        # measured peak (the larger full prefill would hide PFlash's), set beside the plan.
        prow = pflash_rows(c, p, drafter, target, cfgs, skip, kw, target_attn, tok)
        peak_pflash = peak_memory_bytes()
        full_row = full_prefill_row(c, p, target, skip, kw, target_attn, tok)
        full_row["peak_after_pflash_bytes"] = peak_pflash
        full_row["peak_after_full_bytes"] = peak_memory_bytes()
        for i, row in enumerate(prow):
            kept = row.pop("_kept_positions", None)
            row = {"S": row["S"], **layout, **row}
            row.update(full_row)
            if "full" in row and "pflash" in row:
                row["speedup"] = row["full"]["ttft"] / row["pflash"]["ttft"]
            rows[i].append(row)
            bar.update()
            if not c.quiet and kept is not None:
                done = sum(map(len, rows))
                print(f"\n[{done}/{len(ps) * len(cells)}]"
                      + (f" {cells[i][0]}" if cells[i][0] else ""), end="")
                print_case(row, kept)
        if not c.quiet and "pflash" in skip:
            print(f"\nprompt {S} tokens: PFlash {skip['pflash']}")
    bar.close()
    from pflash_jax.attention.api import resolve_dense
    from pflash_jax.pflash.drafter import resolve_impl

    kernels = {  # what "auto" resolved to on this machine
        "drafter": resolve_impl(pcfg.attention_impl, drafter.params.embed_tokens.dtype),
        "target_and_full_prefill": resolve_dense(c.attention.target,
                                                 target.params.embed_tokens.dtype)}
    out = []
    for (name, cc), cfg, cases in zip(cells, cfgs, rows, strict=True):
        out.append((name, {
            "experiment": c.experiment, "run_config": dataclasses.asdict(cc),
            "pflash_config": cfg.to_dict(), "kernels": kernels, "models": models,
            "peak_memory_bytes": peak_memory_bytes(), "loading": loading,
            "summary": summarize(cases),
            "memory_plan": plans[max(plans)].to_dict(),
            "memory_plans": {str(k): v.to_dict() for k, v in plans.items()},
            "cases": cases}))
    return out


def chat_question_lines(cfg, drafter, target_spec: ModelSpec):
    """cfg with question_lines raised by the lines the chat template writes after the user
    message (drafter.template_tail_lines), where the question's rows vote: in the chat format
    those lines sit between the question and the prompt's end. Unchanged otherwise (without a
    drafter tokenizer tail_row_weights says what is missing)."""
    from pflash_jax.pflash.drafter import template_tail_lines

    if cfg.scoring.tail_rows != "question" or drafter.tokenizer is None:
        return cfg
    after = chat_template(target_spec).frame()[1]
    lines = cfg.scoring.question_lines + template_tail_lines(drafter.tokenizer, after)
    return dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring,
                                                                question_lines=lines))


def check_kernels(c: RunConfig, pcfg) -> None:
    """Explicit kernels that cannot run on this machine are a user error, named by option."""
    from pflash_jax.attention.api import check_runs_here

    how = f" (device_profile={c.device_profile} chose it)" if c.device_profile else ""
    checks = [("dense", c.attention.target, "attention.target")]
    if pcfg.attention_impl != "dense":
        checks.insert(0, ("sparse", pcfg.attention_impl, "attention.impl"))
    for kind, impl, option in checks:
        try:
            check_runs_here(kind, impl, option=option)
        except ValueError as e:
            raise ValueError(f"{e}{how}") from None


def full_prefill_row(c: RunConfig, p: Prompt, target, skip: dict, kw: dict, target_attn,
                     tok) -> dict:
    """The full-prefill baseline of one prompt (timed, graded), or why it was not run."""
    from pflash_jax.pflash.pipeline import full_prefill
    from pflash_jax.tasks import score

    row: dict = {}
    if not c.compare_full:
        return row
    if "full" in skip:
        return {"full_skipped": skip["full"]}
    t0 = time.perf_counter()
    first = full_prefill(target, p.ids, attn=target_attn, **kw)
    row["full_first_call_s"] = time.perf_counter() - t0
    fulls = [full_prefill(target, p.ids, attn=target_attn, **kw)
             for _ in range(c.repeats)] or [first]
    row.update(full=_median([x.timings for x in fulls]), full_tokens=fulls[-1].tokens.tolist())
    row["full_compile_s"] = row["full_first_call_s"] - row["full"]["ttft"]
    if tok is not None:  # a prompt file too: the answer PFlash's is compared with
        row["full_answer"] = tok.decode(fulls[-1].tokens, skip_special_tokens=True)
    if p.case is not None:
        row["full_acc"] = score(p.case, fulls[-1].tokens, tok)
    return row


def pflash_rows(c: RunConfig, p: Prompt, drafter, target, cfgs, skip: dict, kw: dict,
                target_attn, tok) -> list[dict]:
    """One row per grid cell for one prompt: one drafter pass shared by the cells, then each
    cell's selection, target prefill and decode (timed, graded); or why it was not run. Each
    row carries its kept positions as `_kept_positions` for printing (dropped before saving)."""
    from pflash_jax.pflash.drafter import drafter_pass
    from pflash_jax.pflash.pipeline import prefill_selected
    from pflash_jax.pflash.spans import needle_recall
    from pflash_jax.tasks import score

    S = int(p.ids.shape[0])
    if "pflash" in skip:  # recorded, not run: a sweep on a small card completes
        return [{"S": S, "pflash_skipped": skip["pflash"]} for _ in cfgs]
    pcfg = cfgs[0]
    t0 = time.perf_counter()
    dp_first = drafter_pass(drafter, p.ids, pcfg, chunk=c.chunk)  # compiles
    dp_first_s = time.perf_counter() - t0
    dps = [drafter_pass(drafter, p.ids, pcfg, chunk=c.chunk) for _ in range(c.repeats)]
    rows = []
    for cfg in cfgs:
        row: dict = {"S": S}
        t0 = time.perf_counter()
        first = prefill_selected(target, p.ids, dp_first, cfg, target_attn=target_attn, **kw)
        row["pflash_first_call_s"] = time.perf_counter() - t0 + dp_first_s
        runs = [prefill_selected(target, p.ids, dp, cfg, target_attn=target_attn, **kw)
                for dp in dps] or [first]
        r = runs[-1]
        row.update(pflash=_median([x.timings for x in runs]), n_kept=r.n_kept,
                   kept_frac=r.n_kept / S, block_density=r.block_density,
                   pflash_tokens=r.tokens.tolist(), n_spans_kept=len(_spans(r.kept_positions)),
                   n_anchor_spans=r.n_anchor_spans, n_anchor_found=r.n_anchor_found)
        row["pflash_compile_s"] = row["pflash_first_call_s"] - row["pflash"]["ttft"]
        if p.case is not None:
            row["task"] = p.case.task
            row["recall"] = needle_recall(r.kept_positions, p.case.needle_positions)
            row["pflash_answer"] = tok.decode(r.tokens, skip_special_tokens=True)
            row["pflash_acc"] = score(p.case, r.tokens, tok)
            row["expected"] = list(p.case.answers)
        elif tok is not None:
            row["pflash_answer"] = tok.decode(r.tokens, skip_special_tokens=True)
        row["_kept_positions"] = r.kept_positions
        rows.append(row)
    return rows


def memory_plans(c: RunConfig, drafter, target, ps: list[Prompt], cfgs, target_attn,
                 fuse_qkv: bool) -> dict:
    """The memory plan (pflash_jax/memory.py) of every prompt length of the job, against
    `memory_budget_gb` (default: what the device offers; none on CPU); printed unless quiet.
    A sharded target (loaded with `placement`; `target_attention`'s attention and fuse_qkv) is
    planned per device."""
    from pflash_jax.memory import GIB, device_budget, plan_run

    offered = device_budget()
    budget = offered if c.memory_budget_gb is None else int(c.memory_budget_gb * GIB)
    if offered is not None:
        budget = min(budget, offered)
    # the cell that keeps the most tokens plans the target prefill (a grid shares one job)
    pcfg = max(cfgs, key=lambda cfg: (cfg.selection.keep_ratio, cfg.selection.span_size))
    plans = {}
    for S in sorted({int(p.ids.shape[0]) for p in ps}):
        plans[S] = plan_run(drafter.config, drafter.dtype, target.config, target.dtype, S,
                            pcfg, max_new_tokens=c.max_new_tokens, chunk=c.chunk,
                            target_attn=target_attn, budget=budget,
                            kv_cache=c.target.kv_cache, drafter_params=drafter.params,
                            target_params=target.params, fuse_qkv=fuse_qkv)
        if not c.quiet:
            print(f"prompt of {S} tokens: " + plans[S].summary())
    return plans


def weights_fingerprint(path) -> str:
    """12 hex digits identifying a checkpoint's weights: sha256 over each safetensors file's
    name, size, header and first and last MiB of data. Cheap for 16 GB checkpoints and still
    different after any retraining (which changes every tensor), so a sweep's metrics say which
    weights they measured even when a folder (e.g. the embedded pair) is replaced later."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(8 + (1 << 20)))  # header length, header and the first data
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read())
    return h.hexdigest()[:12]


def model_name(spec: ModelSpec) -> str:
    """What metrics and tables call a model: the configured name, else the checkpoint folder's
    name (a user's `target.path=/ckpt/Qwen3-8B` is recorded as Qwen3-8B, not as the tiny
    default), else the preset's, else the embedded model's."""
    if spec.name:
        return spec.name
    if spec.path:
        return Path(spec.path).resolve().name
    if spec.random_init and spec.preset:
        return spec.preset
    return f"tiny_{spec.embedded}"


def describe(m, spec: ModelSpec) -> dict:
    cfg = m.config
    path = checkpoint_dir(spec)
    return {"name": model_name(spec), "path": spec.path, "random_init": spec.random_init,
            "weights": None if spec.random_init or path is None else weights_fingerprint(path),
            "dtype": str(m.params.embed_tokens.dtype), "layers": cfg.num_hidden_layers,
            "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
            "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
            "vocab": cfg.vocab_size, "quantize": spec.quantize, "kv_cache": spec.kv_cache,
            "tensor_parallel": spec.tensor_parallel}


def summarize(cases: list[dict]) -> dict:
    out = {"n_cases": len(cases), "S": cases[0]["S"] if cases else None}
    for key in ("pflash_skipped", "full_skipped"):
        if any(key in r for r in cases):
            out[key] = next(r[key] for r in cases if key in r)
    for key in ("speedup", "pflash_acc", "full_acc", "recall", "kept_frac", "block_density",
                "n_anchor_spans"):
        vals = [r[key] for r in cases if r.get(key) is not None]
        if vals:
            out[key] = float(np.mean(vals))
    for path in ("pflash", "full"):
        ttfts = [r[path]["ttft"] for r in cases if path in r]
        if ttfts:
            out[f"{path}_ttft_s"] = float(np.median(ttfts))
    return out


def print_case(row: dict, kept: np.ndarray) -> None:
    spans = _spans(kept)
    shown = ", ".join(f"{a}-{b}" for a, b in spans[:8]) + (" ..." if len(spans) > 8 else "")
    chat = (f" ({row['template_tokens']} of the chat template)"
            if row.get("prompt_format") == "chat" else "")
    print(f" prompt {row['S']} tokens{chat} -> kept {row['n_kept']} "
          f"({100 * row['kept_frac']:.1f}%) in {len(spans)} runs: {shown}")
    if "expected" in row:
        print(f"expected {row['expected']}")
    if "full_skipped" in row:
        print(f"full prefill not run: {row['full_skipped']}")
    if "pflash_answer" in row:
        acc = ""
        if "pflash_acc" in row:
            acc = f"  [{'correct' if row['pflash_acc'] else 'wrong'}]"
        print(f"PFlash answer: {row['pflash_answer']!r}{acc}")
    if "full_answer" in row:
        acc = ""
        if "full_acc" in row:
            acc = f"  [{'correct' if row['full_acc'] else 'wrong'}]"
        print(f"full answer:   {row['full_answer']!r}{acc}")
    stages = ["drafter_forward", "scoring", "selection", "target_prefill", "first_token", "ttft"]
    print("stage            PFlash (ms)" + ("   full (ms)" if "full" in row else ""))
    for s in stages:
        full = row.get("full", {}).get(s)
        print(f"  {s:15s} {1e3 * row['pflash'][s]:10.2f}"
              + (f"  {1e3 * full:10.2f}" if full is not None else ""))
    if "speedup" in row:
        print(f"TTFT speedup over full prefill: {row['speedup']:.2f}x (compile: PFlash "
              f"{row['pflash_compile_s']:.1f} s, full {row['full_compile_s']:.1f} s)")
    if row.get("block_density") is not None:
        print(f"drafter block density kept: {row['block_density']:.3f}")


# What a user can get wrong (options, files, checkpoints): one line, no traceback. Anything
# else is a bug and keeps its traceback.
def _user_errors() -> tuple[type[BaseException], ...]:
    from pflash_jax.models.config import ConfigError
    from pflash_jax.models.weights import CheckpointError

    return (ValueError, OSError, ConfigError, CheckpointError)


def _remove_if_empty(out: Path) -> None:
    """Drop the output folder of a job that failed before writing results: Hydra creates it
    (with .hydra/ and a log) before the job starts."""
    import shutil

    if out.is_dir() and not any(out.rglob("metrics.json")):
        shutil.rmtree(out, ignore_errors=True)
        for parent in list(out.parents)[:2]:  # outputs/run/, outputs/ when left empty
            try:
                parent.rmdir()
            except OSError:
                break


def _quiet_logs() -> None:
    """jax logs at INFO that no TPU was found, on every run; Hydra's logging config shows it."""
    import logging

    for name in ("jax._src.xla_bridge", "jax._src.xla_bridge_jax", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> None:
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from pflash_jax import run_config

    run_config.register()
    from pflash_jax.convert import debug_requested

    debug = debug_requested()

    @hydra.main(config_path=str(CONFIGS), config_name="config", version_base=None)
    def _main(d) -> None:
        _quiet_logs()
        hydra_out = Path(HydraConfig.get().runtime.output_dir)
        try:
            c = run_config.to_run_config(d)
            out = Path(c.metrics_dir) if c.metrics_dir else hydra_out
            for name, metrics in run_cells(c):
                path = write_metrics(out / ("cells/" + name if name else "") / "metrics.json",
                                     metrics)
                s = metrics["summary"]
                print(f"\nwrote {path}  ({provenance()['device']}; "
                      + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in s.items()) + ")")
        except _user_errors() as e:
            _remove_if_empty(hydra_out)
            if debug:
                raise
            print(f"pflash-run: error: {e}\n(PFLASH_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            _remove_if_empty(hydra_out)
            print("pflash-run: interrupted", file=sys.stderr)
            sys.exit(130)

    _main()


if __name__ == "__main__":
    main()
