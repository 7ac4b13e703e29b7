"""Train the tiny target/drafter pair (docs/design.md section 5); export them as HF Qwen3
checkpoints.

Design choices:
- Both models train on the same batches in one process (the data generator, on the host, is
  the shared cost); each has its own AdamW state.
- float32 master weights; the forward runs in bf16 on GPU (cuDNN flash attention needs a 16-bit
  dtype), float32 on CPU.
- Curriculum over sequence length at a constant token count per step.
- Loss: mean cross-entropy on answer tokens plus `lm_weight` x the mean on haystack tokens
  (separate means: see make_loss).
- orbax CheckpointManager: rerunning the same command resumes from the latest step.
- Fine-tuning: `init_from` starts from exported HF checkpoints instead of random weights
  (strictly checked against the configured shapes); `train` picks the models that get updates.
  A model not trained keeps its init_from weights and is re-exported unchanged; with random
  init it is neither trained nor exported (random weights are worth nothing downstream).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import time
from collections import deque
from pathlib import Path

import hydra
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from pflash_jax.bench import provenance, write_metrics
from pflash_jax.data import step_batch
from pflash_jax.models import qwen3
from pflash_jax.models.config import Qwen3Config
from pflash_jax.models.export_hf import export_hf
from pflash_jax.models.params import Params, init_params, unflatten
from pflash_jax.models.weights import CheckpointError, hf_to_ours, read_hf_checkpoint
from pflash_jax.tasks import tiny_tokenizer
from pflash_jax.tasks.task_tokenizer import TINY_TOKENIZER_PATH

REPO = Path(__file__).resolve().parent.parent
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
EOS = "<|endoftext|>"


def model_config(shape: dict, vocab: int, max_pos: int) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, tie_word_embeddings=True,
                       max_position_embeddings=max_pos, **shape)


def load_init(path: Path, cfg: Qwen3Config) -> Params:
    """float32 params from an exported HF checkpoint directory, which must match `cfg` (the
    configured shapes with the padded vocab) exactly; every mismatch is reported at once."""
    problems: list[str] = []
    found = Qwen3Config.from_file(path / "config.json")
    # max_position_embeddings shapes no tensor (RoPE is computed from positions): a fine-tune
    # may train longer than its starting point was (scripts/train_v2.sh stage 5)
    problems += [f"{path}/config.json: {f.name}={getattr(found, f.name)!r}, configured "
                 f"{getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
                 if f.name != "max_position_embeddings"
                 and getattr(found, f.name) != getattr(cfg, f.name)]
    if problems:  # every tensor would mismatch too: the config lines say it all
        raise CheckpointError([f"init_from: {p}" for p in problems])
    refs = read_hf_checkpoint(path, cfg, problems)
    if problems:
        raise CheckpointError([f"init_from: {p}" for p in problems])
    return unflatten({k: jnp.asarray(t.make()) for k, t in
                      hf_to_ours(refs, cfg, np.float32).items()})


def init_folders(init_from, names) -> dict[str, Path]:
    """init_from -> {model: its checkpoint folder}: a folder holding {target,drafter}/ gives
    both; a mapping {target: folder} gives only the models it names (the others start from
    random weights, or, not trained, are neither trained nor exported)."""
    if not init_from:
        return {}
    if isinstance(init_from, str):
        return {n: REPO / init_from / n for n in names}
    given = dict(init_from)
    if set(given) - set(names):
        raise ValueError(f"init_from names {sorted(set(given) - set(names))}; the models are "
                         f"{list(names)}")
    return {n: REPO / str(v) for n, v in given.items()}


def stage_at(step: int, steps: int, curriculum) -> tuple[int, int]:
    i = min(step * len(curriculum) // max(steps, 1), len(curriculum) - 1)
    return tuple(curriculum[i])


def stage_at_fraction(frac: float, curriculum) -> tuple[int, int]:
    """The [seq_len, batch] stage at a fraction of the run (curriculum_by=time)."""
    return tuple(curriculum[min(int(frac * len(curriculum)), len(curriculum) - 1)])


class Pace:
    """How far the run is, 0..1, and each step's [seq_len, batch] stage:
    - step: progress step / steps, stages in order over the steps;
    - time: progress by the training clock against max_minutes (so a time-boxed run reaches its
      last, longest stage whatever its step rate; the step count is then only an upper bound);
    - mixed: each step draws its stage uniformly (a pure function of seed and step), so no
      length is trained last and left to drift; progress by the clock when max_minutes is set,
      else by step.
    The clock carries over a resume (it is saved with the state). The learning rate warms up
    linearly over `warmup` steps, then follows a cosine from lr to 0.05 lr over the rest of the
    run's progress."""

    MODES = ("step", "time", "mixed")

    def __init__(self, c: DictConfig, elapsed: float = 0.0):
        self.mode = c.get("curriculum_by", "step")
        if self.mode not in self.MODES:
            raise ValueError(f"curriculum_by must be one of {list(self.MODES)}, got "
                             f"{self.mode!r}")
        if self.mode == "time" and not c.max_minutes:
            raise ValueError("curriculum_by=time needs max_minutes (the run's length)")
        self.by_time = self.mode == "time" or (self.mode == "mixed" and bool(c.max_minutes))
        self.c, self.offset, self.t0 = c, elapsed, time.perf_counter()
        self.warm_end = None  # progress when warmup ended (clocked runs)

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.t0

    def progress(self, step: int) -> float:
        if self.by_time:
            return min(self.elapsed() / (60 * self.c.max_minutes), 1.0)
        return min(step / max(self.c.steps, 1), 1.0)

    def stage(self, step: int) -> tuple[int, int]:
        if self.mode == "mixed":
            rng = np.random.default_rng([self.c.seed, step, 1])
            return tuple(self.c.curriculum[int(rng.integers(len(self.c.curriculum)))])
        if self.mode == "time":
            return stage_at_fraction(self.progress(step), self.c.curriculum)
        return stage_at(step, self.c.steps, self.c.curriculum)

    def lr(self, step: int) -> float:
        c = self.c
        if step < c.warmup:
            return c.lr * step / c.warmup
        if self.by_time:
            if self.warm_end is None:
                self.warm_end = self.progress(step)
            p = (self.progress(step) - self.warm_end) / max(1.0 - self.warm_end, 1e-9)
        else:
            p = (step - c.warmup) / max(c.steps - c.warmup, 1)
        p = min(max(p, 0.0), 1.0)
        return c.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * p)))


