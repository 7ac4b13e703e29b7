"""Every Hydra config composes against its schema; typos fail before any compute."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from pflash_jax import run_config
from pflash_jax.pflash.config import PFlashConfig
from pflash_jax.run import pflash_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
run_config.register()


def _compose(name="config", overrides=()):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose(name, overrides=list(overrides))


def _group_options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [
    (g, o) for g in ("attention", "selection", "task", "experiment") for o in _group_options(g)
] + [("model@drafter", o) for o in _group_options("model")]
  + [("model@target", o) for o in _group_options("model")])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if option == "file":
        overrides.append("task.prompt_file=x.txt")
    c = run_config.to_run_config(_compose(overrides=overrides))
    assert isinstance(pflash_config(c), PFlashConfig)


@pytest.mark.parametrize("name", ["train_tiny", "eval_tiny", "kernel_bench"])
def test_standalone_configs_compose(name):
    assert _compose(name) is not None


@pytest.mark.parametrize("override,exc", [
    ("selection.keep_ratoi=0.1", (ConfigCompositionException, ConfigKeyError)),
    ("task.seq_len=lots", (ConfigCompositionException, ValidationError)),
    ("max_new_tokenz=3", (ConfigCompositionException, ConfigKeyError)),
])
def test_typos_fail_at_composition(override, exc):
    with pytest.raises(exc):
        _compose(overrides=[override])


def test_forced_unknown_key_fails_at_conversion():
    # "+key=" forces a new key past the schema; the entry point's conversion still refuses it
    with pytest.raises(ValueError, match="max_new_tokenz"):
        run_config.to_run_config(_compose(overrides=["+max_new_tokenz=3"]))


def test_bad_option_values_name_the_option():
    c = run_config.to_run_config(_compose(overrides=["selection.keep_ratio=1.5"]))
    with pytest.raises(ValueError, match="keep_ratio"):
        pflash_config(c)


def test_submitit_launcher_config_composes():
    """The SLURM launcher documented in README composes (needs hydra-submitit-launcher)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = _compose(overrides=["hydra/launcher=submitit_slurm", "experiment=smoke"])
    assert cfg is not None
