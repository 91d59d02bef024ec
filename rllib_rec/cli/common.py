"""What several command groups share: the --config/--set arguments, and a checkpoint with the env it fits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rllib_rec.config import ExperimentConfig, config_from_dict, load_config, merge_dicts, parse_overrides
from rllib_rec.errors import UsageError
from rllib_rec.training.checkpoints import checkpoint_config, load_module, resolve_checkpoint

__all__ = ["add_config_args", "resolve_env_config", "load_checkpoint_module", "check_module_fits"]


def add_config_args(p: argparse.ArgumentParser, required: bool = True,
                    config_help: str = "experiment YAML (e.g. configs/default.yaml)") -> None:
    p.add_argument("--config", "-c", required=required, help=config_help)
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set dqn.lr=1e-3 (repeatable; validated like the file)",
    )


def resolve_env_config(config: str | None, overrides: list[str],
                       ckpt_cfg: ExperimentConfig | None = None) -> ExperimentConfig:
    """--config (+ --set) if given, else the checkpoint's config (+ --set)."""
    if config is not None or ckpt_cfg is None:
        return load_config(config, overrides)
    return config_from_dict(merge_dicts(ckpt_cfg.to_dict(), parse_overrides(overrides)),
                            "<checkpoint config> + --set" if overrides else "<checkpoint config>")


def load_checkpoint_module(path: str) -> tuple[Path, ExperimentConfig, Any]:
    """A checkpoint (or run) directory's checkpoint, its config and its restored RLModule."""
    ckpt = resolve_checkpoint(path)
    return ckpt, checkpoint_config(ckpt), load_module(ckpt)


def check_module_fits(module: Any, n_items: int, n_candidates: int, history_length: int, what: str) -> None:
    """The checkpoint's module takes ``what``'s observations: the same catalog size N (its item table), candidate
    slots K (its actions) and history length; else a one-line UsageError."""
    spec = getattr(module, "spec", None)
    m_items = int(spec.n_items) if spec is not None else n_items
    m_cands = int(module.action_space.n)
    m_hist = int(module.observation_space["items"].shape[0])
    if (m_items, m_cands, m_hist) != (n_items, n_candidates, history_length):
        raise UsageError(f"checkpoint expects {m_items} items, {m_cands} candidate slots and history {m_hist}, "
                         f"{what} has {n_items} items, {n_candidates} candidate slots and history {history_length}")
