"""``rllib-rec tune``: Ray Tune sweeps over the one DQNConfig that :func:`rllib_rec.agent.algo.build_algo_config`
builds, with the search space of the sweep file (``rllib_rec.config.sweep``) sampled into it; RLlib's
``Algorithm`` stays the trainable, so trials are ordinary RLlib runs.

Layout of a sweep: ``<sweep.storage_path>/<sweep.name>/`` is Tune's experiment directory (trials,
checkpoints, state for ``--resume``) plus ``best.json``, ``trials.txt`` and ``best_checkpoint/`` (the winning
checkpoint with ``experiment.yaml``/``rllib_rec.json``, so ``export --best best.json`` takes it).

The winner is a checkpoint, not a trial's last result: every checkpoint a trial writes carries the greedy
return of its weights on the validation seeds (``rllib_rec.tuning.trainable``), and the checkpoint with the
best ``sweep.metric`` over all trials wins. ``best.json``, ``best_checkpoint/rllib_rec.json`` and the printed
summary name that checkpoint, its iteration and its value. ASHA, which needs a value every iteration, stops
trials by ``sweep.asha_metric`` (the training return by default).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rllib_rec.agent.algo import TRIAL_TORCH_THREADS_ENV
from rllib_rec.agent.runtime import check_sweep_resources, init_ray, use_torch_keras_backend
from rllib_rec.config.sweep import TRAINING_METRIC, VALIDATION_METRIC, SweepConfig, load_sweep_config
from rllib_rec.errors import CheckpointError
from rllib_rec.tables import format_table
from rllib_rec.training.checkpoints import CHECKPOINT_META, CONFIG_FILE, atomic_write_text
from rllib_rec.training.tracking import RunLogger, connect, redact, resolve_tracking_uri
from rllib_rec.tuning.callbacks import (
    fmt,
    metric_value,
    progress_callback,
    trial_dirname,
    trial_iterations,
    trial_tracking_callback,
)
from rllib_rec.tuning.search_space import build_param_space, sampled_values, trial_experiment_config
from rllib_rec.tuning.trainable import PLACEMENT_KEY, RUNNING_KEY

__all__ = ["SweepResult", "run_sweep", "best_lines", "max_overlap", "placement_summary"]


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


def _running_interval(df: Any) -> tuple[float, float] | None:
    """When the trial's actor was set up and when its last iteration ended (a trial of a sweep started before
    the trainable reported that: its first iteration's start and last end, to whole seconds)."""
    if df is None or not len(df):
        return None
    since, until = f"{RUNNING_KEY}/since", f"{RUNNING_KEY}/until"
    if since in df:
        return float(df[since].iloc[0]), float(df[until].iloc[-1])
    if "timestamp" in df:
        return float(df["timestamp"].iloc[0] - df["time_this_iter_s"].iloc[0]), float(df["timestamp"].iloc[-1])
    return None


def _trial_rows(scfg: SweepConfig, grid: Any) -> tuple[list[dict[str, Any]], int]:
    """One row per trial with its best *checkpoint* by ``sweep.metric`` (each checkpoint carries the result it
    was written with), sorted best first; and how many trials ran at once."""
    metric, mode = scfg.sweep.metric, scfg.sweep.mode
    rows, intervals = [], []
    for r in grid:
        m = r.metrics or {}
        value, iteration, ckpt = _best_checkpoint(r, metric, mode)
        interval = _running_interval(r.metrics_dataframe)
        if interval:
            intervals.append(interval)
        rows.append({
            "trial": str(m.get("trial_id") or Path(r.path).name),
            "trial_dir": str(r.path),
            "status": "ERROR" if r.error else "OK",
            "iterations": int(m.get("training_iteration", 0) or 0),
            "value": value,
            "best_iteration": iteration,
            "checkpoint": str(ckpt) if ckpt else None,
            "training_return": metric_value(m, TRAINING_METRIC),
            "params": sampled_values(scfg, r.config) if r.config else {},
            "node": str((m.get(PLACEMENT_KEY) or {}).get("trial_node", "")),
            "env_runner_nodes": list((m.get(PLACEMENT_KEY) or {}).get("env_runner_nodes", [])),
            "result": r,
        })
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda row: (math.isnan(row["value"]), sign * row["value"] if not math.isnan(row["value"]) else 0))
    return rows, max_overlap(intervals)


