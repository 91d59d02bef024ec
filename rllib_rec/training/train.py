"""``rllib-rec train``: a local DQN run, online (the simulator) or offline (a log), tracked in MLflow.

Reads top to bottom as the run does: plan the run (config, run directory, resume; everything a user can
get wrong is refused here, before Ray starts), connect the tracking store, build the algorithm, iterate
(:class:`~rllib_rec.training.online.OnlineLoop` or :class:`~rllib_rec.training.offline.OfflineLoop`),
checkpoint and validate, then evaluate the chosen checkpoint beside the baselines.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rllib_rec.agent.runtime import (
    check_run_resources,
    init_ray,
    set_torch_threads,
    startup_objects_frozen,
    use_torch_keras_backend,
)
from rllib_rec.config import ExperimentConfig
from rllib_rec.console import progress, ticking
from rllib_rec.errors import CheckpointError
from rllib_rec.tables import policy_table
from rllib_rec.training.checkpoints import (
    BEST_FILE,
    atomic_write_text,
    checkpoint_meta,
    load_module,
    restore_network,
    selected_checkpoint,
    write_checkpoint,
)
from rllib_rec.training.evaluate import GREEDY_NAME, evaluation_table, learner_greedy_return
from rllib_rec.training.offline import (
    LOGGING_POLICY_NAME,
    OfflineData,
    OfflineLoop,
    load_offline_data,
    logging_policy_stats,
)
from rllib_rec.training.online import OnlineLoop, iteration_metrics
from rllib_rec.training.plots import plot_learning_curve
from rllib_rec.training.run_dir import (
    RunPlan,
    append_metrics,
    plan_run,
    read_history,
    save_state,
    write_run_files,
)
from rllib_rec.training.tracking import RunLogger, connect, local_store_hint, redact, resolve_tracking_uri

__all__ = ["TrainResult", "train", "iteration_metrics", "summary_lines"]


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    mlflow_run_id: str | None
    tracking_uri: str | None  # None: trained with track=False (--no-tracking)
    iterations: int
    evaluation: dict[str, dict[str, float]]
    unsent_file: Path | None = None  # MLflow records an outage left unsent (<run_dir>/mlflow_unsent.jsonl)
    unsent_records: int = 0
    last_checkpoint: Path | None = None  # differs from `checkpoint` when run.validation_episodes selected another


def train(
    config_path: str | None,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
    offline: str | None = None,
    track: bool = True,
    init_from: str | None = None,
) -> TrainResult:
    """Train (or resume) a run; returns where everything went. User errors (``RllibRecError``) are raised
    before any training work where possible.

    ``offline``: a Parquet log (``rllib_rec.offpolicy.logs``) to learn from instead of the simulator; a
    resumed offline run keeps using the log it started with. ``track=False`` (``--no-tracking``): no MLflow
    at all; metrics.jsonl, checkpoints and the evaluation are still written. An MLflow outage *during* a run
    never stops it (see ``tracking.RunLogger``). ``init_from``: a checkpoint or run directory whose network (same
    model and shop) a new run starts from, e.g. an offline run's to fine-tune online; the optimiser, replay buffer
    and exploration schedule start fresh."""
    t_start = time.perf_counter()
    use_torch_keras_backend()
    plan = plan_run(config_path, overrides, resume, offline, log, init_from)
    cfg = plan.cfg
    data = load_offline_data(plan.offline_logs, cfg) if plan.offline_logs else None
    uri = resolve_tracking_uri(cfg.run.output_dir, tracking_uri) if track else None
    experiment_id = connect(uri, cfg.run.experiment, cfg.run.output_dir) if uri else None  # fail before Ray

    algo = _build_algo(plan)
    try:
        write_run_files(plan, config_path)
        history = read_history(plan.run_dir, plan.first_iteration)
        loop = OnlineLoop(algo, cfg) if data is None else OfflineLoop(
            algo, cfg, data, history[-1].get("replayed_steps", 0.0) if history else 0.0, log)
        # A resumed run continues its MLflow run; without tracking the id is kept for a later tracked resume.
        tracker = (RunLogger.start(uri, experiment_id, plan.run_dir, log, run_id=plan.state.get("mlflow_run_id"),
                                   run_name=plan.run_dir.name) if uri else
                   RunLogger.disabled(plan.run_dir, log, run_id=plan.state.get("mlflow_run_id")))
    except BaseException:
        algo.stop()
        raise
    with tracker:
        state = _start_records(tracker, plan, config_path, overrides, data, uri, log)
        with startup_objects_frozen():
            last_ckpt = _iterate(algo, loop, plan, history, state, tracker, log)
        algo.stop()
        final_ckpt, evaluation = _finalise(plan, state, history, last_ckpt, data, tracker, log)
        log(f"wall time {time.perf_counter() - t_start:.0f}s (training iterations "
            f"{sum(h['seconds'] for h in history[plan.first_iteration - 1:]):.0f}s)")
        tracker.close()  # last retry; what is still unsent goes to <run_dir>/mlflow_unsent.jsonl
    return TrainResult(plan.run_dir, final_ckpt, tracker.run_id, uri, cfg.run.iterations, evaluation,
                       tracker.unsent_file, tracker.unsent_records, last_ckpt)


def _build_algo(plan: RunPlan) -> Any:
    """Ray, the DQN algorithm of ``plan.cfg`` and, on resume, its restored state (with ``--init-from``, the
    checkpoint's network only)."""
    from rllib_rec.agent.algo import build_algo_config

    set_torch_threads(plan.cfg.run.torch_threads)
    init_ray()
    check_run_resources(plan.cfg)  # seconds, not a silent wait for CPUs that will never come
    algo = build_algo_config(plan.cfg).build_algo()
    ckpt = plan.start_checkpoint or plan.init_checkpoint
    if ckpt is not None:
        try:
            if plan.start_checkpoint is not None:
                algo.restore_from_path(str(ckpt.resolve()))
            else:
                restore_network(algo, ckpt)
        except Exception as e:  # noqa: BLE001
            algo.stop()
            raise CheckpointError(f"{ckpt}: unreadable checkpoint ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]})") from None
    return algo


def _start_records(tracker: RunLogger, plan: RunPlan, config_path: str | None, overrides: Sequence[str],
                   data: OfflineData | None, uri: str | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The run's MLflow params/tags/config files (new runs) and its state.json; returns the state."""
    cfg, run_dir = plan.cfg, plan.run_dir
    if not plan.state.get("mlflow_run_id"):
        tracker.log_params({k: str(v)[:500] for k, v in cfg.flat_params().items()})
        tracker.set_tags({"run_dir": str(run_dir), "config_hash": cfg.config_hash(),
                          "overrides": " ".join(overrides)[:5000], "mode": "offline" if data else "online"})
        if data is not None:
            tracker.set_tags({"offline_logs": str(data.path.resolve())})
        if plan.init_checkpoint is not None:
            tracker.set_tags({"init_from": str(plan.init_checkpoint)})
        tracker.log_artifact(run_dir / "experiment.yaml")
        if config_path:
            tracker.log_artifact(run_dir / "source_config.yaml", name=Path(config_path).name)
    else:
        tracker.set_tags({"resumed_from": str(plan.start_checkpoint)})
    state = {"mlflow_run_id": tracker.run_id, "iteration": plan.first_iteration - 1,
             "last_checkpoint": str(plan.start_checkpoint) if plan.start_checkpoint else None,
             "offline_logs": str(data.path.resolve()) if data else None,
             "init_from": str(plan.init_checkpoint) if plan.init_checkpoint else plan.state.get("init_from"),
             "validation": plan.state.get("validation", {})}
    save_state(run_dir, state)
    log(f"run {run_dir}  "
        + (f"(MLflow run {tracker.run_id} at {redact(uri)})" if uri else "(MLflow off: --no-tracking)"))
    if plan.start_checkpoint is not None:
        log(f"resuming from {plan.start_checkpoint} at iteration {plan.first_iteration}")
    if plan.init_checkpoint is not None:
        log(f"starting from the network of {plan.init_checkpoint} (optimiser, replay buffer and exploration "
            "start fresh)")
    return state


def _iterate(algo: Any, loop: OnlineLoop | OfflineLoop, plan: RunPlan, history: list[dict[str, float]],
             state: dict[str, Any], tracker: RunLogger, log: Callable[[str], None]) -> Path:
    """Run the remaining iterations; record, checkpoint and validate each. Returns the last checkpoint.

    Progress: a bar over iterations (ETA from their pace) whose elapsed time moves during ``algo.train()``
    (``console.ticking``), and one result line per iteration."""
    cfg, run_dir = plan.cfg, plan.run_dir
    last_ckpt = plan.start_checkpoint
    prev_steps = history[-1][loop.step_key] if history else 0.0
    if plan.first_iteration == 1 and isinstance(loop, OnlineLoop) and cfg.dqn.learning_starts:
        log(f"iteration 1 first fills the replay buffer: {cfg.dqn.learning_starts:,} env steps "
            "(dqn.learning_starts) are sampled before the first update")
    remaining = cfg.run.iterations - plan.first_iteration + 1
    with progress(remaining, "train", unit="iter") as bar, ticking(bar):
        for it in range(plan.first_iteration, cfg.run.iterations + 1):
            bar.set_postfix_str(f"iteration {it}/{cfg.run.iterations}", refresh=False)
            t0 = time.perf_counter()
            m = loop.run_iteration()
            dt = time.perf_counter() - t0
            m.update(iteration=it, seconds=dt, rate=(m[loop.step_key] - prev_steps) / dt if dt > 0 else math.nan)
            m["env_steps_per_s"] = m["rate"] if loop.step_key == "env_steps" else math.nan
            prev_steps = m[loop.step_key]
            saved_note = ""
            if it % cfg.run.checkpoint_every == 0 or it == cfg.run.iterations:
                last_ckpt = write_checkpoint(algo, run_dir / "checkpoints", it, cfg,
                                             {"mlflow_run_id": tracker.run_id, "env_steps": m["env_steps"],
                                              "config_hash": cfg.config_hash()})
                saved_note = f"  ckpt {last_ckpt.name}"
                if cfg.run.checkpoint_episodes:
                    tv = time.perf_counter()
                    m["validation_return"] = _validate(algo, last_ckpt, cfg, run_dir, state["validation"])
                    saved_note += f"  greedy {m['validation_return']:.2f} ({time.perf_counter() - tv:.1f}s)"
                state.update(iteration=it, last_checkpoint=str(last_ckpt))
                save_state(run_dir, state)
                tracker.set_tags({"checkpoint_path": str(last_ckpt)})
            history.append(m)
            append_metrics(run_dir, m)
            tracker.log_metrics({k: v for k, v in m.items() if k != "iteration" and math.isfinite(v)},
                                step=int(m[loop.step_key]))
            tracker.flush()  # once per iteration: retry what an MLflow outage left queued
            bar.update(1)
            log(f"iter {it:>3}/{cfg.run.iterations}  {loop.progress(m)}{saved_note}")
    note = loop.closing_note(history[-1]) if history else None
    if note:
        log(note)
    if last_ckpt is None:
        raise CheckpointError(f"{run_dir}: nothing to do (already at iteration {plan.first_iteration - 1})")
    return last_ckpt


def _validate(algo: Any, ckpt: Path, cfg: ExperimentConfig, run_dir: Path, scores: dict[str, float]) -> float:
    """Greedy return of the checkpoint just written (``ckpt``: the algorithm's current weights) on the
    validation seeds, for the learning curve; with ``run.validation_episodes`` it also selects: the score is
    recorded in ``scores`` (kept in state.json) and ``best.json`` rewritten (atomically) when it is the best
    so far. Same seeds for every checkpoint, so checkpoints are compared on the same users."""
    r = cfg.run
    with progress(r.checkpoint_episodes, f"greedy return of {ckpt.name}", unit="episode") as bar:
        value = learner_greedy_return(algo, cfg.env, r.checkpoint_episodes, r.validation_seed, bar=bar)
    if not r.validation_episodes:
        return value
    scores[ckpt.name] = value
    live = {k: v for k, v in scores.items() if (run_dir / "checkpoints" / k).is_dir()}
    best = max(live, key=lambda k: (live[k], k))
    if best == ckpt.name:
        atomic_write_text(run_dir / BEST_FILE, json.dumps(
            {"checkpoint": f"checkpoints/{best}", "metric": "validation_return_mean", "value": value,
             "iteration": checkpoint_meta(ckpt)["iteration"], "validation_episodes": r.validation_episodes,
             "validation_seed": r.validation_seed}, indent=2))
    return value


def _finalise(plan: RunPlan, state: dict[str, Any], history: list[dict[str, float]], last_ckpt: Path,
              data: OfflineData | None, tracker: RunLogger, log: Callable[[str], None]) -> tuple[Path, dict[str, dict[str, float]]]:
    """Evaluate the selected checkpoint beside the baselines; write and log the table, curve and records."""
    cfg, run_dir = plan.cfg, plan.run_dir
    final_ckpt = last_ckpt
    if cfg.run.validation_episodes:
        final_ckpt = selected_checkpoint(run_dir) or last_ckpt
        scores = state["validation"]
        log(f"selected {final_ckpt.name} on validation (greedy return {scores.get(final_ckpt.name, math.nan):.2f} "
            f"over {cfg.run.validation_episodes} episodes, seeds {cfg.run.validation_seed}+; last checkpoint "
            f"{last_ckpt.name}: {scores.get(last_ckpt.name, math.nan):.2f}) -> {run_dir / BEST_FILE}")
        tracker.set_tags({"selected_checkpoint_path": str(final_ckpt)})
        tracker.log_artifact(run_dir / BEST_FILE)
    log(f"evaluating greedy policy ({final_ckpt.name}) on {cfg.run.eval_episodes} held-out episodes ...")
    evaluation = evaluation_table(load_module(final_ckpt), cfg.env, cfg.run.eval_episodes, cfg.run.eval_seed)
    if data is not None:
        evaluation[LOGGING_POLICY_NAME] = logging_policy_stats(data.arrays).summary()
    table = policy_table(evaluation)
    log(table)
    (run_dir / "evaluation.txt").write_text(table + "\n")
    (run_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    plot_learning_curve(history, evaluation, run_dir / "learning_curve.png", f"{cfg.name} ({cfg.env.preset})")
    for name, s in evaluation.items():
        key = {GREEDY_NAME: "agent", LOGGING_POLICY_NAME: "logging_policy"}.get(name, name)
        tracker.log_metrics({f"eval/{key}/return_mean": s["return_mean"],
                             f"eval/{key}/return_ci95": s["return_ci95"]}, step=0)
    for name in ("evaluation.txt", "evaluation.json", "learning_curve.png", "metrics.jsonl"):
        tracker.log_artifact(run_dir / name)
    tracker.set_tags({"checkpoint_path": str(last_ckpt)})
    return final_ckpt, evaluation


def summary_lines(res: TrainResult) -> list[str]:
    lines = [f"run directory : {res.run_dir}", f"checkpoint    : {res.checkpoint}"]
    if res.last_checkpoint is not None and res.last_checkpoint != res.checkpoint:
        lines[-1] += f"  (selected on validation seeds; last: {res.last_checkpoint.name})"
    if res.tracking_uri is None:
        return [*lines, f"MLflow        : off (--no-tracking); metrics in {res.run_dir / 'metrics.jsonl'}"]
    lines.append(f"MLflow        : {redact(res.tracking_uri)}  run {res.mlflow_run_id}")
    if res.unsent_file is not None:
        lines.append(f"MLflow unsent : {res.unsent_records} record(s) the store refused, kept in "
                     f"{res.unsent_file}")
    return [*lines, f"browse        : {local_store_hint(res.tracking_uri)}"]
