"""``rllib-rec train``: local single-node DQN training with MLflow tracking, checkpoints and resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from rllib_rec.config import (
    ExperimentConfig,
    config_from_dict,
    load_config,
    merge_dicts,
    parse_overrides,
    read_yaml,
)
from rllib_rec.config.schema import ConfigError, flatten
from rllib_rec.training.checkpoints import (
    BEST_FILE,
    CheckpointError,
    atomic_write_text,
    checkpoint_config,
    checkpoint_meta,
    latest_checkpoint,
    load_module,
    remove_partial_checkpoints,
    selected_checkpoint,
    write_checkpoint,
)
from rllib_rec.training.tracking import (
    RunLogger,
    TrackingError,
    connect,
    local_store_hint,
    redact,
    redact_values,
    resolve_tracking_uri,
)

__all__ = ["TrainResult", "train", "iteration_metrics", "resolve_resume"]

# Sections that define what a checkpoint *is*; a resumed run must not change them.
_FROZEN_SECTIONS = ("env", "model", "dqn")


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


def _get(d: dict, *path: str, default: float = math.nan) -> float:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    try:
        return float(d)
    except (TypeError, ValueError):
        return default


def epsilon_at(cfg: ExperimentConfig, step: float) -> float:
    d = cfg.dqn
    frac = min(1.0, max(0.0, step / d.epsilon_timesteps))
    return d.epsilon_start + frac * (d.epsilon_end - d.epsilon_start)


def iteration_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The few numbers worth a progress line and an MLflow metric, from RLlib's result dict."""
    return {
        "env_steps": _get(result, "env_runners", "num_env_steps_sampled_lifetime"),
        "episode_return_mean": _get(result, "env_runners", "episode_return_mean"),
        "episode_len_mean": _get(result, "env_runners", "episode_len_mean"),
        "qf_loss": _get(result, "learners", "default_policy", "qf_loss"),
        "qf_mean": _get(result, "learners", "default_policy", "qf_mean"),
        "sample_weight_max": _get(result, "learners", "default_policy", "sample_weight_max"),
        "trained_steps": _get(result, "learners", "__all_modules__", "num_env_steps_trained_lifetime"),
        # Env steps that raised (or hit run.env_step_timeout_s) and were survived by recreating the env.
        "env_step_failures": _get(result, "env_runners", "num_env_step_failures", default=0.0),
    }


def env_runner_restarts(algo: Any) -> float:
    """Remote EnvRunner actors recreated after dying (0 without remote runners)."""
    group = getattr(algo, "env_runner_group", None)
    return float(group.num_remote_worker_restarts()) if group is not None else 0.0


def resolve_resume(resume: str, output_dir: str) -> Path:
    """``--resume`` takes a run directory or a run name under ``run.output_dir``."""
    for cand in (Path(resume), Path(output_dir) / resume):
        if (cand / "experiment.yaml").is_file():
            return cand.resolve()
    raise CheckpointError(f"--resume {resume}: no run directory (looked for {resume}/experiment.yaml "
                          f"and {Path(output_dir) / resume}/experiment.yaml)")


def _check_same_model(saved: ExperimentConfig, given: ExperimentConfig, source: str) -> None:
    a, b = flatten(saved.to_dict()), flatten(given.to_dict())
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in _FROZEN_SECTIONS and a.get(key) != b.get(key):
            raise ConfigError(key, f"does not match the checkpoint's config ({a.get(key)!r} != {b.get(key)!r}); "
                              "env, model and dqn cannot change on resume", source)


def _redacted(cfg: ExperimentConfig, log: Callable[[str], None]) -> ExperimentConfig:
    """The config with credentials in any string value hidden: it is recorded in the run directory,
    checkpoints and MLflow, none of which may hold a secret (no config value needs one to work)."""
    clean, keys = redact_values(cfg.to_dict())
    if not keys:
        return cfg
    log(f"config value(s) {', '.join(keys)} carry credentials; redacted wherever this run records them")
    return config_from_dict(clean, "<redacted config>")


def _new_run_dir(cfg: ExperimentConfig) -> Path:
    base = Path(cfg.run.output_dir) / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():  # never reuse (and so never overwrite) a run directory
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir.resolve()


