"""``rllib-rec tune``: Ray Tune sweeps over the one DQNConfig that :func:`rllib_rec.algo.build_algo_config` builds.

A sweep file is an experiment config (sections ``env``/``model``/``dqn``/``run``, or ``base: debug.yaml``
plus overrides) and a ``sweep:`` section. Each ``sweep.search_space`` key is an experiment key path
(``dqn.lr``, ``model.embed_dim``, ...) that :data:`SWEEPABLE` maps onto one field of the DQNConfig's dict
form, where Tune samples it; RLlib's ``Algorithm`` stays the trainable, so trials are ordinary RLlib runs.

Layout of a sweep: ``<sweep.storage_path>/<sweep.name>/`` is Tune's experiment directory (trials,
checkpoints, state for ``--resume``) plus ``best.json``, ``trials.txt`` and ``best_checkpoint/`` (the best
trial's checkpoint with ``experiment.yaml``/``rllib_rec.json``, so ``export --best best.json`` takes it).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from envs.schema import ConfigError, build, flatten, spec
from rllib_rec.config import (
    ExperimentConfig,
    config_from_dict,
    merge_dicts,
    parse_overrides,
    read_yaml,
)

__all__ = [
    "SWEEPABLE",
    "Distribution",
    "SweepSettings",
    "SweepConfig",
    "SweepResult",
    "load_sweep_config",
    "build_param_space",
    "trial_experiment_config",
    "run_sweep",
    "max_overlap",
]

DEFAULT_METRIC = "env_runners/episode_return_mean"

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
    "model.embed_dim": ("_model_config", "embed_dim"),
    "model.num_heads": ("_model_config", "num_heads"),
    "model.num_layers": ("_model_config", "num_layers"),
    "model.ff_dim": ("_model_config", "ff_dim"),
    "model.dropout": ("_model_config", "dropout"),
    "model.mlp_hidden": ("_model_config", "mlp_hidden"),
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

    def to_tune(self) -> Any:
        from ray import tune

        v = getattr(self, self.kind)
        return {"grid": tune.grid_search, "choice": tune.choice}[self.kind](list(v)) if self.kind in (
            "grid", "choice") else {"loguniform": tune.loguniform, "uniform": tune.uniform}[self.kind](*v)


@dataclass
class SweepSettings:
    """How Tune runs the sweep."""

    name: str | None = spec(None, "sweep directory name under storage_path (default: <experiment name>-sweep)")
    search_space: dict[str, Distribution] = field(default_factory=dict, metadata={"doc": "key path -> distribution"})
    scheduler: Literal["asha", "fifo"] = spec("asha", "trial scheduler: ASHA early stopping, or FIFO (none)")
    max_t: int | None = spec(None, "ASHA: max iterations per trial (default: run.iterations)", min=1)
    grace_period: int = spec(1, "ASHA: iterations before a trial may be stopped", min=1)
    reduction_factor: float = spec(2.0, "ASHA: keep 1/reduction_factor of trials per rung", gt=1.0)
    num_samples: int = spec(1, "samples (each repeats the whole grid)", min=1)
    max_concurrent_trials: int = spec(2, "trials running at once", min=1)
    cpus_per_trial: float = spec(1.0, "CPUs of a trial's main process (env runners add 1 CPU each)", gt=0.0)
    metric: str = spec(DEFAULT_METRIC, "result key to rank trials by (Tune's '/'-joined name)")
    mode: Literal["max", "min"] = spec("max", "maximise or minimise the metric")
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


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _check_search_space(exp: ExperimentConfig, space: Mapping[str, Distribution], source: str) -> None:
    """Unknown, unmapped or out-of-range keys are one-line errors before Ray starts."""
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
                cfg = config_from_dict(merge_dicts(base, _nested(key, v)))
            except ConfigError as e:
                raise ConfigError(path, f"value {v!r} is invalid: {e}", source) from None
            coerced.append(flatten(cfg.to_dict())[key])  # schema types (YAML reads 1e-4 as a string)
        setattr(dist, dist.kind, coerced)


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
    _check_search_space(exp, sw.search_space, source)
    return SweepConfig(exp, sw, source)


def _set_torch_threads(algorithm: Any = None, **_: Any) -> None:
    """RLlib ``on_algorithm_init`` hook: one torch thread per trial process (DESIGN: 10x faster on 2 cores)."""
    from rllib_rec.runtime import set_torch_threads

    set_torch_threads(int(os.environ.get("RLLIB_REC_TORCH_THREADS", "1")))


def _trial_dirname(trial: Any) -> str:
    """Short trial directories (Tune's default embeds every sampled value in the name)."""
    return f"trial_{trial.trial_id}"


def _progress_callback(metric: str, log: Callable[[str], None]) -> Any:
    """One line per trial result instead of Tune's verbose tables (which dump the whole RLlib config)."""
    from ray import tune

    class _Progress(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            value = metric_value(result, metric)
            log(f"  {trial.trial_id}  iter {result.get('training_iteration')}  {metric}={_fmt(value)}")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log(f"  {trial.trial_id}  finished")

    return _Progress()


def trial_tracking_callback(scfg: SweepConfig, uri: str, experiment_id: str, log: Callable[[str], None]) -> Any:
    """A Tune callback giving each trial an MLflow run written through :class:`~rllib_rec.tracking.RunLogger`.

    Instead of Tune's ``MLflowLoggerCallback``, which logs the whole RLlib config dict as params (hundreds,
    unredacted) and loses any write the store refuses: here a trial run gets what a ``train`` run gets (the
    trial's flattened experiment config, redacted, and the per-iteration metrics of ``iteration_metrics``
    at the env-step count, plus the sweep metric), and a store outage is reported once, queued, retried
    after every result and, if still unsent when the trial ends, written to the trial directory's
    ``mlflow_unsent.jsonl``."""
    from ray import tune

    from rllib_rec.tracking import RunLogger, TrackingError
    from rllib_rec.train import iteration_metrics

    metric = scfg.sweep.metric

    class _TrialRuns(tune.Callback):
        def __init__(self) -> None:
            self._runs: dict[str, RunLogger] = {}

        def __getstate__(self) -> dict[str, Any]:
            return {"_runs": {}}  # Tune pickles its callbacks; open MLflow clients are not state to keep

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id in self._runs:  # a retried trial keeps its run
                return
            run_dir = Path(trial.local_path or scfg.sweep_dir / _trial_dirname(trial))
            try:
                tracker = RunLogger.start(uri, experiment_id, run_dir, log, run_name=f"{scfg.name}-{trial.trial_id}")
            except TrackingError as e:
                log(f"  {trial.trial_id}  not tracked in MLflow: {e}")
                tracker = RunLogger.disabled(run_dir, log)
            self._runs[trial.trial_id] = tracker
            exp = trial_experiment_config(scfg, trial.config)
            tracker.log_params({k: str(v)[:500] for k, v in exp.flat_params().items()})
            tracker.set_tags({"sweep": scfg.name, "trial_id": trial.trial_id, "trial_dir": str(run_dir),
                              "config_hash": exp.config_hash()})

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            tracker = self._runs.get(trial.trial_id)
            if tracker is None:
                return
            m = {**iteration_metrics(result), metric: metric_value(result, metric)}  # NaN: left out below
            tracker.log_metrics({k: v for k, v in m.items() if math.isfinite(v)}, step=int(m["env_steps"]))
            tracker.flush()  # once per result: retry what an outage left queued

        def _close(self, trial: Any, status: str) -> None:
            tracker = self._runs.pop(trial.trial_id, None)
            if tracker is not None:
                tracker.close(status)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._close(trial, "FINISHED")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._close(trial, "FAILED")  # final: retries go through on_trial_recover, not here

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            for trial_id in list(self._runs):  # interrupted (Ctrl-C) trials: --resume starts a new run
                self._runs.pop(trial_id).close("KILLED")

    return _TrialRuns()


def flatten_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """Tune's '/'-joined view of a nested result dict."""
    return flatten(result, sep="/")


def metric_value(result: Mapping[str, Any], metric: str) -> float:
    """``metric`` (a top-level key or a '/'-joined nested one) from a Tune result; NaN if absent or not a number."""
    value = result[metric] if metric in result else flatten_result(result).get(metric)
    return float(value) if isinstance(value, int | float) else math.nan


def build_param_space(scfg: SweepConfig) -> tuple[Any, dict[str, Any]]:
    """``(trainable, param_space)``: :class:`~rllib_rec.trainable.TunedDQN` (RLlib's DQN) and the DQNConfig from ``build_algo_config`` as a dict, with Tune
    distributions at the mapped fields.

    The module spec's ``model_config`` is moved to the algorithm-level ``model_config``: RLlib merges
    the two (spec wins) into the same dict, but Tune only resolves search spaces inside plain dicts, not
    inside the ``RLModuleSpec`` object."""
    from rllib_rec.algo import build_algo_config

    exp, sw = scfg.experiment, scfg.sweep
    cfg = build_algo_config(exp)
    module_spec = copy.copy(cfg._rl_module_spec)
    model_config = dict(module_spec.model_config or {})
    module_spec.model_config = None
    cfg.rl_module(rl_module_spec=module_spec, model_config=model_config)
    cfg.resources(num_cpus_for_main_process=sw.cpus_per_trial)
    cfg.callbacks(on_algorithm_init=_set_torch_threads)
    space = cfg.to_dict()
    from rllib_rec.trainable import TunedDQN

    if cfg.algo_class is not TunedDQN.__mro__[1]:
        raise TypeError(f"build_algo_config built {cfg.algo_class.__name__}; the sweep trainable wraps DQN")
    for key, dist in sw.search_space.items():
        *parents, leaf = SWEEPABLE[key]
        node = space
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"sweep.search_space.{key}", f"DQNConfig has no {'.'.join(SWEEPABLE[key])}", scfg.source)
        node[leaf] = dist.to_tune()
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
        data = merge_dicts(data, _nested(key, value))
    return config_from_dict(data, f"{scfg.source} (trial)")


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at one instant (concurrency evidence from trials' start/end times)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@dataclass
class SweepResult:
    sweep_dir: Path
    best_json: Path
    best: dict[str, Any]
    rows: list[dict[str, Any]]
    table: str
    max_concurrent: int


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _trial_rows(scfg: SweepConfig, grid: Any) -> tuple[list[dict[str, Any]], int]:
    metric, mode = scfg.sweep.metric, scfg.sweep.mode
    rows, intervals = [], []
    for r in grid:
        m = r.metrics or {}
        value = metric_value(m, metric)
        df = r.metrics_dataframe
        if df is not None and len(df) and "timestamp" in df:
            start = float(df["timestamp"].iloc[0] - df["time_this_iter_s"].iloc[0])
            intervals.append((start, float(df["timestamp"].iloc[-1])))
        rows.append({
            "trial": str(m.get("trial_id") or Path(r.path).name),
            "trial_dir": str(r.path),
            "status": "ERROR" if r.error else "OK",
            "iterations": int(m.get("training_iteration", 0) or 0),
            "value": value,
            "params": sampled_values(scfg, r.config) if r.config else {},
            "node": str((m.get(PLACEMENT_KEY) or {}).get("trial_node", "")),
            "env_runner_nodes": list((m.get(PLACEMENT_KEY) or {}).get("env_runner_nodes", [])),
            "result": r,
        })
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda row: (math.isnan(row["value"]), sign * row["value"] if not math.isnan(row["value"]) else 0))
    return rows, max_overlap(intervals)


PLACEMENT_KEY = "placement"  # TunedDQN's result entry: {"trial_node": id, "env_runner_nodes": [ids]}
NODE_ID_CHARS = 8  # node ids are 56 hex chars; a prefix tells a handful of nodes apart in a table


def placement_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """``"<node>: <n> trial(s), <m> with env runners there; ..."`` — where a sweep ran, from trial results."""
    trials: dict[str, int] = {}
    runners: dict[str, int] = {}
    for row in rows:
        if row.get("node"):
            trials[row["node"]] = trials.get(row["node"], 0) + 1
        for node in row.get("env_runner_nodes", []):
            runners[node] = runners.get(node, 0) + 1
    parts = []
    for node in sorted(set(trials) | set(runners)):
        extra = f", {runners[node]} with env runners there" if node in runners else ""
        parts.append(f"{node[:NODE_ID_CHARS]}: {trials.get(node, 0)} trial(s){extra}")
    return "; ".join(parts) or "unknown"


def _table(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for row in rows for k in row["params"]})
    header = ["#", "trial", "status", "iter", metric, *keys, "node"]
    body = [[str(i + 1), row["trial"], row["status"], str(row["iterations"]), _fmt(row["value"]),
             *[_fmt(row["params"].get(k, "")) for k in keys], row.get("node", "")[:NODE_ID_CHARS] or "-"]
            for i, row in enumerate(rows)]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    fmt = "  ".join(f"{{:{'<' if c in (1, 2) else '>'}{w}}}" for c, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*["-" * w for w in widths]), *[fmt.format(*b) for b in body]])


