"""Greedy evaluation of a trained module on held-out seeds, beside the baselines, in one table format."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envs import OBS_KEYS, ECommerceEnv, EnvConfig
from envs.baselines import BASELINES, EpisodeStats, run_episodes
from envs.response import CLICK, PURCHASE
from rllib_rec.console import progress, ticking
from rllib_rec.training.checkpoints import (
    BEST_FILE,
    checkpoint_config,
    checkpoint_meta,
    load_module,
    resolve_checkpoint,
)

__all__ = ["evaluate_module", "evaluation_table", "evaluate_checkpoint", "learner_greedy_return", "GREEDY_NAME",
           "QValueEnsemble"]

GREEDY_NAME = "agent (greedy)"


def _greedy_actions(module: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    import torch
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: {k: torch.from_numpy(v) for k, v in obs.items()}})
    return out[Columns.ACTIONS].cpu().numpy()


class QValueEnsemble:
    """A greedy policy over the mean Q-values of several modules of one shop (runs of different training seeds,
    or a run's checkpoints): what `evaluate_module` plays like a single module."""

    def __init__(self, modules: list[Any]) -> None:
        self.modules = modules

    def forward_inference(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch
        from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_PREDS
        from ray.rllib.core.columns import Columns

        from rllib_rec.agent.module import masked_epsilon_greedy

        with torch.no_grad():
            q = torch.stack([m.compute_q_values(batch)[QF_PREDS] for m in self.modules]).mean(0)  # [B, K]
            actions, _ = masked_epsilon_greedy(q, batch[Columns.OBS]["candidate_mask"], 0.0)
        return {Columns.ACTIONS: actions}


def evaluate_module(
    module: Any, env_config: EnvConfig, n_episodes: int, seed: int, batch_envs: int = 64, bar: Any = None
) -> EpisodeStats:
    """Greedy rollouts with episode seeds ``seed .. seed+n-1`` (the baselines' seeds), batched across envs
    so the network runs once per step for up to ``batch_envs`` users. ``bar`` (a progress bar) is advanced
    by one per finished episode."""
    returns, lengths = np.zeros(n_episodes), np.zeros(n_episodes)
    clicks, purchases, churned = np.zeros(n_episodes), np.zeros(n_episodes), np.zeros(n_episodes, bool)
    clickbait = np.zeros(n_episodes)
    envs = [ECommerceEnv(env_config) for _ in range(min(batch_envs, n_episodes))]
    next_ep = 0
    slots: list[tuple[int, dict[str, np.ndarray]] | None] = []
    for env in envs:
        obs, _ = env.reset(seed=seed + next_ep)
        slots.append((next_ep, obs))
        next_ep += 1
    while any(s is not None for s in slots):
        live = [i for i, s in enumerate(slots) if s is not None]
        batch = {k: np.stack([slots[i][1][k] for i in live]) for k in OBS_KEYS}
        actions = _greedy_actions(module, batch)
        for i, a in zip(live, actions, strict=True):
            ep, _ = slots[i]
            clickbait[ep] += envs[i].catalog.is_clickbait[envs[i].item_of(int(a))]
            obs, r, term, trunc, info = envs[i].step(int(a))
            returns[ep] += r
            lengths[ep] += 1
            clicks[ep] += info["event"] >= CLICK
            purchases[ep] += info["event"] == PURCHASE
            if term or trunc:
                churned[ep] = bool(info["churned"])
                if bar is not None:
                    bar.update(1)
                if next_ep < n_episodes:
                    obs, _ = envs[i].reset(seed=seed + next_ep)
                    slots[i] = (next_ep, obs)
                    next_ep += 1
                else:
                    slots[i] = None
            else:
                slots[i] = (ep, obs)
    return EpisodeStats(returns, lengths, clicks, purchases, churned, clickbait)


def learner_greedy_return(algo: Any, env_config: EnvConfig, n_episodes: int, seed: int, bar: Any = None) -> float:
    """Mean greedy return of an RLlib algorithm's current module on seeds ``seed .. seed+n-1``, played on
    the Learner that holds the weights (the ones a checkpoint taken now saves), with no checkpoint round
    trip: how ``train`` and sweep trials score each checkpoint as they write it. ``bar`` only for a local
    Learner (it cannot travel to a remote one)."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    group = algo.learner_group
    local_bar = bar if group.is_local else None

    def play(learner: Any) -> float:
        module = learner.module[DEFAULT_MODULE_ID]
        return evaluate_module(module, env_config, n_episodes, seed, bar=local_bar).summary()["return_mean"]

    values = [r.get() for r in group.foreach_learner(play) if r.ok]
    if not values:
        raise RuntimeError("no healthy Learner to evaluate the greedy policy on")
    return float(values[0])


def evaluation_table(
    module: Any, env_config: EnvConfig, n_episodes: int, seed: int, baselines: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """Summaries for the greedy agent and each baseline on the same seeds (with a progress bar)."""
    names = baselines if baselines is not None else list(BASELINES)
    with progress(n_episodes * (1 + len(names)), "evaluate", unit="episode") as bar, ticking(bar):
        out = {GREEDY_NAME: evaluate_module(module, env_config, n_episodes, seed, bar=bar).summary()}
        for name in names:
            out[name] = run_episodes(env_config, BASELINES[name], n_episodes, seed=seed).summary()
            bar.update(n_episodes)
    return out


def evaluate_checkpoint(
    checkpoint: str | Path, n_episodes: int | None = None, seed: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """The evaluation table of a checkpoint, or of a run's selected (``best.json``) or else latest one;
    ``log`` is told which checkpoint that is, and on which episodes."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = checkpoint_config(ckpt)
    n, first = n_episodes or cfg.run.eval_episodes, cfg.run.eval_seed if seed is None else seed
    module = load_module(ckpt)  # first: an unreadable checkpoint is one line of error, nothing before it
    if log is not None:
        given = Path(checkpoint).expanduser().resolve()
        if given == ckpt:
            how = ""
        elif (given / BEST_FILE).is_file():
            how = f", selected on validation seeds by {given / BEST_FILE}"
        else:
            how = f", the latest of run {given}"
        log(f"evaluating checkpoint {ckpt} (iteration {checkpoint_meta(ckpt).get('iteration', '?')}{how}) "
            f"on {n} episodes, seeds {first}..{first + n - 1}")
    return evaluation_table(module, cfg.env, n, first)