def make_loss(cfg: Qwen3Config, attn: str, compute_dtype, lm_weight: float):
    """Mean NLL over answer tokens + lm_weight * mean NLL over haystack tokens.

    The two means are taken separately: a 16K-token row has ~10 answer tokens, so one pooled
    mean lets the (easily learned) haystack term drown the retrieval signal. Seen on the first
    GPU run: answer accuracy stayed at chance while the pooled loss fell to 0.02.
    """
    def loss_fn(params, ids, mask, pos):
        p = jax.tree.map(lambda a: a.astype(compute_dtype), params)
        logits = qwen3.forward(p, cfg, ids, pos, attn=attn)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        w = mask[:, 1:]
        ans = (w == 1.0).astype(jnp.float32)
        lm = ((w > 0) & (w < 1.0)).astype(jnp.float32)
        ans_nll = jnp.sum(nll * ans) / jnp.maximum(ans.sum(), 1)
        lm_nll = jnp.sum(nll * lm) / jnp.maximum(lm.sum(), 1)
        acc = (jnp.argmax(logits, -1) == ids[:, 1:]).astype(jnp.float32)
        return ans_nll + lm_weight * lm_nll, {
            "answer_nll": ans_nll, "lm_nll": lm_nll,
            "answer_acc": jnp.sum(acc * ans) / jnp.maximum(ans.sum(), 1)}
    return loss_fn


def make_step(cfg, attn, compute_dtype, tx, lm_weight):
    grad_fn = jax.value_and_grad(make_loss(cfg, attn, compute_dtype, lm_weight), has_aux=True)

    @jax.jit
    def step(params, opt_state, ids, mask, pos, lr):
        (loss, aux), grads = grad_fn(params, ids, mask, pos)
        opt_state[-1].hyperparams["learning_rate"] = lr  # the Pace's rate (inject_hyperparams)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}
    return step


def prefetch(c: DictConfig, start: int, pace: Pace):
    """Batches built by worker processes (host-side generation is the bottleneck at short
    lengths: ~0.1 s for 64 x 512 tokens), in step order; each depends on (seed, step, stage)
    only, so a resumed step-paced run sees the same data. The stage of a batch is fixed when
    it is queued, at most 2 x workers steps ahead of training (it matters for time pacing)."""
    tasks = OmegaConf.to_container(c.tasks)  # list, or {name: weight}
    task_opts = OmegaConf.to_container(c.task_opts) if c.task_opts else {}
    sparse = OmegaConf.to_container(c.sparse) if c.get("sparse") else None

    def spec(step):
        return (tasks, c.seed, step, *pace.stage(step), c.lm_weight, str(TINY_TOKENIZER_PATH),
                task_opts, sparse)
    if c.workers <= 1:
        yield from (step_batch(spec(step)) for step in range(start, c.steps))
        return
    # spawn, not fork: the parent already runs JAX threads.
    with mp.get_context("spawn").Pool(c.workers) as pool:
        queued, nxt = deque(), start
        while queued or nxt < c.steps:
            while nxt < c.steps and len(queued) < 2 * c.workers:
                queued.append(pool.apply_async(step_batch, (spec(nxt),)))
                nxt += 1
            yield queued.popleft().get()