def _best_checkpoint(result: Any, metric: str, mode: str) -> tuple[float, int, Path | None]:
    """``(value, iteration, path)`` of the trial's checkpoint with the best ``metric`` (a tie goes to the later
    iteration); ``(nan, 0, None)`` if no checkpoint carries the metric (e.g. ASHA stopped the trial before its
    first validated checkpoint)."""
    sign = 1.0 if mode == "max" else -1.0
    best: tuple[float, int, Path | None] = (math.nan, 0, None)
    for ckpt, metrics in result.best_checkpoints or []:
        value = metric_value(metrics, metric)
        if math.isnan(value):
            continue
        iteration = int(metric_value(metrics, "training_iteration"))
        if best[2] is None or (sign * value, iteration) > (sign * best[0], best[1]):
            best = (value, iteration, Path(ckpt.path))
    return best


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


def _materialise_best(scfg: SweepConfig, row: dict[str, Any], dest: Path) -> tuple[Path, Path]:
    """Copy the winning checkpoint (``row["checkpoint"]``, the best trial's best-scored one) to ``dest`` with the
    project's metadata (atomic rename); its ``rllib_rec.json`` names the same iteration and value as best.json."""
    src = Path(row["checkpoint"])
    exp = trial_experiment_config(scfg, row["result"].config)
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False), encoding="utf-8")
    meta = {"iteration": row["best_iteration"], "trial": row["trial"], "trial_checkpoint": str(src),
            "metric": scfg.sweep.metric, "value": row["value"], "config_hash": exp.config_hash(),
            "sweep": str(scfg.sweep_dir)}
    (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if dest.exists():  # a resumed sweep may pick another best: replace the previous copy
        shutil.rmtree(dest)
    os.rename(tmp, dest)
    return dest, src


def _table(rows: list[dict[str, Any]], metric: str, iterations: int) -> str:
    """``iterations``: a trial's full length; an OK trial that ran fewer was stopped early by ASHA."""
    keys = sorted({k for row in rows for k in row["params"]})
    status = [("stopped early" if row["status"] == "OK" and row["iterations"] < iterations else row["status"])
              for row in rows]
    body = [[str(i + 1), row["trial"], status[i], str(row["iterations"]), str(row["best_iteration"] or "-"),
             fmt(row["value"]), fmt(row["training_return"]), *[fmt(row["params"].get(k, "")) for k in keys],
             row.get("node", "")[:NODE_ID_CHARS] or "-"]
            for i, row in enumerate(rows)]
    return format_table(["#", "trial", "status", "iter", "best iter", f"{metric} (best ckpt)",
                         "training return (last)", *keys, "node"], body)


def run_sweep(
    config_path: str,
    overrides: Sequence[str] = (),
    resume: bool = False,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
    track: bool = True,
) -> SweepResult:
    """Run (or ``resume``) the sweep; returns the sorted trial rows and where ``best.json`` went.

    ``track=False`` (``--no-tracking``): no MLflow run per trial and no "best" run."""
    use_torch_keras_backend()
    scfg = load_sweep_config(config_path, overrides)
    _check_sweep_dir(scfg, resume)
    exp = scfg.experiment
    uri = resolve_tracking_uri(exp.run.output_dir, tracking_uri) if track else None
    experiment_id = connect(uri, exp.run.experiment, exp.run.output_dir) if uri else None  # fail before Ray

    os.environ[TRIAL_TORCH_THREADS_ENV] = str(exp.run.torch_threads)
    init_ray()
    check_sweep_resources(exp, scfg.sweep.cpus_per_trial, scfg.sweep.max_concurrent_trials, log)
    grid = _tuner(scfg, resume, uri, experiment_id, log).fit()
    trials = _saved_trials(scfg, grid)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:  # Tune returns normally after Ctrl-C; do not crown a best from a partial sweep
        log(f"sweep interrupted with {len(unfinished)} unfinished trial(s); continue with: "
            f"rllib-rec tune --config {config_path} --resume")
        raise KeyboardInterrupt

    rows, concurrency = _trial_rows(scfg, grid)
    table = _table(rows, scfg.sweep.metric, trial_iterations(scfg))
    _log_sweep(table, rows, trials, concurrency, log)
    ok = [row for row in rows if row["status"] == "OK" and row["checkpoint"] is not None]
    if not ok:
        raise CheckpointError(f"{scfg.sweep_dir}: no trial checkpoint carries {scfg.sweep.metric}")
    best = _record_best(scfg, ok[0], table, concurrency, uri, experiment_id, log)
    return SweepResult(scfg.sweep_dir, scfg.sweep_dir / "best.json", best,
                       [{k: v for k, v in r.items() if k != "result"} for r in rows], table, concurrency)


def _check_sweep_dir(scfg: SweepConfig, resume: bool) -> None:
    """A new sweep needs a fresh directory; a resumed one Tune's saved state (local storage only)."""
    sweep_dir = scfg.sweep_dir
    if "://" in scfg.sweep.storage_path:
        return
    if resume and not (sweep_dir / "tuner.pkl").exists():
        raise CheckpointError(f"{sweep_dir}: no sweep to resume (tuner.pkl missing)")
    if not resume and sweep_dir.exists():
        raise CheckpointError(f"{sweep_dir}: sweep directory exists; use --resume, or --set sweep.name=NEW")


def _tuner(scfg: SweepConfig, resume: bool, uri: str | None, experiment_id: str | None,
           log: Callable[[str], None]) -> Any:
    """The Tuner over the sweep's trainable and search space (restored from its directory on resume)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    exp, sw, sweep_dir = scfg.experiment, scfg.sweep, scfg.sweep_dir
    algo_class, space = build_param_space(scfg)
    if resume:
        log(f"resuming sweep {sweep_dir}")
        return tune.Tuner.restore(str(sweep_dir), trainable=algo_class, resume_unfinished=True,
                                  resume_errored=True, param_space=space)
    # ASHA reads its own metric (every iteration); the winner is ranked by sweep.metric per checkpoint, here
    # after the sweep, so Tune itself is given no metric (it would insist on one in every result).
    scheduler = (ASHAScheduler(time_attr="training_iteration", metric=sw.asha_metric, mode=sw.mode,
                               max_t=sw.max_t or exp.run.iterations, grace_period=sw.grace_period,
                               reduction_factor=sw.reduction_factor)
                 if sw.scheduler == "asha" else FIFOScheduler())
    local = "://" not in sw.storage_path
    log(f"sweep {sweep_dir}  ({len(sw.search_space)} swept keys, {sw.scheduler}"
        + (f" on {sw.asha_metric}" if sw.scheduler == "asha" else "")
        + f", checkpoints ranked by {sw.metric}, {sw.max_concurrent_trials} concurrent; "
        f"MLflow {redact(uri) if uri else 'off'})")
    return tune.Tuner(
        algo_class,
        param_space=space,
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=sw.num_samples,
                                    max_concurrent_trials=sw.max_concurrent_trials,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=scfg.name,
            storage_path=str(sweep_dir.parent) if local else sw.storage_path,
            stop={"training_iteration": exp.run.iterations},
            failure_config=tune.FailureConfig(max_failures=sw.max_failures),
            checkpoint_config=tune.CheckpointConfig(
                checkpoint_frequency=sw.checkpoint_every or exp.run.checkpoint_every, checkpoint_at_end=True),
            callbacks=[*([trial_tracking_callback(scfg, uri, experiment_id, log)] if uri else []),
                       progress_callback(scfg, log)],
            verbose=0,
        ),
    )


def _saved_trials(scfg: SweepConfig, grid: Any) -> list[Any]:
    """Trial statuses as Tune saved them (the live objects fit() returns after Ctrl-C do not say PENDING)."""
    from ray.tune import ExperimentAnalysis

    sw = scfg.sweep
    where = str(scfg.sweep_dir) if "://" not in sw.storage_path else f"{sw.storage_path.rstrip('/')}/{scfg.name}"
    try:
        return ExperimentAnalysis(where).trials
    except Exception:  # noqa: BLE001 — fall back to what fit() returned
        return getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []


def _log_sweep(table: str, rows: list[dict[str, Any]], trials: list[Any], concurrency: int,
               log: Callable[[str], None]) -> None:
    log(table)
    log(f"max trials running at once (from trials' set-up and end times): {concurrency}")
    log(f"trials per Ray node: {placement_summary(rows)}")
    retried = {t.trial_id: t.num_failures for t in trials if getattr(t, "num_failures", 0)}
    log("trial errors retried: " + (", ".join(f"{k} x{v}" for k, v in sorted(retried.items())) or "none"))


def _record_best(scfg: SweepConfig, best_row: dict[str, Any], table: str, concurrency: int, uri: str | None,
                 experiment_id: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """``best_checkpoint/``, ``best.json`` and ``trials.txt`` in the sweep directory, and (tracked) a
    ``<sweep>-best`` MLflow run through the same outage-safe RunLogger as every other run."""
    sw, sweep_dir, r = scfg.sweep, scfg.sweep_dir, scfg.experiment.run
    best_ckpt, trial_ckpt = _materialise_best(scfg, best_row, sweep_dir / "best_checkpoint")
    best = {"checkpoint": str(best_ckpt), "trial_checkpoint": str(trial_ckpt), "metric": sw.metric,
            "mode": sw.mode, "value": best_row["value"], "iteration": best_row["best_iteration"],
            "trial": best_row["trial"], "trial_dir": best_row["trial_dir"], "config": best_row["params"],
            "validation_episodes": r.checkpoint_episodes, "validation_seed": r.validation_seed,
            "asha_metric": sw.asha_metric if sw.scheduler == "asha" else None}
    best_json = sweep_dir / "best.json"
    atomic_write_text(best_json, json.dumps(best, indent=2))
    atomic_write_text(sweep_dir / "trials.txt", table + "\n")
    if uri is not None and experiment_id is not None:
        with RunLogger.start(uri, experiment_id, sweep_dir, log, run_name=f"{scfg.name}-best") as tracker:
            tracker.set_tags({"sweep": scfg.name, "sweep_dir": str(sweep_dir), "best_trial": best_row["trial"],
                              "checkpoint_path": str(best_ckpt)})
            tracker.log_params({f"best.{k}": str(v)[:500] for k, v in best_row["params"].items()})
            tracker.log_metrics({"best_value": best_row["value"], "best_iteration": best_row["best_iteration"],
                                 "max_concurrent_trials_observed": concurrency})
            tracker.log_artifact(best_json)
            tracker.log_artifact(sweep_dir / "trials.txt")
    return best  # the CLI prints the winner (once)


def best_lines(res: SweepResult) -> list[str]:
    """The winner, as the CLI prints it: trial, metric value and iteration, the checkpoint, best.json."""
    b = res.best
    how = (f" (greedy return over {b['validation_episodes']} validation episodes, seeds {b['validation_seed']}..)"
           if b["metric"] == VALIDATION_METRIC else "")
    return [f"best trial {b['trial']}: {b['metric']}={b['value']:.4g} at iteration {b['iteration']}{how}",
            f"best checkpoint: {b['checkpoint']}  (copy of {b['trial_checkpoint']})",
            f"best.json: {res.best_json}"]
