"""The search space: the one DQNConfig of ``build_algo_config`` as a dict, with Tune distributions at the
fields :data:`~rllib_rec.config.sweep.SWEEPABLE` maps each swept experiment key to; and the way back, from a
trial's resolved config to the experiment it ran."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rllib_rec.agent.algo import build_algo_config
from rllib_rec.agent.registry import RUNTIME_KEY
from rllib_rec.config.experiment import ExperimentConfig, config_from_dict
from rllib_rec.config.schema import ConfigError, merge_dicts, to_dict
from rllib_rec.config.sweep import SWEEPABLE, Distribution, SweepConfig, nested

__all__ = ["to_tune", "build_param_space", "sampled_values", "trial_experiment_config"]


def to_tune(dist: Distribution) -> Any:
    """The Tune search-space object of one distribution."""
    from ray import tune

    v = getattr(dist, dist.kind)
    if dist.kind in ("grid", "choice"):
        return {"grid": tune.grid_search, "choice": tune.choice}[dist.kind](list(v))
    return {"loguniform": tune.loguniform, "uniform": tune.uniform}[dist.kind](*v)


def build_param_space(scfg: SweepConfig) -> tuple[Any, dict[str, Any]]:
    """``(trainable, param_space)``: :class:`~rllib_rec.tuning.trainable.TunedDQN` (the project's DQN) and the
    trial DQNConfig from ``build_algo_config`` as a dict, with Tune distributions at the mapped fields."""
    exp, sw = scfg.experiment, scfg.sweep
    cfg = build_algo_config(exp, trial_cpus=sw.cpus_per_trial)
    space = cfg.to_dict()
    from rllib_rec.tuning.trainable import VALIDATION_KEY, TunedDQN

    if cfg.algo_class is not TunedDQN.__mro__[1]:
        raise TypeError(f"build_algo_config built {cfg.algo_class.__name__}; the sweep trainable wraps RecDQN")
    for key, dist in sw.search_space.items():
        *parents, leaf = SWEEPABLE[key]
        node = space
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"sweep.search_space.{key}", f"DQNConfig has no {'.'.join(SWEEPABLE[key])}", scfg.source)
        node[leaf] = to_tune(dist)
    # Every checkpoint a trial writes is scored on the validation seeds (rllib_rec.tuning.trainable).
    r = exp.run
    space["env_config"][RUNTIME_KEY][VALIDATION_KEY] = {
        "episodes": r.checkpoint_episodes, "seed": r.validation_seed, "env": to_dict(exp.env),
        "every": sw.checkpoint_every or r.checkpoint_every,
        "last": sw.max_t if sw.scheduler == "asha" and sw.max_t else r.iterations,  # a trial's last iteration
    } if r.checkpoint_episodes else None
    return TunedDQN, space

def sampled_values(scfg: SweepConfig, trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """The values a trial used for each swept key, read back from its resolved RLlib config."""
    out = {}
    for key in scfg.sweep.search_space:
        node: Any = trial_config
        for part in SWEEPABLE[key]:
            node = node[part]
        out[key] = node
    return out

def trial_experiment_config(scfg: SweepConfig, trial_config: Mapping[str, Any]) -> ExperimentConfig:
    """The full experiment config a trial ran (base + its sampled values), for its checkpoint and exports."""
    data = scfg.experiment.to_dict()
    for key, value in sampled_values(scfg, trial_config).items():
        data = merge_dicts(data, nested(key, value))
    return config_from_dict(data, f"{scfg.source} (trial)")
