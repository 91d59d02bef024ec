"""Tune callbacks of a sweep: a progress line per trial result, and an MLflow run per trial written through
:class:`~rllib_rec.training.tracking.RunLogger`'s outage queue."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rllib_rec.config.schema import flatten
from rllib_rec.config.sweep import TRAINING_METRIC, SweepConfig
from rllib_rec.console import progress, ticking
from rllib_rec.training.online import iteration_metrics
from rllib_rec.training.tracking import RunLogger, TrackingError
from rllib_rec.tuning.search_space import trial_experiment_config

__all__ = ["trial_dirname", "trial_iterations", "progress_callback", "trial_tracking_callback", "metric_value", "fmt"]


def trial_dirname(trial: Any) -> str:
    """Short trial directories (Tune's default embeds every sampled value in the name)."""
    return f"trial_{trial.trial_id}"

def trial_iterations(scfg: SweepConfig) -> int:
    """A trial's full length in iterations (ASHA's max_t where set); a trial that ran fewer was stopped early."""
    sw = scfg.sweep
    return sw.max_t if sw.scheduler == "asha" and sw.max_t else scfg.experiment.run.iterations


def progress_callback(scfg: SweepConfig, log: Callable[[str], None]) -> Any:
    """One line per trial result instead of Tune's verbose tables (which dump the whole RLlib config), and a
    progress bar over all trial iterations (an upper bound: ASHA stops some trials early), ETA included."""
    from ray import tune

    sw = scfg.sweep
    last = trial_iterations(scfg)
    shown = list(dict.fromkeys((sw.asha_metric if sw.scheduler == "asha" else TRAINING_METRIC, sw.metric)))

    class _Progress(tune.Callback):
        def __init__(self) -> None:
            self._bar: Any = None
            self._ticks: Any = None

        def __getstate__(self) -> dict[str, Any]:
            return {"_bar": None, "_ticks": None}  # Tune pickles its callbacks; a live bar is not state

        def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: int | None = None,
                  **info: Any) -> None:
            trials = total_num_samples or sw.num_samples
            self._bar = progress(trials * last, "sweep", unit="trial-iter")
            self._ticks = ticking(self._bar)
            self._ticks.__enter__()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            values = "  ".join(f"{m}={fmt(metric_value(result, m))}" for m in shown
                               if not math.isnan(metric_value(result, m)))
            log(f"  {trial.trial_id}  iter {result.get('training_iteration')}  {values}")
            if self._bar is not None:
                self._bar.update(1)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            done = int((trial.last_result or {}).get("training_iteration", 0) or 0)
            log(f"  {trial.trial_id}  " + ("finished" if done >= last else
                                          f"stopped early by the scheduler after {done} of {last} iterations"))

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            if self._ticks is not None:
                self._ticks.__exit__(None, None, None)
            if self._bar is not None:
                self._bar.close()
            self._bar = self._ticks = None

    return _Progress()


def trial_tracking_callback(scfg: SweepConfig, uri: str, experiment_id: str, log: Callable[[str], None]) -> Any:
    """A Tune callback giving each trial an MLflow run written through :class:`~rllib_rec.training.tracking.RunLogger`.

    Instead of Tune's ``MLflowLoggerCallback``, which logs the whole RLlib config dict as params (hundreds,
    unredacted) and loses any write the store refuses: here a trial run gets what a ``train`` run gets (the
    trial's flattened experiment config, redacted, and the per-iteration metrics of ``iteration_metrics``
    at the env-step count, plus the sweep metric), and a store outage is reported once, queued, retried
    after every result and, if still unsent when the trial ends, written to the trial directory's
    ``mlflow_unsent.jsonl``."""
    from ray import tune

    metric = scfg.sweep.metric

    class _TrialRuns(tune.Callback):
        def __init__(self) -> None:
            self._runs: dict[str, RunLogger] = {}

        def __getstate__(self) -> dict[str, Any]:
            return {"_runs": {}}  # Tune pickles its callbacks; open MLflow clients are not state to keep

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if trial.trial_id in self._runs:  # a retried trial keeps its run
                return
            run_dir = Path(trial.local_path or scfg.sweep_dir / trial_dirname(trial))
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

def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
