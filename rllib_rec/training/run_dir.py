"""A run directory: where a new run goes, what a resumed run continues from, and the files kept in it.

::

    <run.output_dir>/<name>-<time>/
      experiment.yaml      resolved config (redacted)        source_config.yaml   the file given (redacted)
      state.json           MLflow run id, iteration, last checkpoint, offline log, validation scores
      metrics.jsonl        one line per iteration             checkpoints/iter_NNNNNN/  (training.checkpoints)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from rllib_rec.config.schema import flatten
from rllib_rec.errors import CheckpointError, ConfigError
from rllib_rec.training.checkpoints import (
    atomic_write_text,
    checkpoint_config,
    checkpoint_meta,
    latest_checkpoint,
    load_module,
    remove_partial_checkpoints,
    resolve_checkpoint,
)
from rllib_rec.training.tracking import redact, redact_values

__all__ = ["RunPlan", "plan_run", "resolve_resume", "write_run_files", "read_history", "save_state"]

# Sections that define what a checkpoint *is*; a resumed run must not change them.
_FROZEN_SECTIONS = ("env", "model", "dqn")
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.json"


@dataclass
class RunPlan:
    """What a ``train`` call will do: the config, the run directory, and where it starts from."""

    cfg: ExperimentConfig
    run_dir: Path
    start_checkpoint: Path | None = None  # None: a new run
    state: dict[str, Any] = field(default_factory=dict)  # state.json of the run resumed
    offline_logs: str | None = None
    init_checkpoint: Path | None = None  # a new run that starts from this checkpoint's network weights

    @property
    def first_iteration(self) -> int:
        return 1 if self.start_checkpoint is None else int(checkpoint_meta(self.start_checkpoint)["iteration"]) + 1


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
    root = Path(cfg.run.output_dir).resolve()
    base = root / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = base, 1
    while run_dir.exists():  # never reuse (and so never overwrite) a run directory
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir = run_dir.resolve()
    if run_dir.parent != root:  # `name` is validated to be a plain file name; this is the belt to those braces
        raise ConfigError("name", f"run directory {run_dir} would not be a child of run.output_dir {root}")
    return run_dir


def _plan_resume(resume: str, config_path: str | None, overrides: Sequence[str],
                 log: Callable[[str], None]) -> RunPlan:
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
    start = latest_checkpoint(run_dir)
    if start is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint to resume from")
    _check_same_model(saved, checkpoint_config(start), str(start))
    load_module(start)  # a corrupt checkpoint is refused here, before any tracking or Ray work
    meta = checkpoint_meta(start)
    done = int(meta["iteration"])
    if done >= cfg.run.iterations and (run_dir / "evaluation.json").is_file():
        raise CheckpointError(f"{run_dir}: complete ({done} iterations trained and evaluated), nothing to resume; "
                              f"to train on, raise run.iterations (e.g. --set run.iterations={done + 10})")
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).is_file() else {}
    state.setdefault("mlflow_run_id", meta.get("mlflow_run_id"))
    return RunPlan(cfg, run_dir, start, state)


def _check_same_network(ckpt: Path, cfg: ExperimentConfig) -> None:
    """``--init-from``: the checkpoint's Q-network has this config's architecture and shop (catalog, K,
    history), so every weight fits and every item id means the same item; anything else may differ."""
    from rllib_rec.agent.spec import QNetSpec

    def fields(config: ExperimentConfig) -> dict[str, Any]:  # the spec, its catalog key by key
        spec = QNetSpec.from_experiment(config).to_dict()
        catalog = spec.pop("catalog")
        return {**spec, **{f"catalog.{k}": v for k, v in catalog.items()}}

    theirs, ours = fields(checkpoint_config(ckpt)), fields(cfg)
    for key, value in ours.items():
        if theirs[key] != value:
            raise ConfigError("--init-from", f"{ckpt}: its network differs from this config's in {key} "
                              f"({theirs[key]!r} in the checkpoint, {value!r} here); the model section and the "
                              "shop's catalog, n_candidates and history_length must match")


def _plan_init(init_from: str, cfg: ExperimentConfig) -> Path:
    """The checkpoint a new run takes its starting weights from, checked before any Ray work."""
    ckpt = resolve_checkpoint(init_from)
    _check_same_network(ckpt, cfg)
    load_module(ckpt)  # a corrupt checkpoint is refused here, before any tracking or Ray work
    return ckpt


def _offline_source(plan: RunPlan, offline: str | None) -> str | None:
    """The log a run learns from: ``--offline``, or on resume the one it started with (which must agree)."""
    if plan.start_checkpoint is None:
        return offline
    if plan.state.get("offline_logs"):
        if offline and Path(offline).resolve() != Path(plan.state["offline_logs"]):
            raise ConfigError("--offline", f"run {plan.run_dir} was trained from {plan.state['offline_logs']}, "
                              f"not {offline}")
        return plan.state["offline_logs"]
    if offline:
        raise ConfigError("--offline", f"run {plan.run_dir} was trained online; it cannot resume offline")
    return None


def plan_run(config_path: str | None, overrides: Sequence[str], resume: str | None, offline: str | None,
             log: Callable[[str], None], init_from: str | None = None) -> RunPlan:
    """Validate everything about a new or resumed run before any tracking, Ray or training work."""
    if resume and init_from:
        raise ConfigError("--init-from", "starts a new run from a checkpoint's weights; --resume continues a run "
                          "(give one of them)")
    if resume:
        plan = _plan_resume(resume, config_path, overrides, log)
    else:
        cfg = _redacted(load_config(config_path, overrides), log)
        plan = RunPlan(cfg, _new_run_dir(cfg), init_checkpoint=_plan_init(init_from, cfg) if init_from else None)
    plan.offline_logs = _offline_source(plan, offline)
    return plan


def write_run_files(plan: RunPlan, config_path: str | None) -> None:
    """A new run's directory with its resolved config and (redacted) source file; nothing on resume."""
    if plan.start_checkpoint is not None:
        return
    plan.run_dir.mkdir(parents=True)
    atomic_write_text(plan.run_dir / "experiment.yaml", yaml.safe_dump(plan.cfg.to_dict(), sort_keys=False))
    if config_path:  # redacted: a comment or value in the file may hold a credentialed URL
        atomic_write_text(plan.run_dir / "source_config.yaml", redact(Path(config_path).read_text(encoding="utf-8")))


def read_history(run_dir: Path, first_iteration: int) -> list[dict[str, float]]:
    """The metrics of the iterations before ``first_iteration``; later rows (a killed run logged them, and
    they are redone) are dropped from the file too."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [h for h in rows if h["iteration"] < first_iteration]
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in rows))
    return rows


def append_metrics(run_dir: Path, row: dict[str, float]) -> None:
    with (run_dir / METRICS_FILE).open("a") as f:
        f.write(json.dumps(row) + "\n")


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2))
