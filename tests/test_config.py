"""Config loading: typed values, presets, --set overrides, and one-line errors naming the cause."""

from __future__ import annotations

import pathlib

import pytest

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
        ("a: &x [1]\nb: *x\n", "", "aliases are not allowed"),
    ],
)
def test_bad_config_is_one_line_naming_file_key_problem(tmp_path, text, key, problem) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path))
    assert key in msg and problem in msg


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_names_set_and_key() -> None:
    with pytest.raises(ConfigError, match=r"--set: dqn.gamma: must be <= 1.0, got 2.0"):
        load_config(None, ["dqn.gamma=2"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["dqn.gamma"])


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
    values, so `rllib-rec train` without a config file and with configs/default.yaml train the same agent."""
    import yaml

    from rllib_rec.config import flatten

    shipped = flatten(yaml.safe_load((CONFIGS / "default.yaml").read_text()))
    defaults = flatten(load_config(None).to_dict())
    differs = {k: (v, defaults[k]) for k, v in shipped.items()
               if k not in ("name", "run.iterations", "run.steps_per_iteration") and defaults[k] != v}
    assert not differs, f"configs/default.yaml and the schema defaults disagree: {differs}"
