"""Configuration: YAML experiment files and sweep files -> typed, validated dataclasses.

``schema`` is the generic validator (types, bounds, unknown keys, one-line errors); ``experiment`` the
experiment sections (env, model, dqn, run, faults); ``sweep`` the sweep section.
"""

from rllib_rec.config.experiment import (
    MAX_CONFIG_BYTES,
    DQNSettings,
    ExperimentConfig,
    FaultSettings,
    ModelConfig,
    RunSettings,
    config_from_dict,
    load_config,
    parse_overrides,
    read_yaml,
)
from rllib_rec.config.schema import build, flatten, merge_dicts, spec, to_dict
from rllib_rec.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "ConfigError",
    "DQNSettings",
    "ExperimentConfig",
    "FaultSettings",
    "ModelConfig",
    "RunSettings",
    "build",
    "config_from_dict",
    "flatten",
    "load_config",
    "merge_dicts",
    "parse_overrides",
    "read_yaml",
    "spec",
    "to_dict",
]
