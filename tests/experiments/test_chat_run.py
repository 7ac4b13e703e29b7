"""pflash-run task.prompt_format=chat end to end on a Hugging Face Qwen3 checkpoint folder that
carries the real Qwen3 tokenizer files (what a user's downloaded Qwen3-0.6B / 8B look like):
random weights of tiny shapes but Qwen3's vocabulary (151,936), so the real tokenizer and chat
template drive the run. Skipped where the tokenizer files are absent."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tests.qwen3_tokenizer import require_qwen3_dir

REPO = Path(__file__).resolve().parents[2]


def _checkpoint(tmp_path: Path, tok_dir: Path) -> Path:
    from pflash_jax.models.config import Qwen3Config
    from pflash_jax.models.export_hf import export_hf
    from pflash_jax.models.params import init_params

    cfg = Qwen3Config(vocab_size=151936, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      head_dim=32, tie_word_embeddings=True)
    d = export_hf(init_params(cfg, jax.random.key(0), jnp.float32), cfg, tmp_path / "Qwen3-tiny")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / f, d / f)
    return d


def test_chat_prompt_format_end_to_end(tmp_path):
    tok_dir = require_qwen3_dir()
    ckpt = _checkpoint(tmp_path, tok_dir)
    S = 512
    # one folder as drafter and target: the run needs a shared tokenizer, not two weight sets
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PFLASH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(
        [sys.executable, "-m", "pflash_jax.run", f"drafter.path={ckpt}", f"target.path={ckpt}",
         "task=niah_single", "task.prompt_format=chat", f"task.seq_len={S}", "task.n_cases=2",
         "max_new_tokens=2", "repeats=0", f"metrics_dir={tmp_path}/m",
         f"hydra.run.dir={tmp_path}/h"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["run_config"]["task"]["prompt_format"] == "chat"
    assert m["models"]["target"]["vocab"] == 151936

    # the same cases rebuilt here: the metrics describe exactly these ids
    from pflash_jax.models.chat_template import load_chat_template
    from pflash_jax.tasks import as_tokenizer, make_cases

    tok = as_tokenizer(tok_dir / "tokenizer.json")
    before, after = load_chat_template(ckpt).frame()
    cases = make_cases("niah_single", 2, S, tok, chat=(before, after))
    n_frame = len(tok.encode(before)) + len(tok.encode(after))
    for row, case in zip(m["cases"], cases, strict=True):
        assert row["S"] == S == case.n_tokens  # the rendered prompt has the requested length
        assert row["prompt_format"] == "chat" and row["template_tokens"] == n_frame
        assert row["template_prefix"] == len(tok.encode(before)) > 0
        spans = row["needle_spans"]
        assert spans and spans[0][0] >= row["template_prefix"]
        pos = np.concatenate([np.arange(a, b) for a, b in spans])
        np.testing.assert_array_equal(pos, case.needle_positions)
        assert row["expected"] == case.answers and case.answers[0] in tok.decode(case.ids[pos])
        assert 0.0 <= row["recall"] <= 1.0 and row["pflash_acc"] in (0.0, 1.0)
    assert f"prompt {S} tokens ({n_frame} of the chat template)" in p.stdout
