"""Held-out quality of the tiny pair (issue 5, docs/design.md section 5): per task and length, the
target's exact-match accuracy with full prefill, the drafter's needle recall at keep_ratio,
and (with_pflash) the PFlash accuracy on the same cases. Writes metrics.json + table.md.

A task entry may carry options for its task function after a colon, e.g.
`niah_multikey:n_distractors=7` (comma-separated key=value; values are Python literals, else
strings; quote the entry on the command line: "tasks=['niah_multikey:n_distractors=7']");
the table labels the row with the whole entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hydra
import jax
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pflash_jax.bench import provenance, write_metrics
from pflash_jax.embedded import TINY_DIR
from pflash_jax.models.quant import FORMATS
from pflash_jax.models.qwen3 import greedy_generate
from pflash_jax.pflash.config import preset
from pflash_jax.pflash.pipeline import speculative_prefill
from pflash_jax.pflash.spans import needle_recall
from pflash_jax.run import load, weights_fingerprint
from pflash_jax.run_config import ModelSpec
from pflash_jax.tasks import make_cases, score

REPO = Path(__file__).resolve().parent.parent


def parse_task(entry: str) -> tuple[str, dict]:
    """'name' or 'name:key=value,key=value' -> (name, options for the task function)."""
    name, _, rest = str(entry).partition(":")
    opts = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"task entry {entry!r}: option {item!r} is not key=value")
        try:
            opts[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            opts[key.strip()] = value.strip()
    return name.strip(), opts


def answer_budget(cases, tok) -> int:
    return max(len(tok.encode(c.target)) for c in cases) + 2


def full_accuracy(target, cases, tok, batch: int, attn: str) -> list[float]:
    n_new = answer_budget(cases, tok)
    out = []
    for i in range(0, len(cases), batch):
        chunk = cases[i:i + batch]
        ids = np.stack([c.ids for c in chunk])
        gen = greedy_generate(target, ids, n_new, attn=attn)
        out += [score(c, g, tok) for c, g in zip(chunk, gen, strict=True)]
    return out


def rows_from_log(text: str) -> list[dict]:
    """The rows a run printed (one dict literal a row): what a run cut off at a time limit
    before it wrote its metrics (the runs before metrics were saved after every row) left."""
    import ast
    import re
    return [ast.literal_eval(m) for m in re.findall(r"\{'task': [^{}]*\}", text)]


def render(rows: list[dict], prov: dict, cfg: dict) -> str:
    head = ("| task | S | cases | full acc | PFlash acc | drafter recall | kept |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n")
    fmt = lambda v: "-" if v is None else format(v, ".2f")  # noqa: E731
    body = "".join(
        f"| {r['task']} | {r['S']} | {r['n_cases']} | {fmt(r['full_acc'])} | "
        f"{fmt(r['pflash_acc'])} | "
        f"{r['recall']:.2f} | {r['kept_frac']:.3f} |\n" for r in rows)
    return (f"Tiny pair, held-out cases. preset={cfg['preset']} keep_ratio={cfg['keep_ratio']} "
            f"span={cfg['span_size']} drafter attention={cfg['attention_impl']}"
            + (f" drafter_quantize={cfg['drafter_quantize']}" if cfg.get("drafter_quantize")
               else "")
            + f"{''.join(f' {k}={v}' for k, v in (cfg.get('overrides') or {}).items())}. "
            f"Device {prov['device']}, jax {prov['jax']}, commit {prov['commit']}.\n\n"
            + head + body)


@hydra.main(config_path="../pflash_jax/configs", config_name="eval_tiny", version_base=None)
def main(c: DictConfig) -> None:
    # dtype "auto": bf16 on GPU (cuDNN flash attention needs a 16-bit dtype), f32 on CPU
    quantize = {"drafter": c.get("drafter_quantize"), "target": None}
    if quantize["drafter"] not in (None, *FORMATS):
        raise SystemExit(f"eval_tiny: drafter_quantize must be null or one of {FORMATS}, got "
                         f"{quantize['drafter']!r}")
    drafter, target = (
        load(ModelSpec(name, path=str(Path(c.models_dir) / role) if c.models_dir else None,
                       embedded=role, quantize=quantize[role]), role)
        for name, role in (("tiny_drafter", "drafter"), ("tiny_target", "target")))
    attn = "cudnn" if jax.default_backend() == "gpu" else "reference"
    tok = target.tokenizer
    # attention_impl null: the preset's own drafter attention (specprefill: dense)
    impl = {} if c.attention_impl is None else {"attention_impl": c.attention_impl}
    extra = OmegaConf.to_container(c.overrides) if c.get("overrides") else {}
    try:
        # the preset's positions (pflash, pflash_qa: renumbered) unless the overrides set their
        # own ({positions: original})
        pcfg = preset(c.preset, **{"keep_ratio": c.keep_ratio, "span_size": c.span_size,
                                   **impl, **extra})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"eval_tiny: overrides={extra}: {e}") from None
    try:  # every entry checked before the first (slow) row
        tasks = [(entry, *parse_task(entry)) for entry in c.tasks]
        for _, name, opts in tasks:
            make_cases(name, 1, 1024, tok.path, **opts)
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"eval_tiny: tasks: {e}") from None
    rows = []
    out = REPO / c.out_dir
    cfg = OmegaConf.to_container(c, resolve=True)

    # which weights: the tables outlive a replaced or retrained folder (run.weights_fingerprint)
    weights = {role: weights_fingerprint(Path(c.models_dir) / role if c.models_dir
                                         else TINY_DIR / role) for role in ("drafter", "target")}

    def save(complete: bool):  # after every row: a time-boxed run keeps what it finished
        write_metrics(out / "metrics.json", {"config": cfg, "pflash_config": pcfg.to_dict(),
                                             "weights": weights, "complete": complete,
                                             "rows": rows})
        (out / "table.md").write_text(render(rows, provenance(), cfg)
                                      + ("" if complete else "\n(partial: the run stopped "
                                         "before its last row)\n"))
    for S in c.lengths:
        for task, name, opts in tqdm(tasks, desc=f"S={S}"):
            cases = make_cases(name, c.n_cases, S, tok.path, **opts)
            full = (full_accuracy(target, cases, tok, c.batch, attn)
                    if c.get("with_full", True) else [])
            recall, pf, kept = [], [], []
            n_new = answer_budget(cases, tok)
            for case in cases:
                r = speculative_prefill(drafter, target, case.ids, pcfg,
                                        max_new_tokens=n_new if c.with_pflash else 1,
                                        target_attn=attn)
                recall.append(needle_recall(r.kept_positions, case.needle_positions))
                kept.append(r.n_kept / S)
                if c.with_pflash:
                    pf.append(score(case, r.tokens, tok))
            rows.append({"task": task, "S": S, "n_cases": len(cases),
                         "full_acc": float(np.mean(full)) if full else None,
                         "pflash_acc": float(np.mean(pf)) if pf else None,
                         "recall": float(np.mean(recall)), "kept_frac": float(np.mean(kept))})
            print(rows[-1], flush=True)
            save(complete=False)
    save(complete=True)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
