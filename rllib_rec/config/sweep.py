"""The ``sweep:`` section of a sweep file, and the experiment it sweeps, validated before Ray starts.

A sweep file is an experiment config (sections ``env``/``model``/``dqn``/``run``, or ``base: debug.yaml``
plus overrides) and a ``sweep:`` section. Each ``sweep.search_space`` key is an experiment key path
(``dqn.lr``, ``model.embed_dim``, ...) that :data:`SWEEPABLE` maps onto one field of the DQNConfig's dict
form, where Tune samples it (``rllib_rec.tuning.search_space``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from envs.config import EnvConfigError
from rllib_rec.config.experiment import ExperimentConfig, config_from_dict, parse_overrides, read_yaml
from rllib_rec.config.schema import SAFE_NAME, SAFE_NAME_DOC, ConfigError, build, flatten, merge_dicts, spec

__all__ = [
    "DEFAULT_METRIC",
    "METRICS",
    "TRAINING_METRIC",
    "VALIDATION_METRIC",
    "SWEEPABLE",
    "Distribution",
    "SweepSettings",
    "SweepConfig",
    "load_sweep_config",
    "nested",
]


# What a trial reports (Tune's '/'-joined result keys). The winner is ranked by VALIDATION_METRIC: the greedy
# return of each checkpoint on validation seeds (what an export deploys), measured by the trial when it
# writes the checkpoint (rllib_rec.tuning.trainable). ASHA needs a value at every iteration, so by default it
# reads TRAINING_METRIC, the epsilon-greedy training return (in sessions with stock-outs): it only decides
# which trials go on, never which checkpoint wins.
VALIDATION_METRIC = "validation/return_mean"
TRAINING_METRIC = "env_runners/episode_return_mean"
DEFAULT_METRIC = VALIDATION_METRIC
METRICS = (VALIDATION_METRIC, TRAINING_METRIC)

# Experiment key path -> path inside ``DQNConfig.to_dict()`` (what Tune samples and RLlib's
# ``update_from_dict`` reads back). ``model.*`` keys live in the algorithm-level ``model_config``; see
# :func:`build_param_space` for why the module spec's own copy is moved there.
SWEEPABLE: dict[str, tuple[str, ...]] = {
    "dqn.lr": ("lr",),
    "dqn.gamma": ("gamma",),
    "dqn.n_step": ("n_step",),
    "dqn.tau": ("tau",),
    "dqn.target_update_freq": ("target_network_update_freq",),
    "dqn.train_batch_size": ("train_batch_size_per_learner",),
    "dqn.grad_clip": ("grad_clip",),
    "dqn.training_intensity": ("training_intensity",),
    "dqn.per_alpha": ("replay_buffer_config", "alpha"),
    "dqn.per_beta": ("replay_buffer_config", "beta"),
    "dqn.ips_clip": ("learner_config_dict", "ips_clip"),
    "model.embed_dim": ("_model_config", "qnet", "embed_dim"),
    "model.num_heads": ("_model_config", "qnet", "num_heads"),
    "model.num_layers": ("_model_config", "qnet", "num_layers"),
    "model.ff_dim": ("_model_config", "qnet", "ff_dim"),
    "model.dropout": ("_model_config", "qnet", "dropout"),
    "model.mlp_hidden": ("_model_config", "qnet", "mlp_hidden"),
}

# Keys that only mean something when a switch in the base experiment is on.
_REQUIRES = {"dqn.per_alpha": "dqn.prioritized_replay", "dqn.per_beta": "dqn.prioritized_replay",
             "dqn.ips_clip": "dqn.ips_weights"}

@dataclass
class Distribution:
    """One search dimension: exactly one of grid/choice (value lists) or loguniform/uniform ([lo, hi])."""

    grid: list[Any] | None = spec(None, "every value, crossed with the other grid keys (tune.grid_search)")
    choice: list[Any] | None = spec(None, "one value drawn per sample (tune.choice)")
    loguniform: list[float] | None = spec(None, "[lo, hi], 0 < lo < hi (tune.loguniform)")
    uniform: list[float] | None = spec(None, "[lo, hi], lo < hi (tune.uniform)")

    def validate(self) -> None:
        given = [k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(given[1], f"give exactly one of grid, choice, loguniform, uniform (got {given})")
        if not given:  # path-less errors would print as "key.": the caller reports an empty distribution
            return
        kind = given[0]
        vals = getattr(self, kind)
        if kind in ("grid", "choice"):
            if not vals:
                raise ConfigError(kind, "must list at least one value")
            return
        if len(vals) != 2:
            raise ConfigError(kind, f"must be [lo, hi], got {vals!r}")
        lo, hi = vals
        if not lo < hi:
            raise ConfigError(kind, f"lo must be < hi, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise ConfigError(kind, f"lo must be > 0 for a log scale, got {lo}")

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "loguniform", "uniform") if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any]:
        """Values to check against the experiment schema (the range ends for continuous ones)."""
        return list(getattr(self, self.kind))


@dataclass
class SweepSettings:
    """How Tune runs the sweep."""

    name: str | None = spec(None, "sweep directory name under storage_path (default: <experiment name>-sweep)",
                            pattern=SAFE_NAME, pattern_doc=SAFE_NAME_DOC)
    search_space: dict[str, Distribution] = field(default_factory=dict, metadata={"doc": "key path -> distribution"})
    scheduler: Literal["asha", "fifo"] = spec("asha", "trial scheduler: ASHA early stopping, or FIFO (none)")
    max_t: int | None = spec(None, "ASHA: max iterations per trial (default: run.iterations)", min=1)
    grace_period: int = spec(1, "ASHA: iterations before a trial may be stopped", min=1)
    reduction_factor: float = spec(2.0, "ASHA: keep 1/reduction_factor of trials per rung", gt=1.0)
    num_samples: int = spec(1, "samples (each repeats the whole grid)", min=1)
    max_concurrent_trials: int = spec(2, "trials running at once", min=1)
    cpus_per_trial: float = spec(1.0, "CPUs of a trial's main process (env runners add 1 CPU each)", gt=0.0)
    metric: Literal["validation/return_mean", "env_runners/episode_return_mean"] = spec(
        VALIDATION_METRIC, "ranks every trial checkpoint; the best one wins (best.json): 'validation/return_mean' "
        "(greedy return on run.validation_seed+ users, measured per checkpoint) or the training return")
    asha_metric: Literal["env_runners/episode_return_mean", "validation/return_mean"] = spec(
        TRAINING_METRIC, "what ASHA compares at its rungs (needs a value every iteration: the training return, "
        "or validation/return_mean with a checkpoint every iteration)")
    mode: Literal["max", "min"] = spec("max", "maximise or minimise both metrics")
    storage_path: str = spec("runs/sweeps", "where Tune writes trials (local dir, or a cloud URI on a cluster)")
    checkpoint_every: int | None = spec(None, "checkpoint every N iterations (default: run.checkpoint_every)", min=1)
    max_failures: int = spec(2, "retries of a trial that errors, from its last checkpoint (the sweep goes on "
                                "without it after that)", min=0)

@dataclass
class SweepConfig:
    experiment: ExperimentConfig
    sweep: SweepSettings
    source: str

    @property
    def name(self) -> str:
        return self.sweep.name or f"{self.experiment.name}-sweep"

    @property
    def sweep_dir(self) -> Path:
        # Local paths are made absolute (Tune needs that); URIs are left alone.
        sp = self.sweep.storage_path
        root = sp if "://" in sp else str(Path(sp).expanduser().resolve())
        return Path(root) / self.name

def nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out

def _check_search_space(exp: ExperimentConfig, space: Mapping[str, Distribution], source: str) -> None:
    """Unknown, unmapped or out-of-range keys are one-line errors before Ray starts; then every combination
    of the values (:func:`_check_combinations`)."""
    known = flatten(exp.to_dict())
    base = exp.to_dict()
    for key, dist in space.items():
        path = f"sweep.search_space.{key}"
        if not any(getattr(dist, k) is not None for k in ("grid", "choice", "loguniform", "uniform")):
            raise ConfigError(path, "give one of grid, choice, loguniform, uniform", source)
        if key not in known:
            raise ConfigError(path, "unknown experiment key (not in the env/model/dqn/run schema)", source)
        if key not in SWEEPABLE:
            raise ConfigError(path, f"not sweepable (sweepable: {', '.join(SWEEPABLE)})", source)
        need = _REQUIRES.get(key)
        if need and not known[need]:
            raise ConfigError(path, f"has no effect unless {need} is true", source)
        coerced = []
        for v in dist.values:  # every value (range ends for continuous ones) must be a valid experiment
            try:
                cfg = config_from_dict(merge_dicts(base, nested(key, v)))
            except ConfigError as e:
                raise ConfigError(path, f"value {v!r} is invalid: {e}", source) from None
            coerced.append(flatten(cfg.to_dict())[key])  # schema types (YAML reads 1e-4 as a string)
        if dist.kind in ("uniform", "loguniform") and isinstance(known[key], int) and not isinstance(known[key], bool):
            # Tune would sample 17.3 for an integer key, and rules such as embed_dim % num_heads cannot be
            # checked for the inside of a range.
            raise ConfigError(f"{path}.{dist.kind}", "is invalid for an integer key (Tune samples non-integers "
                              "from a range); list the values with grid or choice", source)
        setattr(dist, dist.kind, coerced)
    _check_combinations(exp, space, source)


MAX_COMBINATIONS = 100_000  # beyond this, every pair of values is checked (each cross-field rule joins two keys)


def _check_combinations(exp: ExperimentConfig, space: Mapping[str, Distribution], source: str) -> None:
    """Every combination of the swept values (the ends of continuous ranges) must be a valid experiment, so
    that no trial fails on a cross-field rule (``model.embed_dim % model.num_heads``, ``dqn.n_step <=
    dqn.rollout_fragment_length``, ...) after Ray has started. Each value alone was checked against the
    base experiment already; here the values are set together and the sections' ``validate`` rules rerun
    (no re-parsing, so a large grid costs milliseconds). Search spaces with more than
    :data:`MAX_COMBINATIONS` combinations get every pair of values checked instead: each rule of the
    schema relates two keys."""
    keys = [k for k in space if len(space[k].values) > 0]
    if len(keys) < 2:
        return
    values = [space[k].values for k in keys]
    if math.prod(len(v) for v in values) <= MAX_COMBINATIONS:
        combos: Iterator[tuple[tuple[str, Any], ...]] = (tuple(zip(keys, c, strict=True))
                                                          for c in itertools.product(*values))
    else:
        combos = (((keys[i], a), (keys[j], b)) for i, j in itertools.combinations(range(len(keys)), 2)
                  for a in values[i] for b in values[j])
    for combo in combos:
        try:
            _validate_variant(exp, combo)
        except ConfigError as e:
            setting = ", ".join(f"{k}={v!r}" for k, v in combo)
            raise ConfigError("sweep.search_space", f"the combination {setting} gives an invalid experiment: "
                              f"{e.path}: {e.problem}", source) from None


def _validate_variant(exp: ExperimentConfig, combo: Sequence[tuple[str, Any]]) -> None:
    """Set ``combo``'s (already schema-checked) values into ``exp`` and rerun every cross-field rule on the
    way from each changed field up to the experiment (ConfigError with the full key path)."""
    variant: Any = exp
    for key, value in combo:
        variant = _replace_path(variant, key.split("."), value)
    touched = {tuple(key.split(".")[:-1]) for key, _ in combo}
    prefixes = {p[:i] for p in touched for i in range(len(p) + 1)}
    for prefix in sorted(prefixes, key=len, reverse=True):  # innermost sections first, the experiment last
        node = variant
        for part in prefix:
            node = getattr(node, part)
        check = getattr(node, "validate", None)
        if callable(check):
            try:
                check()
            except (ConfigError, EnvConfigError) as e:
                full = ".".join([*prefix, e.path]) if prefix and not e.path.startswith(f"{prefix[0]}.") else e.path
                raise ConfigError(full, e.problem) from None


def _replace_path(obj: Any, parts: Sequence[str], value: Any) -> Any:
    head, *rest = parts
    return dataclasses.replace(obj, **{head: _replace_path(getattr(obj, head), rest, value) if rest else value})

def load_sweep_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep YAML (+ ``--set`` overrides, ``sweep.*`` included) and validate all of it."""
    p = Path(path)
    source = str(p) + (" + --set" if overrides else "")
    data = merge_dicts(read_yaml(p), parse_overrides(overrides))
    base = data.pop("base", None)
    sweep_data = data.pop("sweep", None)
    if sweep_data is None:
        raise ConfigError("sweep", "missing section (a sweep file needs sweep.search_space etc.)", source)
    exp_data = data
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError("base", f"must be a config file path, got {base!r}", source)
        base_path = Path(base) if Path(base).is_absolute() else p.parent / base
        exp_data = merge_dicts(read_yaml(base_path), data)
    exp = config_from_dict(exp_data, source)
    try:
        sw = build(SweepSettings, sweep_data, "sweep")
    except ConfigError as e:
        raise e.with_source(source) from None
    if sw.max_t is not None and sw.max_t > exp.run.iterations:
        raise ConfigError("sweep.max_t", f"must be <= run.iterations ({exp.run.iterations})", source)
    every = sw.checkpoint_every or exp.run.checkpoint_every
    if sw.scheduler == "asha" and sw.asha_metric == VALIDATION_METRIC and every != 1:
        raise ConfigError("sweep.asha_metric", f"{VALIDATION_METRIC} is measured only at checkpoints; ASHA needs it "
                          f"every iteration: set sweep.checkpoint_every to 1 (it is {every})", source)
    if VALIDATION_METRIC in (sw.metric, sw.asha_metric) and not exp.run.checkpoint_episodes:
        raise ConfigError("sweep.metric", f"{VALIDATION_METRIC} needs validation episodes: run.validation_episodes "
                          "or run.curve_episodes > 0", source)
    if sw.scheduler == "asha" and sw.grace_period > (sw.max_t or exp.run.iterations):
        # ASHAScheduler asserts this when the sweep starts, after Ray.
        raise ConfigError("sweep.grace_period", f"must be <= sweep.max_t or run.iterations "
                          f"({sw.max_t or exp.run.iterations}), got {sw.grace_period}", source)
    _check_search_space(exp, sw.search_space, source)
    scfg = SweepConfig(exp, sw, source)
    if "://" not in sw.storage_path and scfg.sweep_dir.resolve().parent != scfg.sweep_dir.parent:
        raise ConfigError("sweep.name", f"sweep directory {scfg.sweep_dir} would not be a child of "
                          f"sweep.storage_path", source)
    return scfg
