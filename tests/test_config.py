"""Config loading: typed values, presets, --set overrides, and one-line errors naming the cause."""

from __future__ import annotations

import pathlib

import pytest
from conftest import short

from rllib_rec.config import ExperimentConfig, load_config, parse_overrides
from rllib_rec.config.schema import ConfigError

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: pathlib.Path) -> None:
    if path.name.startswith("sweep"):
        from rllib_rec.config.sweep import load_sweep_config

        assert isinstance(load_sweep_config(path).experiment, ExperimentConfig)
        return
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)


def test_presets_resolve() -> None:
    cfg = load_config(CONFIGS / "seed.yaml")
    assert cfg.env.preset == "seed" and cfg.env.catalog.n_items == 10 and cfg.env.response.model == "notebook"
    large = load_config(None, ["env.preset=large"])
    assert large.env.catalog.n_items == 10_000 and large.env.n_candidates == 100


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(CONFIGS / "debug.yaml", ["dqn.lr=1e-3", "model.mlp_hidden=[8, 8]", "env.response.churn=false"])
    assert cfg.dqn.lr == 1e-3 and cfg.model.mlp_hidden == [8, 8] and cfg.env.response.churn is False
    assert parse_overrides(["a.b.c=3", "a.d=x"]) == {"a": {"b": {"c": 3}, "d": "x"}}


def test_flat_params_and_hash() -> None:
    a, b = load_config(None), load_config(None, ["dqn.lr=0.01"])
    assert a.flat_params()["dqn.lr"] == 1e-3 and a.flat_params()["env.catalog.n_items"] == 30
    assert a.config_hash() != b.config_hash() and a.config_hash() == load_config(None).config_hash()


def _write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("dqn:\n  lrr: 0.1\n", "dqn.lrr", "unknown key"),
        ("dqn:\n  lr: fast\n", "dqn.lr", "expected a number"),
        ("env:\n  catalog:\n    n_items: -5\n", "env.catalog.n_items", "must be >= 2"),
        ("run:\n  iterations: 2.5\n", "run.iterations", "expected an integer"),
        ("env:\n  response:\n    churn: maybe\n", "env.response.churn", "expected true/false"),
        ("env:\n  preset: huge\n", "env.preset", "must be one of"),
        ("env:\n  n_candidates: 50\n", "env.n_candidates", "must be <= catalog.n_items"),
        ("env:\n  users:\n    patience: [5, 1]\n", "env.users.patience", "low <= high"),
        ("model:\n  item_features: []\n  category_features: true\n", "model.category_features",
         "needs category in model.item_features"),
        ("model:\n  item_features: [colour]\n", "model.item_features[0]", "must be one of"),
        ("bogus: 1\n", "bogus", "unknown key"),
        ("model: 3\n", "model", "expected a mapping"),
        ("- 1\n- 2\n", "", "top level must be a mapping"),
        ("a: [1, 2\n", "", "invalid YAML"),
        ("run:\n  iterations: [3\n", "", "invalid YAML: line 3, column 1: expected ',' or ']', but got '<stream end>' "
         "(while parsing a flow sequence at line 2, column 15)"),
        ("a: &x [1]\nb: *x\n", "", "aliases are not allowed"),
    ],
)
@pytest.mark.hostile("config", describe=lambda text, key, problem: (
    f"config file `{short(text)}`", f"one line naming the file and `{key or '(top level)'}`: {problem}"))
def test_bad_config_is_one_line_naming_file_key_problem(tmp_path, text, key, problem) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert key in msg and problem in msg


@pytest.mark.hostile("config", rows=[("`--config nope.yaml` (no such file)", "one line: `nope.yaml: file not found`")])
def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.hostile("config", rows=[("`--set dqn.gamma=2`", "one line: `--set: dqn.gamma: must be <= 1.0, got 2.0`"),
                                    ("`--set dqn.gamma` (no `=`)", "one line: override must look like section.key=value")])