def _plot_learning_curve(history: list[dict[str, float]], baselines: dict[str, dict[str, float]], path: Path,
                         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history and "replayed_steps" in history[0]:  # offline: no training episodes, so the loss curve
        ax.plot([h["replayed_steps"] for h in history], [h["qf_loss"] for h in history], marker="o",
                label="TD loss (offline, logged transitions)")
        ax.set_xlabel("replayed steps (updates x batch / replay ratio)")
        ax.set_ylabel("TD loss")
        legend_loc = "upper right"
    else:
        xs = [h["env_steps"] for h in history]
        ax.plot(xs, [h["episode_return_mean"] for h in history], marker="o", label="agent (training episodes)")
        for name, style in (("random", ":"), ("myopic_oracle", "--"), ("planning_oracle", "-.")):
            if name in baselines:
                ax.axhline(baselines[name]["return_mean"], linestyle=style, color="gray", label=name)
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean episode return")
        legend_loc = "lower right"
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

def train(
    config_path: str | None,
    overrides: Sequence[str] = (),
    resume: str | None = None,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
    offline: str | None = None,
    track: bool = True,
) -> TrainResult:
    """Train (or resume) a run; returns where everything went. Raises ConfigError/CheckpointError/
    TrackingError/LogSchemaError for user errors, before any training work where possible.

    ``offline``: a Parquet log (``rllib_rec.offpolicy.logs``) to learn from instead of the simulator (see
    ``rllib_rec.training.offline``); a resumed offline run keeps using the log it started with.

    ``track=False`` (``--no-tracking``): no MLflow at all; metrics.jsonl, checkpoints and the evaluation are
    still written. An MLflow outage *during* a run never stops it (see ``tracking.RunLogger``)."""
    from rllib_rec.agent.runtime import use_torch_keras_backend

    use_torch_keras_backend()

    # 1. Config (and, on resume, the run it continues) -------------------------------------------
    state: dict[str, Any] = {}
    start_ckpt: Path | None = None
    if resume:
        probe = _redacted(load_config(config_path, overrides), lambda s: None) if config_path else None
        run_dir = resolve_resume(resume, probe.run.output_dir if probe else "runs")
        saved = config_from_dict(read_yaml(run_dir / "experiment.yaml"), str(run_dir / "experiment.yaml"))
        cfg = _redacted(config_from_dict(merge_dicts(saved.to_dict(), parse_overrides(overrides)),
                                         f"{run_dir}/experiment.yaml + --set"), log)
        if probe is not None:
            _check_same_model(saved, probe, str(config_path))
        _check_same_model(saved, cfg, "--set")
        for partial in remove_partial_checkpoints(run_dir):
            log(f"removed partial checkpoint {partial.name} (the previous process died while writing it)")
        start_ckpt = latest_checkpoint(run_dir)
        if start_ckpt is None:
            raise CheckpointError(f"{run_dir}: no complete checkpoint to resume from")
        _check_same_model(saved, checkpoint_config(start_ckpt), str(start_ckpt))
        load_module(start_ckpt)  # a corrupt checkpoint is refused here, before any tracking or Ray work
        state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").is_file() else {}
        state.setdefault("mlflow_run_id", checkpoint_meta(start_ckpt).get("mlflow_run_id"))
    else:
        cfg = _redacted(load_config(config_path, overrides), log)
        run_dir = _new_run_dir(cfg)
    if resume and state.get("offline_logs"):
        if offline and Path(offline).resolve() != Path(state["offline_logs"]):
            raise ConfigError("--offline", f"run {run_dir} was trained from {state['offline_logs']}, not {offline}")
        offline = state["offline_logs"]
    elif resume and offline:
        raise ConfigError("--offline", f"run {run_dir} was trained online; it cannot resume offline")
    data = None
    if offline:
        from rllib_rec.training.offline import load_offline_data

        data = load_offline_data(offline, cfg)  # validated before any tracking or training work

    # 2. Tracking: fail before any training work if the store is unusable -------------------------
    uri = resolve_tracking_uri(cfg.run.output_dir, tracking_uri) if track else None
    experiment_id = connect(uri, cfg.run.experiment, cfg.run.output_dir) if uri else None

    # 3. Algorithm ----------------------------------------------------------------------------------
    from rllib_rec.agent.algo import build_algo_config
    from rllib_rec.agent.runtime import init_ray, set_torch_threads

    set_torch_threads(cfg.run.torch_threads)
    init_ray()
    algo = build_algo_config(cfg).build_algo()
    first_iter = 1
    if start_ckpt is not None:
        try:
            algo.restore_from_path(str(start_ckpt.resolve()))
        except Exception as e:  # noqa: BLE001
            algo.stop()
            raise CheckpointError(f"{start_ckpt}: unreadable checkpoint ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]})") from None
        first_iter = int(checkpoint_meta(start_ckpt)["iteration"]) + 1
    if data is not None:
        algo.local_replay_buffer.add(data.episodes)
        log(f"offline: {data.n_transitions:,} logged transitions from {len(data.episodes):,} episodes of "
            f"{', '.join(data.policy_ids)} in the replay buffer ({data.path})")
    if start_ckpt is None:
        run_dir.mkdir(parents=True)
        atomic_write_text(run_dir / "experiment.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if config_path:  # redacted: a comment or value in the file may hold a credentialed URL
            source_text = Path(config_path).read_text(encoding="utf-8")
            atomic_write_text(run_dir / "source_config.yaml", redact(source_text))

    history: list[dict[str, float]] = []
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        history = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["iteration"] < first_iter]
        # Iterations after the checkpoint we resume from are redone: drop their rows (a killed run logged them).
        atomic_write_text(metrics_file, "".join(json.dumps(h) + "\n" for h in history))

    last_ckpt = start_ckpt
    # A resumed run continues the same MLflow run; without tracking the id is kept for a later tracked resume.
    try:
        tracker = (RunLogger.start(uri, experiment_id, run_dir, log, run_id=state.get("mlflow_run_id"),
                                   run_name=run_dir.name) if uri else
                   RunLogger.disabled(run_dir, log, run_id=state.get("mlflow_run_id")))
    except TrackingError:
        algo.stop()
        raise
    with tracker:
        run_id = tracker.run_id
        if not state.get("mlflow_run_id"):
            tracker.log_params({k: str(v)[:500] for k, v in cfg.flat_params().items()})
            tracker.set_tags({"run_dir": str(run_dir), "config_hash": cfg.config_hash(),
                              "overrides": " ".join(overrides)[:5000], "mode": "offline" if data else "online"})
            if data is not None:
                tracker.set_tags({"offline_logs": str(data.path.resolve())})
            tracker.log_artifact(run_dir / "experiment.yaml")
            if config_path:
                tracker.log_artifact(run_dir / "source_config.yaml", name=Path(config_path).name)
        else:
            tracker.set_tags({"resumed_from": str(start_ckpt)})
        state = {"mlflow_run_id": run_id, "iteration": first_iter - 1,
                 "last_checkpoint": str(last_ckpt) if last_ckpt else None,
                 "offline_logs": str(data.path.resolve()) if data else None,
                 "validation": state.get("validation", {})}
        atomic_write_text(run_dir / "state.json", json.dumps(state, indent=2))
        log(f"run {run_dir}  "
            + (f"(MLflow run {run_id} at {redact(uri)})" if uri else "(MLflow off: --no-tracking)"))
        if first_iter > 1:
            log(f"resuming from {start_ckpt} at iteration {first_iter}")

        t_start = time.perf_counter()
        prev_steps = history[-1]["env_steps"] if history else 0.0
        replayed = history[-1].get("replayed_steps", 0.0) if history else 0.0
        if data is not None:
            from rllib_rec.training.offline import offline_iteration, updates_per_iteration

            n_updates = updates_per_iteration(cfg)
        for it in range(first_iter, cfg.run.iterations + 1):
            t0 = time.perf_counter()
            if data is None:
                m = {**iteration_metrics(algo.train()), "env_runner_restarts": env_runner_restarts(algo)}
            else:
                m = {"env_steps": 0.0, **offline_iteration(algo, cfg, n_updates, replayed)}
                replayed = m["replayed_steps"]
            dt = time.perf_counter() - t0
            m.update(iteration=it, seconds=dt, epsilon=epsilon_at(cfg, m["env_steps"]) if data is None else 0.0,
                     env_steps_per_s=(m["env_steps"] - prev_steps) / dt if dt > 0 else math.nan)
            prev_steps = m["env_steps"]
            history.append(m)
            with metrics_file.open("a") as f:
                f.write(json.dumps(m) + "\n")
            tracker.log_metrics({k: v for k, v in m.items() if k != "iteration" and math.isfinite(v)},
                                step=int(m["env_steps"] if data is None else m["replayed_steps"]))
            tracker.flush()  # once per iteration: retry what an MLflow outage left queued
            saved_note = ""
            if it % cfg.run.checkpoint_every == 0 or it == cfg.run.iterations:
                last_ckpt = write_checkpoint(algo, run_dir / "checkpoints", it, cfg,
                                             {"mlflow_run_id": run_id, "env_steps": m["env_steps"],
                                              "config_hash": cfg.config_hash()})
                saved_note = f"  ckpt {last_ckpt.name}"
                if cfg.run.validation_episodes:
                    tv = time.perf_counter()
                    v = _validate(last_ckpt, cfg, run_dir, state["validation"])
                    tracker.log_metrics({"validation_return": v}, step=int(m["env_steps"] if data is None
                                                                              else m["replayed_steps"]))
                    saved_note += f"  validation {v:.2f} ({time.perf_counter() - tv:.1f}s)"
                state.update(iteration=it, last_checkpoint=str(last_ckpt))
                atomic_write_text(run_dir / "state.json", json.dumps(state, indent=2))
                tracker.set_tags({"checkpoint_path": str(last_ckpt)})
            if data is None:
                faults = m["env_step_failures"] + m["env_runner_restarts"]
                fault_note = (f"  env failures {m['env_step_failures']:.0f} runner restarts "
                              f"{m['env_runner_restarts']:.0f}" if faults else "")
                log(f"iter {it:>3}/{cfg.run.iterations}  steps {m['env_steps']:>8,.0f}  "
                    f"return {m['episode_return_mean']:6.2f}  loss {m['qf_loss']:7.4f}  "
                    f"eps {m['epsilon']:.2f}  {m['env_steps_per_s']:6,.0f} steps/s{fault_note}{saved_note}")
            else:
                log(f"iter {it:>3}/{cfg.run.iterations}  offline updates {n_updates}  replayed "
                    f"{m['replayed_steps']:>9,.0f}  loss {m['qf_loss']:7.4f}  Q {m['qf_mean']:6.2f}  "
                    f"{n_updates / dt if dt > 0 else math.nan:6,.1f} updates/s{saved_note}")
        algo.stop()
        if history and history[-1].get("env_step_failures", 0) + history[-1].get("env_runner_restarts", 0) > 0:
            log(f"faults survived: {history[-1]['env_step_failures']:.0f} env step failures (env recreated), "
                f"{history[-1]['env_runner_restarts']:.0f} env runner restarts")
        if last_ckpt is None:
            raise CheckpointError(f"{run_dir}: nothing to do (already at iteration {first_iter - 1})")

        # 4. Evaluation beside the baselines, learning curve, final records -------------------------
        from rllib_rec.tables import policy_table
        from rllib_rec.training.evaluate import GREEDY_NAME, evaluation_table

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
            from rllib_rec.training.offline import LOGGING_POLICY_NAME, logging_policy_stats

            evaluation[LOGGING_POLICY_NAME] = logging_policy_stats(data.arrays).summary()
        table = policy_table(evaluation)
        log(table)
        (run_dir / "evaluation.txt").write_text(table + "\n")
        (run_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        _plot_learning_curve(history, evaluation, run_dir / "learning_curve.png",
                             f"{cfg.name} ({cfg.env.preset})")
        for name, s in evaluation.items():
            key = {GREEDY_NAME: "agent", "logging policy (logs)": "logging_policy"}.get(name, name)
            tracker.log_metrics({f"eval/{key}/return_mean": s["return_mean"],
                                 f"eval/{key}/return_ci95": s["return_ci95"]}, step=0)
        for name in ("evaluation.txt", "evaluation.json", "learning_curve.png", "metrics.jsonl"):
            tracker.log_artifact(run_dir / name)
        tracker.set_tags({"checkpoint_path": str(last_ckpt)})
        log(f"wall time {time.perf_counter() - t_start:.0f}s")
        tracker.close()  # last retry; what is still unsent goes to <run_dir>/mlflow_unsent.jsonl
    return TrainResult(run_dir, final_ckpt, run_id, uri, cfg.run.iterations, evaluation,
                       tracker.unsent_file, tracker.unsent_records, last_ckpt)


def _validate(ckpt: Path, cfg: ExperimentConfig, run_dir: Path, scores: dict[str, float]) -> float:
    """Greedy return of ``ckpt`` on the validation seeds; records it in ``scores`` (kept in state.json) and
    rewrites ``best.json`` (atomically) when it is the best so far. Same seeds for every checkpoint, so
    checkpoints are compared on the same users."""
    from rllib_rec.training.evaluate import evaluate_module

    r = cfg.run
    value = evaluate_module(load_module(ckpt), cfg.env, r.validation_episodes, r.validation_seed).summary()["return_mean"]
    scores[ckpt.name] = value
    live = {k: v for k, v in scores.items() if (run_dir / "checkpoints" / k).is_dir()}
    best = max(live, key=lambda k: (live[k], k))
    if best == ckpt.name:
        atomic_write_text(run_dir / BEST_FILE, json.dumps(
            {"checkpoint": f"checkpoints/{best}", "metric": "validation_return_mean", "value": value,
             "iteration": checkpoint_meta(ckpt)["iteration"], "validation_episodes": r.validation_episodes,
             "validation_seed": r.validation_seed}, indent=2))
    return value


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