@hydra.main(config_path="../pflash_jax/configs", config_name="train_tiny", version_base=None)
def main(c: DictConfig) -> None:
    tok = tiny_tokenizer()
    vocab = -(-tok.get_vocab_size() // 128) * 128  # padded: tidy matmul shapes
    on_gpu = jax.default_backend() == "gpu"
    attn = c.attn if c.attn != "auto" else ("cudnn" if on_gpu else "xla")
    compute_dtype = jnp.bfloat16 if on_gpu else jnp.float32
    names = ("target", "drafter")
    sp = c.get("sparse")
    longest = max(n for n, _ in c.curriculum)
    if sp and sp.prob > 0 and sp.stretch * longest > c.max_position_embeddings:
        raise ValueError(f"sparse.stretch={sp.stretch} x the longest curriculum length {longest} "
                         f"exceeds max_position_embeddings={c.max_position_embeddings}")
    if c.get("export_dtype", "float32") not in EXPORT_DTYPES:
        raise ValueError(f"export_dtype must be one of {list(EXPORT_DTYPES)}, got "
                         f"{c.export_dtype!r}")
    init_dirs = init_folders(c.init_from, names)
    train = list(c.train)
    if not train or set(train) - set(names):
        raise ValueError(f"train must be a non-empty subset of {list(names)}, got {train}")
    cfgs = {n: model_config(OmegaConf.to_container(c[n]), vocab, c.max_position_embeddings)
            for n in names}
    # the rate is set every step from the Pace (by step or by the clock)
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip),
                     optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b2=0.95,
                                                           weight_decay=c.weight_decay))
    keys = jax.random.split(jax.random.key(c.seed), len(names))
    init = {}  # the starting weights; for models not trained, also the exported ones
    for n, k in zip(names, keys, strict=True):
        if n in init_dirs:
            init[n] = load_init(init_dirs[n], cfgs[n])
            print(f"initialized {n} from {init_dirs[n]}")
        elif n in train:
            init[n] = init_params(cfgs[n], k, jnp.float32)
    print("task mix:", OmegaConf.to_container(c.tasks), "| options:",
          OmegaConf.to_container(c.task_opts) if c.task_opts else {})
    state = {n: {"params": init[n], "opt": tx.init(init[n])} for n in train}
    state["clock"] = jnp.float32(0.0)  # training seconds so far (time pacing resumes on it)
    steps_fns = {n: make_step(cfgs[n], attn, compute_dtype, tx, c.lm_weight) for n in train}

    ckpt_dir = (REPO / c.checkpoint_dir).resolve()
    mgr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2))
    start = 0
    if mgr.latest_step() is not None:
        start = mgr.latest_step()
        state = mgr.restore(start, args=ocp.args.StandardRestore(state))
        print(f"resumed from {ckpt_dir} at step {start}")

    pace = Pace(c, float(state["clock"]))

    def save(step: int, force: bool = False):  # the clock goes in with the state, read here
        state["clock"] = jnp.float32(pace.elapsed())
        mgr.save(step, args=ocp.args.StandardSave(state), force=force)
    history, t0, last = [], time.perf_counter(), c.steps
    bar = tqdm(prefetch(c, start, pace), total=None if pace.by_time else c.steps, initial=start,
               desc="train_tiny")
    for step, (ids, mask, pos) in enumerate(bar, start=start):
        lr = pace.lr(step)
        row = {"step": step + 1, "seq_len": int(ids.shape[1]), "lr": lr}
        for n in train:
            s = state[n]
            s["params"], s["opt"], m = steps_fns[n](s["params"], s["opt"], ids, mask, pos,
                                                      jnp.float32(lr))
            row.update({f"{n}_{k}": v for k, v in m.items()})
        if (step + 1) % 25 == 0 or step + 1 == c.steps:
            row = {k: float(v) for k, v in row.items()}
            history.append(row)
            bar.set_postfix(T=row["seq_len"], **{
                {"target": "tgt", "drafter": "dft"}[n]: f"{row[f'{n}_answer_acc']:.2f}"
                for n in train})
            if (step + 1) % c.log_every == 0:
                tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if c.max_minutes and pace.elapsed() > 60 * c.max_minutes:
            print(f"stopping at step {step + 1}: max_minutes={c.max_minutes} reached")
            last = step + 1
            break
        if (step + 1) % c.checkpoint_every == 0:
            save(step + 1)
    if mgr.latest_step() != last:
        save(last, force=True)
    mgr.wait_until_finished()
    train_s = time.perf_counter() - t0

    if c.export_dir:
        final = init | {n: state[n]["params"] for n in train}
        for n in final:
            out = export_hf(final[n], cfgs[n], REPO / c.export_dir / n,
                            tokenizer_json=TINY_TOKENIZER_PATH, eos_token=EOS,
                            dtype=EXPORT_DTYPES[c.get("export_dtype", "float32")])
            print(f"exported {n}{'' if n in train else ' (not trained)'} -> {out}")
    if c.metrics_path:
        write_metrics(REPO / c.metrics_path, {
            "config": OmegaConf.to_container(c, resolve=True),
            "models": {n: dataclasses.asdict(cfgs[n]) for n in names},
            "train_seconds_this_run": train_s, "last_step": last, "history": history})
    print({k: round(v, 4) for k, v in history[-1].items()} if history else "no steps run",
          provenance()["device"])


if __name__ == "__main__":
    main()
