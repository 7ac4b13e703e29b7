"""Every Hydra config composes against its schema; typos fail before any compute."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from pflash_jax import run_config
from pflash_jax.pflash.config import PRESETS
from pflash_jax.run import pflash_config

CONFIGS = Path(__file__).resolve().parents[2] / "pflash_jax" / "configs"
run_config.register()


def _compose(name="config", overrides=()):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose(name, overrides=list(overrides))


def _group_options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def _file(group: str, option: str) -> dict:
    """What one yaml file sets. group "model@drafter" reads pflash_jax/configs/model/."""
    return yaml.safe_load((CONFIGS / group.split("@")[0] / f"{option}.yaml").read_text()) or {}


def _package(group: str) -> str:
    """Where a group's values land in the composed config: model@drafter -> drafter."""
    return group.split("@")[-1]


def _leaves(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _at(d: dict, path):
    for key in path:
        d = d[key]
    return d


def _assert_sets(composed: dict, values: dict, where: str, prefix=(), unless=()):
    """Every leaf of `values` (a file's own settings) is what the composed config holds, except
    paths in `unless` (set later by something that wins) and '???' (given by an override)."""
    for path, v in _leaves(values, prefix):
        if v == "???" or path in unless:
            continue
        got = _at(composed, path)
        assert got == v, f"{where}: {'.'.join(path)} = {got!r}, but the file sets {v!r}"


_ATTENTION_TO_PFLASH = {"impl": "attention_impl", "alpha": "alpha", "density": "block_density",
                        "block_size": "block_size"}


def _expected_pflash(d: dict) -> dict:
    """The PFlashConfig options a composed run config stands for (run_config.SelectionSpec and
    AttentionSpec): the preset's values, overridden by every selection/attention value set."""
    sel, att = d["selection"], d["attention"]
    want = {**PRESETS[sel["preset"]], "preset": sel["preset"]}
    want.update({k: v for k, v in sel.items() if k != "preset" and v is not None})
    want.update({_ATTENTION_TO_PFLASH[k]: v for k, v in att.items()
                 if k in _ATTENTION_TO_PFLASH and v is not None})
    return want


def _check_run(overrides, where, files=()):
    """Compose; each (prefix, values, unless) in files must hold; the entry point's PFlashConfig
    must carry the preset and attention values the composed config sets."""
    cfg = _compose(overrides=overrides)
    d = OmegaConf.to_container(cfg, resolve=True)
    for prefix, values, unless in files:
        _assert_sets(d, values, where, prefix, unless)
    got = pflash_config(run_config.to_run_config(cfg)).to_dict()
    want = _expected_pflash(d)
    differ = sorted(k for k in want if got[k] != want[k])
    assert got == want, f"{where}: PFlashConfig differs in {differ}: {got} != {want}"
    return d


@pytest.mark.parametrize("group,option", [
    (g, o) for g in ("attention", "selection", "task") for o in _group_options(g)
] + [("model@drafter", o) for o in _group_options("model")]
  + [("model@target", o) for o in _group_options("model")])
def test_every_group_option_composes_to_its_file(group, option):
    overrides = [f"{group}={option}"]
    if option == "file":
        overrides.append("task.prompt_file=x.txt")
    d = _check_run(overrides, f"{group}={option}",
                   [((_package(group),), _file(group, option), ())])
    if option == "file":
        assert d["task"]["prompt_file"] == "x.txt"


def _own_settings(name: str):
    """An experiment file's own values, its defaults overrides ({group: option}) and its sweep."""
    values = _file("experiment", name)
    defaults = {}
    for entry in values.pop("defaults", []):
        (key, option), = entry.items()
        defaults[key.removeprefix("override /")] = option
    sweep = values.pop("hydra", {}).get("sweeper", {}).get("params", {})
    return values, defaults, sweep


@pytest.mark.parametrize("name", _group_options("experiment"))
def test_every_experiment_composes_to_its_files(name):
    """experiment=<name> holds what its file sets (global package), and what the group options
    it selects set, except where the experiment's own values win; so does every value of its
    sweep, one override at a time. Every point gives the PFlashConfig its values stand for."""
    values, defaults, sweep = _own_settings(name)
    assert values["experiment"] == name
    own = {path for path, _ in _leaves(values)}

    def group_files(choices, unless):
        return [((_package(g),), _file(g, o), unless) for g, o in choices.items()]

    base = [f"experiment={name}"]
    _check_run(base, name, [((), values, ())] + group_files(defaults, own))
    for key, spec in sweep.items():
        for value in str(spec).split(","):
            if "." in key:  # a value: it wins over every file
                path = tuple(key.split("."))
                files = [((), values, {path})] + group_files(defaults, own | {path})
            else:  # a group option: it replaces the experiment's default for that group
                files = [((), values, ())] + group_files({**defaults, key: value}, own)
            d = _check_run([*base, f"{key}={value}"], f"{name}: {key}={value}", files)
            if "." in key:
                assert _at(d, path) == yaml.safe_load(value), f"{name}: {key}={value}"


@pytest.mark.parametrize("name", ["train_tiny", "eval_tiny", "kernel_bench"])
def test_standalone_configs_compose_to_their_file(name):
    want = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    want.pop("hydra", None)
    got = OmegaConf.to_container(_compose(name), resolve=True)
    assert got == want, f"{name}: differs in {sorted(k for k in want if got.get(k) != want[k])}"


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
    """The SLURM launcher documented in README composes (needs hydra-submitit-launcher), and the
    experiment's sweep reaches it unchanged."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm", "experiment=smoke"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    _, _, sweep = _own_settings("smoke")
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == sweep
    assert cfg.experiment == "smoke"