def test_bad_override_names_set_and_key() -> None:
    with pytest.raises(ConfigError, match=r"--set: dqn.gamma: must be <= 1.0, got 2.0"):
        load_config(None, ["dqn.gamma=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["dqn.gamma"])


@pytest.mark.hostile("config", rows=[("config file nested 50 lists deep", "one line: nested deeper than 8 levels")])
def test_deeply_nested_yaml_is_refused(tmp_path) -> None:
    path = _write(tmp_path, "a: " + "[" * 50 + "]" * 50 + "\n")
    with pytest.raises(ConfigError, match="nested deeper"):
        load_config(path)


def test_explore_item_dropout_applies_to_training_envs_only() -> None:
    from rllib_rec.agent.algo import env_config

    cfg = load_config(None, ["dqn.explore_item_dropout=0.5", "env.item_dropout=0.2"])
    assert env_config(cfg)["item_dropout"] == pytest.approx(0.6)  # 1 - 0.8 * 0.5
    assert cfg.env.item_dropout == 0.2  # what evaluation, validation and collection use
    plain = load_config(None, ["dqn.explore_item_dropout=0"])
    assert env_config(plain)["item_dropout"] == 0.0
    with pytest.raises(ConfigError, match="explore_item_dropout"):
        load_config(None, ["dqn.explore_item_dropout=0.99"])


def test_shipped_default_config_sets_the_schema_defaults() -> None:
    """configs/default.yaml documents the reason for each tuned value; the schema's defaults are the same
    values, so `rllib-rec train` without a config file and with configs/default.yaml train the same agent.
    The run's length is the exception: the schema's is short."""
    import yaml

    from rllib_rec.config import flatten

    shipped = flatten(yaml.safe_load((CONFIGS / "default.yaml").read_text()))
    defaults = flatten(load_config(None).to_dict())
    differs = {k: (v, defaults[k]) for k, v in shipped.items()
               if k not in ("name", "run.iterations", "run.steps_per_iteration")
               and defaults[k] != v}
    assert not differs, f"configs/default.yaml and the schema defaults disagree: {differs}"


def test_lr_decays_over_the_whole_run_unless_told_otherwise() -> None:
    """A longer or shorter --set run.iterations stretches the lr decay with it; dqn.lr_decay_steps pins it."""
    from rllib_rec.agent.algo import _training_settings

    default = str(CONFIGS / "default.yaml")
    assert load_config(default).lr_decay_env_steps == 150 * 2000
    short = load_config(default, ["run.iterations=6"])
    assert short.lr_decay_env_steps == 6 * 2000
    assert _training_settings(short)["lr"] == [[0, 1e-3], [12_000, 1e-4]]
    assert load_config(default, ["run.iterations=6", "dqn.lr_decay_steps=50000"]).lr_decay_env_steps == 50_000
    assert load_config(str(CONFIGS / "large.yaml")).lr_decay_env_steps == 100_000
    assert _training_settings(load_config(default, ["dqn.lr_end=null"]))["lr"] == 1e-3


# --------------------------------------------------------------------------------------------- cross-field rules
# Each pair: --set overrides that break a rule the network or RLlib would enforce only after Ray has started,
# and the key path the one-line error must name (issue 18, item 1: embed_dim=15 x num_heads=4 used to die
# 29 s into `train` with a 53-line traceback, and `show-config` accepted it).
CROSS_FIELD = [
    (["model.embed_dim=15", "model.num_heads=4"], "model.embed_dim: must be divisible by model.num_heads (4), got 15"),
    (["dqn.n_step=9"], "dqn.n_step: must be <= dqn.rollout_fragment_length (8), got 9"),
    (["dqn.train_batch_size=6000"], "dqn.train_batch_size: must be <= dqn.replay_capacity (5000), got 6000"),
    (["model.item_features=[]", "model.category_features=true"], "model.category_features: needs"),
]


@pytest.mark.parametrize("command", ["show-config", "train"])
@pytest.mark.parametrize(("sets", "needle"), CROSS_FIELD, ids=[s[0][0] for s in CROSS_FIELD])
@pytest.mark.hostile("config", describe=lambda command, sets, needle: (
    f"`{command} --set {' --set '.join(sets)}`", f"one line, before Ray starts: `{needle}`"))
def test_cross_field_rules_fail_in_one_line_before_ray(tmp_path, capsys, command, sets, needle) -> None:
    import sys

    from rllib_rec.cli import main

    argv = [command, "--config", str(CONFIGS / "debug.yaml"), "--set", f"run.output_dir={tmp_path / 'runs'}"]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "runs").exists()  # no run directory, no MLflow store
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_each_cross_field_rule_is_one_the_network_or_rllib_enforces() -> None:
    """The rules are copies of checks made later (QNetSpec when the network is built, RLlib's
    DQNConfig.validate when the algorithm is): here the later stage, given the value the config refuses,
    refuses it too — so a rule that RLlib or the network dropped (or changed) shows up here."""
    from rllib_rec.agent.algo import build_algo_config
    from rllib_rec.agent.spec import QNetSpec

    base = load_config(CONFIGS / "debug.yaml")
    spec = QNetSpec.from_experiment(base).to_dict()
    with pytest.raises(ValueError, match="divisible"):
        QNetSpec.from_dict({**spec, "embed_dim": 15, "num_heads": 4})
    with pytest.raises(ValueError, match="category_features needs 'category' in item_features"):
        QNetSpec.from_dict({**spec, "item_features": [], "category_features": True})
    algo_config = build_algo_config(base, trial_cpus=1)
    algo_config.validate()  # the base passes
    algo_config.training(n_step=base.dqn.rollout_fragment_length + 1)
    with pytest.raises(ValueError, match="smaller than `n_step`"):
        algo_config.validate()
