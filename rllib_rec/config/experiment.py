"""Experiment configuration: YAML in ``configs/`` -> typed, validated :class:`ExperimentConfig`.

A config file fully describes a run (sections ``env``, ``model``, ``dqn``, ``run``). ``--set a.b=value``
overrides are parsed as YAML scalars and validated exactly like the file. Every problem is reported as
one line naming the file, the key path and the problem (:class:`rllib_rec.config.schema.ConfigError`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from envs.config import EnvConfig, EnvConfigError, resolve_preset
from rllib_rec.config.schema import (
    SAFE_NAME,
    SAFE_NAME_DOC,
    ConfigError,
    build,
    flatten,
    merge_dicts,
    spec,
    to_dict,
)

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DQNSettings",
    "RunSettings",
    "ExperimentConfig",
    "load_config",
    "parse_overrides",
    "config_from_dict",
    "merge_dicts",
    "read_yaml",
]

MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; refuse anything that is clearly not one
MAX_DEPTH = 8



@dataclass
class ModelConfig:
    """The Keras Transformer Q-network (see ``rllib_rec/agent/model.py``)."""

    embed_dim: int = spec(32, "item/event embedding width", min=4, max=1024)
    num_heads: int = spec(2, "attention heads", min=1, max=32)
    num_layers: int = spec(1, "Transformer encoder blocks", min=1, max=12)
    ff_dim: int = spec(64, "feed-forward width inside each block", min=4, max=4096)
    dropout: float = spec(0.0, "dropout rate in the encoder", min=0.0, max=0.9)
    mlp_hidden: list[int] = spec([64, 32], "hidden widths of the Q head", min=1, max=4096)
    dueling: bool = spec(True, "dueling head: Q = V + A - mean(A)")
    history_features: bool = spec(True, "add per-item event counts from the history to each item's score")
    history_affinity: bool = spec(
        True, "add what happened to *similar* history items (target attention over tied embeddings)"
    )
    item_features: list[Literal["category", "price_band", "popularity_band"]] = spec(
        ["category"], "side features of every item the network embeds beside its id (shop metadata: an unseen "
        "item is not a blank); any of category, price_band, popularity_band"
    )
    id_buckets: int = spec(
        16_384, "rows of the item-id embedding table: catalogs with more items hash ids into this many rows, so "
        "an update costs the same whatever the catalog's size (0 = one row per item always)", min=0
    )
    category_features: bool = spec(
        True, "add per-candidate counts of what happened to same-category history items (needs the category "
        "item feature)"
    )
    value_ledger: bool = spec(
        False, "add a linear sum over history events (item . event-type vector) to the state value"
    )
    item_context: bool = spec(
        False, "the per-item scorer also sees user vector * item representation (interactions, not only sums)"
    )

    def validate(self) -> None:
        # Rules the network enforces when it is built (QNetSpec.validate), checked here before Ray starts
        # (tests/test_config.py checks that each rule here is one the network or RLlib would enforce later).
        if self.embed_dim % self.num_heads:
            raise ConfigError("embed_dim", f"must be divisible by model.num_heads ({self.num_heads}), got {self.embed_dim}")


@dataclass
class DQNSettings:
    """RLlib DQN settings (mapped onto ``DQNConfig`` in ``rllib_rec/agent/algo.py``).

    The defaults here and in the ``model`` section are the shipped experiment's (``configs/default.yaml``,
    which gives the reason for each; a test keeps the two equal)."""

    lr: float = spec(1e-3, "Adam learning rate", gt=0.0, max=1.0)
    lr_end: float | None = spec(
        1e-4, "if set: lr decays linearly from dqn.lr to this (over dqn.lr_decay_steps env steps, or the whole run)", gt=0.0, max=1.0
    )
    lr_decay_steps: int | None = spec(
        None, "env steps of the lr decay (with dqn.lr_end); null = the whole run (run.iterations x "
        "run.steps_per_iteration)", min=1
    )
    gamma: float = spec(0.97, "discount factor", min=0.0, max=1.0)
    n_step: int = spec(1, "n-step returns", min=1, max=20)
    double_q: bool = spec(True, "double-Q targets")
    target_update_freq: int = spec(500, "env steps between target-network syncs", min=1)
    tau: float = spec(1.0, "target sync rate (1 = hard copy)", gt=0.0, max=1.0)
    train_batch_size: int = spec(64, "replay minibatch size", min=1, max=65536)
    replay_capacity: int = spec(50_000, "replay buffer capacity (env steps)", min=100)
    prioritized_replay: bool = spec(True, "prioritised experience replay")
    per_alpha: float = spec(0.6, "PER priority exponent", min=0.0, max=1.0)
    per_beta: float = spec(0.4, "PER importance-sampling exponent", min=0.0, max=1.0)
    ips_weights: bool = spec(False, "multiply the loss by clipped inverse-propensity weights 1/p (for learning from logs)")
    ips_clip: float = spec(10.0, "upper clip of 1/p", min=1.0)
    epsilon_start: float = spec(1.0, "initial exploration rate", min=0.0, max=1.0)
    epsilon_end: float = spec(0.05, "final exploration rate", min=0.0, max=1.0)
    epsilon_timesteps: int = spec(20_000, "env steps over which epsilon anneals linearly", min=1)
    explore_item_dropout: float = spec(
        0.4,
        "training envs put each item out of stock for a whole session with this probability (on top of "
        "env.item_dropout); evaluation uses env as configured",
        min=0.0, max=0.9,
    )
    learning_starts: int = spec(1_000, "env steps sampled before the first update", min=0)
    rollout_fragment_length: int = spec(8, "env steps per env per sampling round", min=1)
    training_intensity: float | None = spec(
        4.0, "replay ratio: env steps trained / env steps sampled (null = one update per sampling round)", gt=0.0
    )
    grad_clip: float | None = spec(10.0, "gradient-norm clip (null = off)", gt=0.0)
    reward_loss_weight: float = spec(
        0.0, "weight of an auxiliary loss: a second head on the shared encoder predicts the immediate reward of "
        "the recommended item (squared error); training only, the exported network is the Q-network alone. 0 = off",
        min=0.0, max=100.0,
    )


@dataclass
class RunSettings:
    """Where and how long a run goes."""

    iterations: int = spec(20, "training iterations (algo.train() calls)", min=1)
    steps_per_iteration: int = spec(1_000, "minimum env steps sampled per iteration", min=1)
    num_env_runners: int = spec(0, "remote EnvRunner actors (0 = sample in the driver/learner process)", min=0)
    num_envs_per_env_runner: int = spec(8, "vectorised envs per EnvRunner", min=1, max=1024)
    num_learners: int = spec(0, "remote Learner actors (0 = learn in the driver)", min=0)
    training_loop: str = spec(
        "rllib", "rllib: RLlib's DQN training step (episode replay; sample, then update); pipelined: flat "
        "transition replay, the learner's batch built without RLlib's episode connector, and the next round "
        "sampled on a second thread during the updates (rllib_rec/agent/dqn.py)", choices=("rllib", "pipelined")
    )
    torch_threads: int = spec(1, "torch intra-op threads (1 is fastest for this small net on 2 cores)", min=1)
    checkpoint_every: int = spec(5, "checkpoint every N iterations (and always at the end)", min=1)
    eval_episodes: int = spec(200, "greedy evaluation episodes at the end of a run", min=1)
    eval_seed: int = spec(1_000_000, "first seed of the held-out evaluation episodes", min=0)
    # Model selection on seeds the final evaluation never sees: the greedy return oscillates by a few
    # percent between late checkpoints, so the last one is a noisy pick.
    validation_episodes: int = spec(
        0, "greedy episodes on validation seeds after each checkpoint; the best checkpoint becomes the run's "
        "selected one (best.json) and is the one evaluated, exported and served. 0 = off: the last one", min=0
    )
    validation_seed: int = spec(2_000_000, "first seed of the validation episodes (disjoint from eval seeds)", min=0)
    curve_episodes: int = spec(
        50, "with run.validation_episodes 0: greedy episodes on validation seeds after each checkpoint, for the "
        "learning curve's greedy return (selects nothing; 0 = none)", min=0
    )
    seed: int = spec(0, "seed of training", min=0)
    output_dir: str = spec("runs", "where runs, checkpoints and the local MLflow store go (a directory path; "
                           "under `rllib-rec submit` an absolute one on storage the cluster shares)")
    experiment: str = spec("rllib-rec", "MLflow experiment name")
    # Fault tolerance (RLlib's AlgorithmConfig.fault_tolerance): a crashing env or EnvRunner costs the
    # episodes in flight, not the run.
    restart_failed_sub_environments: bool = spec(
        True, "recreate an env whose step/reset raised (its unfinished episodes are dropped) and go on"
    )
    restart_failed_env_runners: bool = spec(True, "recreate a remote EnvRunner actor that died")
    max_env_runner_restarts: int = spec(1000, "give up after this many EnvRunner restarts", min=0)
    env_step_timeout_s: float | None = spec(
        60.0, "a step/reset running longer than this raises (then handled as a crash); null = no watchdog", gt=0.0
    )

    def validate(self) -> None:
        # Run directories, checkpoints and the local sqlite store are written with plain file I/O.
        if not self.output_dir.strip():
            raise ConfigError("output_dir", "must name a directory, got ''")
        if "://" in self.output_dir:
            raise ConfigError("output_dir", f"must be a directory path (on a cluster: a shared filesystem), got "
                              f"{self.output_dir!r}; object storage is for sweeps (sweep.storage_path=s3://...)")

    @property
    def checkpoint_episodes(self) -> int:
        """Greedy episodes played on validation seeds for each checkpoint (0 = none): run.validation_episodes
        (which also selects the best checkpoint), else run.curve_episodes (the learning curve only)."""
        return self.validation_episodes or self.curve_episodes


@dataclass
class FaultSettings:
    """Deliberate faults, for testing the fault tolerance above (all off by default)."""

    env_crash_rate: float = spec(0.0, "probability per episode that one env step raises", min=0.0, max=1.0)
    env_hang_rate: float = spec(0.0, "probability per episode that one env step hangs", min=0.0, max=1.0)
    env_hang_seconds: float = spec(3600.0, "how long an injected hang sleeps", gt=0.0)
    checkpoint_write_delay_s: float = spec(
        0.0, "sleep this long inside every checkpoint write (before it is made visible)", min=0.0
    )
    trial_error_at_iteration: int = spec(
        0, "a Tune trial raises once at this training iteration (0 = never); sweep.max_failures retries it", min=0
    )


@dataclass
class ExperimentConfig:
    name: str = spec("experiment", "run name: the run directory is <run.output_dir>/<name>-<time>",
                     pattern=SAFE_NAME, pattern_doc=SAFE_NAME_DOC)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dqn: DQNSettings = field(default_factory=DQNSettings)
    run: RunSettings = field(default_factory=RunSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)

    def validate(self) -> None:
        if self.model.category_features and "category" not in self.model.item_features:
            raise ConfigError("model.category_features", "needs category in model.item_features")
        if self.dqn.epsilon_end > self.dqn.epsilon_start:
            raise ConfigError("dqn.epsilon_end", "must be <= dqn.epsilon_start")
        if self.faults.env_crash_rate + self.faults.env_hang_rate > 1.0:
            raise ConfigError("faults.env_hang_rate", "faults.env_crash_rate + faults.env_hang_rate must be <= 1")
        r = self.run
        n_val = r.checkpoint_episodes
        if n_val and (r.validation_seed < r.eval_seed + r.eval_episodes and r.eval_seed < r.validation_seed + n_val):
            raise ConfigError("run.validation_seed", f"seeds {r.validation_seed}..{r.validation_seed + n_val - 1} "
                              f"overlap the evaluation seeds {r.eval_seed}..{r.eval_seed + r.eval_episodes - 1}")
        if self.dqn.train_batch_size > self.dqn.replay_capacity:
            raise ConfigError("dqn.train_batch_size", f"must be <= dqn.replay_capacity ({self.dqn.replay_capacity}), "
                              f"got {self.dqn.train_batch_size}")
        # RLlib's DQNConfig.validate: an n-step transition must fit in one sampled fragment.
        if self.dqn.n_step > self.dqn.rollout_fragment_length:
            raise ConfigError("dqn.n_step", f"must be <= dqn.rollout_fragment_length ({self.dqn.rollout_fragment_length}), "
                              f"got {self.dqn.n_step}")

    @property
    def lr_decay_env_steps(self) -> int:
        """Env steps over which the lr decays to dqn.lr_end: dqn.lr_decay_steps, else the whole run (so a
        longer or shorter ``--set run.iterations`` stretches the decay with it)."""
        return self.dqn.lr_decay_steps or self.run.iterations * self.run.steps_per_iteration

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def flat_params(self) -> dict[str, Any]:
        """``{"dqn.lr": 0.0005, ...}`` for MLflow params."""
        return flatten(self.to_dict())

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (recorded with checkpoints and exports)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def config_from_dict(data: Mapping[str, Any] | None, source: str | None = None) -> ExperimentConfig:
    """Validate a plain dict (e.g. parsed YAML) into an :class:`ExperimentConfig`."""
    try:
        data = dict(data or {})
        env = resolve_preset(data.pop("env", None), "env")
        return build(ExperimentConfig, {**data, "env": env})
    except EnvConfigError as e:
        err = ConfigError(e.path, e.problem)
        raise err.with_source(source) if source else err from None
    except ConfigError as e:
        raise e.with_source(source) if source else e from None


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: a config never needs them, and they enable YAML bombs."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases are not allowed (line {event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def _depth(obj: Any, level: int = 0) -> int:
    if isinstance(obj, Mapping):
        return max([_depth(v, level + 1) for v in obj.values()] or [level + 1])
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj] or [level + 1])
    return level


def _yaml_problem(e: Exception) -> str:
    """Where and what, e.g. ``line 4, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow
    sequence at line 3, column 15)`` (the parser's own text names the string it was given, not the file)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None:
        where += f" ({context} at line {start.line + 1}, column {start.column + 1})"
    return where


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping with size, alias and depth guards; errors are one-line ConfigErrors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("", "file not found" if not p.exists() else "not a file", str(p))
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError("", f"file is larger than {MAX_CONFIG_BYTES} bytes; not a config", str(p))
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506 (safe subclass)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError("", f"invalid YAML: {_yaml_problem(e)}", str(p)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"top level must be a mapping, got {type(data).__name__}", str(p))
    if _depth(data) > MAX_DEPTH:
        raise ConfigError("", f"nested deeper than {MAX_DEPTH} levels; not a config", str(p))
    return data


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["dqn.lr=1e-3", "env.preset=seed"]`` -> nested dict; values are YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(item, "override must look like section.key=value", "--set")
        try:
            value = yaml.load(raw, Loader=_NoAliasLoader) if raw.strip() else ""  # noqa: S506
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "conflicting overrides", "--set")
        node[parts[-1]] = value
    return out


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """Load ``path`` (or the built-in defaults when None), apply ``--set`` overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    over = parse_overrides(overrides)
    if over:
        source = f"{source} + --set"
    return config_from_dict(merge_dicts(data, over), source)
