"""Checkpoint layout, atomic writes and loading.

A run directory::

    runs/<name>-<time>/
      experiment.yaml            resolved config of the run
      state.json                 {"mlflow_run_id", "iteration", "last_checkpoint"} (atomic replace)
      metrics.jsonl              one line per iteration
      best.json                  with run.validation_episodes > 0: {"checkpoint": "checkpoints/iter_…", ...},
                                 the checkpoint with the best validation return (what a run dir resolves to)
      checkpoints/iter_000010/   RLlib algorithm checkpoint + experiment.yaml + rllib_rec.json

A checkpoint is written into a hidden temp directory next to its final place and renamed into place
only when complete (``rllib_rec.json`` is its last file), so a crash never leaves a half-written
checkpoint that looks valid, and nothing existing is overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from rllib_rec.config import ExperimentConfig, config_from_dict, read_yaml
from rllib_rec.errors import CheckpointError

__all__ = [
    "CheckpointError",
    "CHECKPOINT_META",
    "atomic_write_text",
    "write_checkpoint",
    "complete_checkpoints",
    "latest_checkpoint",
    "remove_partial_checkpoints",
    "checkpoint_config",
    "module_path",
    "load_module",
    "restore_network",
    "resolve_checkpoint",
    "selected_checkpoint",
    "checkpoint_named_by",
    "BEST_FILE",
]

BEST_FILE = "best.json"
CHECKPOINT_META = "rllib_rec.json"
CONFIG_FILE = "experiment.yaml"
_ITER_DIR = re.compile(r"^iter_(\d+)$")




def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_checkpoint(algo: Any, checkpoints_dir: Path, iteration: int, cfg: ExperimentConfig, meta: dict) -> Path:
    """Save ``algo`` as ``checkpoints_dir/iter_<n>`` atomically; returns the final path."""
    final = checkpoints_dir / f"iter_{iteration:06d}"
    if final.exists():
        raise CheckpointError(f"{final}: already exists; refusing to overwrite a checkpoint")
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=checkpoints_dir, prefix=f".tmp-iter_{iteration:06d}-"))
    try:
        algo.save_to_path(str(tmp.resolve()))
        if cfg.faults.checkpoint_write_delay_s:  # fault injection: widen the window a crash can hit
            time.sleep(cfg.faults.checkpoint_write_delay_s)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
        (tmp / CHECKPOINT_META).write_text(json.dumps({**meta, "iteration": iteration}, indent=2), encoding="utf-8")
        os.rename(tmp, final)  # atomic on one filesystem: the checkpoint appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    """Delete temp dirs left by a process killed while writing a checkpoint; returns what was removed."""
    partial = sorted(p for p in (run_dir / "checkpoints").glob(".tmp-iter_*") if p.is_dir())
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def _is_complete(path: Path) -> bool:
    return (path / CHECKPOINT_META).is_file() and (path / CONFIG_FILE).is_file()


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete checkpoints, oldest first (temp dirs and incomplete ones are ignored)."""
    ckpts = []
    for p in (run_dir / "checkpoints").glob("iter_*"):
        m = _ITER_DIR.match(p.name)
        if m and p.is_dir() and _is_complete(p):
            ckpts.append((int(m.group(1)), p))
    return [p for _, p in sorted(ckpts)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete checkpoint of a run (temp dirs and incomplete ones are ignored)."""
    ckpts = complete_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_named_by(best_json: Path, error: type[Exception] = CheckpointError) -> Path:
    """The path a ``best.json`` (``{"checkpoint": PATH, ...}``, from a sweep or a validated run) names; a
    relative path is relative to the JSON file. Not checked further: pass it to `resolve_checkpoint`."""
    try:
        data = json.loads(best_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{best_json}: no such file") from None
    except (OSError, ValueError) as e:
        raise error(f"{best_json}: not readable JSON ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    ck = data.get("checkpoint") if isinstance(data, dict) else None
    if not isinstance(ck, str) or not ck:
        raise error(f"{best_json}: key 'checkpoint' must be a non-empty path string, got {ck!r}")
    path = Path(ck).expanduser()
    return path if path.is_absolute() else best_json.resolve().parent / path


def selected_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run selected on validation seeds (``<run_dir>/best.json``), or None without one."""
    f = run_dir / BEST_FILE
    if not f.is_file():
        return None
    ckpt = checkpoint_named_by(f).resolve()
    if not (ckpt.is_dir() and _is_complete(ckpt)):
        raise CheckpointError(f"{f}: names {ckpt}, which is not a complete checkpoint")
    return ckpt


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Accept a checkpoint dir or a run dir (-> the checkpoint it selected on validation seeds, else its
    latest complete checkpoint)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")
    if p.is_dir() and (p / "checkpoints").is_dir():
        selected = selected_checkpoint(p)
        if selected is not None:
            return selected
        latest = latest_checkpoint(p)
        if latest is None:
            raise CheckpointError(f"{path}: run has no complete checkpoint")
        return latest
    if not p.is_dir() or not _is_complete(p):
        raise CheckpointError(f"{path}: not a complete rllib-rec checkpoint (missing {CHECKPOINT_META} or {CONFIG_FILE})")
    return p


def checkpoint_config(ckpt: Path) -> ExperimentConfig:
    """The config a checkpoint was trained with (recorded inside it)."""
    path = ckpt / CONFIG_FILE
    return config_from_dict(read_yaml(path), str(path))


def checkpoint_meta(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / CHECKPOINT_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / CHECKPOINT_META}: unreadable ({type(e).__name__})") from None


def module_path(ckpt: Path) -> Path:
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )

    return ckpt.resolve() / COMPONENT_LEARNER_GROUP / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID


def load_module(ckpt: Path) -> Any:
    """The trained RLModule (torch/Keras) of a checkpoint, ready for ``forward_inference``."""
    from rllib_rec.agent.runtime import import_rllib_quietly, use_torch_keras_backend

    use_torch_keras_backend()
    import_rllib_quietly()
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = module_path(ckpt)
    if not path.is_dir():
        raise CheckpointError(f"{ckpt}: no RL module inside ({path.relative_to(ckpt.resolve())} missing)")
    try:
        module = RLModule.from_checkpoint(str(path))
    except Exception as e:  # noqa: BLE001 — pickles/torch state can fail in many ways; all mean "corrupt"
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{ckpt}: unreadable checkpoint ({type(e).__name__}: {msg})") from None
    module.eval()
    return module


def restore_network(algo: Any, ckpt: Path) -> None:
    """Load only the RL module of ``ckpt`` (online and target networks) into ``algo``'s learner and env runners;
    the optimiser, replay buffer, counters and exploration schedule stay as built."""
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )

    component = "/".join((COMPONENT_LEARNER_GROUP, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID))
    algo.restore_from_path(str(module_path(ckpt)), component=component)  # also syncs the env runners' copies