def _materialise_best(scfg: SweepConfig, row: dict[str, Any], dest: Path) -> tuple[Path, Path]:
    """Copy the best trial's best checkpoint to ``dest`` with the project's metadata (atomic rename)."""
    from rllib_rec.checkpoints import CHECKPOINT_META, CONFIG_FILE, CheckpointError

    r = row["result"]
    ckpt = None
    try:
        ckpt = r.get_best_checkpoint(scfg.sweep.metric, scfg.sweep.mode)
    except Exception:  # noqa: BLE001 — metric may be missing from checkpoint metrics; fall back to latest
        ckpt = None
    ckpt = ckpt or r.checkpoint
    if ckpt is None:
        raise CheckpointError(f"{r.path}: best trial has no checkpoint")
    src = Path(ckpt.path)
    exp = trial_experiment_config(scfg, r.config)
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False), encoding="utf-8")
    meta = {"iteration": row["iterations"], "trial": row["trial"], "trial_checkpoint": str(src),
            "config_hash": exp.config_hash(), "sweep": str(scfg.sweep_dir)}
    (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if dest.exists():  # a resumed sweep may pick another best: replace the previous copy
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    return dest, src


def run_sweep(
    config_path: str,
    overrides: Sequence[str] = (),
    resume: bool = False,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
    track: bool = True,
) -> SweepResult:
    """Run (or ``resume``) the sweep; returns the sorted trial rows and where ``best.json`` went.

    ``track=False`` (``--no-tracking``): no MLflow logger for the trials and no "best" run."""
    from rllib_rec.runtime import use_torch_keras_backend

    use_torch_keras_backend()
    from rllib_rec.checkpoints import CheckpointError, atomic_write_text
    from rllib_rec.tracking import connect, redact, resolve_tracking_uri

    scfg = load_sweep_config(config_path, overrides)
    exp, sw = scfg.experiment, scfg.sweep
    sweep_dir = scfg.sweep_dir
    local = "://" not in str(sw.storage_path)
    state_exists = (sweep_dir / "tuner.pkl").exists() if local else False
    if local and resume and not state_exists:
        raise CheckpointError(f"{sweep_dir}: no sweep to resume (tuner.pkl missing)")
    if local and not resume and sweep_dir.exists():
        raise CheckpointError(f"{sweep_dir}: sweep directory exists; use --resume, or --set sweep.name=NEW")

    uri = resolve_tracking_uri(exp.run.output_dir, tracking_uri) if track else None
    experiment_id = connect(uri, exp.run.experiment, exp.run.output_dir) if uri else None  # fail before Ray

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from rllib_rec.runtime import init_ray

    os.environ["RLLIB_REC_TORCH_THREADS"] = str(exp.run.torch_threads)
    init_ray()
    algo_class, space = build_param_space(scfg)
    if resume:
        log(f"resuming sweep {sweep_dir}")
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=algo_class, resume_unfinished=True,
                                   resume_errored=True, param_space=space)
    else:
        scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=sw.max_t or exp.run.iterations,
                                   grace_period=sw.grace_period, reduction_factor=sw.reduction_factor)
                     if sw.scheduler == "asha" else FIFOScheduler())
        tuner = tune.Tuner(
            algo_class,
            param_space=space,
            tune_config=tune.TuneConfig(metric=sw.metric, mode=sw.mode, scheduler=scheduler,
                                        num_samples=sw.num_samples, max_concurrent_trials=sw.max_concurrent_trials,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=scfg.name,
                storage_path=str(sweep_dir.parent) if local else sw.storage_path,
                stop={"training_iteration": exp.run.iterations},
                failure_config=tune.FailureConfig(max_failures=sw.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    checkpoint_frequency=sw.checkpoint_every or exp.run.checkpoint_every, checkpoint_at_end=True),
                callbacks=[*([trial_tracking_callback(scfg, uri, experiment_id, log)] if uri else []),
                           _progress_callback(sw.metric, log)],
                verbose=0,
            ),
        )
        log(f"sweep {sweep_dir}  ({len(sw.search_space)} swept keys, {sw.scheduler}, "
            f"{sw.max_concurrent_trials} concurrent; MLflow {redact(uri) if uri else 'off'})")
    grid = tuner.fit()
    # Trial statuses as Tune saved them (the live objects fit() returns after Ctrl-C do not say PENDING).
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(str(sweep_dir) if local else f"{sw.storage_path.rstrip('/')}/{scfg.name}").trials
    except Exception:  # noqa: BLE001 — fall back to what fit() returned
        trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:  # Tune returns normally after Ctrl-C; do not crown a best from a partial sweep
        log(f"sweep interrupted with {len(unfinished)} unfinished trial(s); continue with: "
            f"rllib-rec tune --config {config_path} --resume")
        raise KeyboardInterrupt

    rows, concurrency = _trial_rows(scfg, grid)
    table = _table(rows, sw.metric)
    log(table)
    log(f"max trials running at once (from trial timestamps): {concurrency}")
    log(f"trials per Ray node: {placement_summary(rows)}")
    retried = {t.trial_id: t.num_failures for t in trials if getattr(t, "num_failures", 0)}
    log("trial errors retried: " + (", ".join(f"{k} x{v}" for k, v in sorted(retried.items())) or "none"))
    ok = [row for row in rows if row["status"] == "OK" and not math.isnan(row["value"])]
    if not ok:
        raise CheckpointError(f"{sweep_dir}: no trial reported {sw.metric}")
    best_row = ok[0]
    best_ckpt, trial_ckpt = _materialise_best(scfg, best_row, sweep_dir / "best_checkpoint")
    best = {"checkpoint": str(best_ckpt), "trial_checkpoint": str(trial_ckpt), "metric": sw.metric,
            "mode": sw.mode, "value": best_row["value"], "trial": best_row["trial"], "trial_dir": best_row["trial_dir"],
            "config": best_row["params"]}
    best_json = sweep_dir / "best.json"
    atomic_write_text(best_json, json.dumps(best, indent=2))
    atomic_write_text(sweep_dir / "trials.txt", table + "\n")

    if uri is not None:  # None: --no-tracking
        import mlflow

        experiment_id = connect(uri, exp.run.experiment, exp.run.output_dir)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{scfg.name}-best"):
            mlflow.set_tags({"sweep": scfg.name, "sweep_dir": str(sweep_dir), "best_trial": best_row["trial"],
                             "checkpoint_path": str(best_ckpt)})
            mlflow.log_params({f"best.{k}": str(v)[:500] for k, v in best_row["params"].items()})
            mlflow.log_metric("best_value", best_row["value"])
            mlflow.log_metric("max_concurrent_trials_observed", concurrency)
            mlflow.log_artifact(str(best_json))
            mlflow.log_artifact(str(sweep_dir / "trials.txt"))
    log(f"best trial {best_row['trial']}: {sw.metric}={best_row['value']:.4g}  checkpoint {best_ckpt}")
    log(f"best.json     : {best_json}")
    return SweepResult(sweep_dir, best_json, best, [{k: v for k, v in r.items() if k != "result"} for r in rows],
                       table, concurrency)
