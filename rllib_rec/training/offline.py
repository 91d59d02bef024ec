"""Offline training: the same Transformer-DQN, learned from interaction logs instead of the simulator.

`rllib-rec train --offline LOGS.parquet` builds the algorithm exactly as online training does
(:func:`rllib_rec.agent.algo.build_algo_config`), fills its replay buffer once with the logged episodes
(behaviour probabilities as ``Columns.ACTION_PROB``, so the learner's clipped inverse-propensity weights
apply), and then runs only the replay half of DQN's training step: sample, update, re-prioritise, sync the
target network. No env step is taken; the simulator is used only to evaluate the result at the end.

Units: one offline iteration does as many gradient updates as an online iteration would
(``run.steps_per_iteration * dqn.training_intensity / dqn.train_batch_size``), and the target network is
synced on the same schedule, counting ``train_batch_size / training_intensity`` "replayed steps" per update
(the env steps an online run takes per update), so ``dqn.target_update_freq`` means the same thing online
and offline.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from envs import OBS_KEYS
from envs.baselines import EpisodeStats
from envs.response import CLICK, PURCHASE
from rllib_rec.config import ExperimentConfig
from rllib_rec.offpolicy.logs import LogArrays, LogSchemaError, log_arrays, read_logs, read_metadata

__all__ = [
    "OfflineData",
    "load_offline_data",
    "logs_to_episodes",
    "logging_policy_stats",
    "updates_per_iteration",
    "replayed_steps_per_update",
    "offline_iteration",
]

LOGGING_POLICY_NAME = "logging policy (logs)"


class OfflineData:
    """A validated log and its episodes, ready for a replay buffer."""

    def __init__(self, path: Path, arrays: LogArrays) -> None:
        self.path = path
        self.arrays = arrays
        self.episodes = logs_to_episodes(arrays)

    @property
    def n_transitions(self) -> int:
        return self.arrays.n_rows

    @property
    def policy_ids(self) -> list[str]:
        return sorted({str(p) for p in self.arrays.policy_id})


def load_offline_data(path: str | Path, cfg: ExperimentConfig) -> OfflineData:
    """Read ``path`` and check it fits the experiment (the catalog size N, candidate slots K and history length
    of ``cfg.env``, room for every transition in the replay buffer); one-line errors name the file and the
    mismatch. The sizes are checked from the file's metadata, before any row is read."""
    p = Path(path)
    _check_log_fits(p, read_metadata(p), cfg)
    arrays = log_arrays(read_logs(p))
    if arrays.n_rows == 0:
        raise LogSchemaError(f"{p}: no logged transitions")
    return OfflineData(p, arrays)


def _check_log_fits(path: Path, meta: dict[str, Any], cfg: ExperimentConfig) -> None:
    env = cfg.env
    if meta["n_items"] != env.catalog.n_items:
        raise LogSchemaError(f"{path}: logs have {meta['n_items']} items but env.catalog.n_items is "
                             f"{env.catalog.n_items}")
    if meta["n_candidates"] != env.n_slots:
        offered = "every item (env.n_candidates = 0)" if env.n_candidates == 0 else f"env.n_candidates = {env.n_candidates}"
        hint = "; a version-1 log offers every item at every step, so it fits only env.n_candidates = 0" \
            if meta["schema_version"] == 1 else ""
        raise LogSchemaError(f"{path}: logs have {meta['n_candidates']} candidate slots per step but the env offers "
                             f"{env.n_slots}: {offered}{hint}")
    if meta["history_length"] != env.history_length:
        raise LogSchemaError(f"{path}: logs have history length {meta['history_length']} but env.history_length is "
                             f"{env.history_length}")
    if meta["num_rows"] > cfg.dqn.replay_capacity:
        # The buffer would silently evict the oldest logged episodes.
        raise LogSchemaError(f"{path}: {meta['num_rows']} logged transitions exceed dqn.replay_capacity "
                             f"({cfg.dqn.replay_capacity}); raise it with --set dqn.replay_capacity=N")


def _episode_slices(episode_id: np.ndarray) -> list[slice]:
    starts = np.flatnonzero(np.r_[True, episode_id[1:] != episode_id[:-1]])
    ends = np.r_[starts[1:], len(episode_id)]
    return [slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def logs_to_episodes(arrays: LogArrays) -> list[Any]:
    """One numpy'd ``SingleAgentEpisode`` per logged episode, with the env's observations (:data:`envs.OBS_KEYS`)
    and the logged candidate slots as actions (rows are consecutive and step-ordered; the reader checks that).
    An episode cut off by the end of the file (neither terminated nor truncated on its last row) is kept as an
    unfinished episode, so its last transition still bootstraps."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    episodes = []
    keys = OBS_KEYS
    for sl in _episode_slices(arrays.episode_id):
        n = sl.stop - sl.start
        observations = [{k: arrays.obs[k][i] for k in keys} for i in range(sl.start, sl.stop)]
        observations.append({k: arrays.next_obs[k][sl.stop - 1] for k in keys})
        ep = SingleAgentEpisode(
            observations=observations,
            actions=[np.int64(a) for a in arrays.action[sl]],
            rewards=[float(r) for r in arrays.reward[sl]],
            extra_model_outputs={Columns.ACTION_PROB: [np.float32(p) for p in arrays.behaviour_prob[sl]]},
            terminated=bool(arrays.terminated[sl.stop - 1]),
            truncated=bool(arrays.truncated[sl.stop - 1]),
            len_lookback_buffer=0,
        )
        assert len(ep) == n
        episodes.append(ep.to_numpy())
    return episodes


def logging_policy_stats(arrays: LogArrays) -> EpisodeStats:
    """The logging policy's own on-simulator value, read off the logs (complete episodes only)."""
    returns, lengths, clicks, purchases, churned = [], [], [], [], []
    for sl in _episode_slices(arrays.episode_id):
        if not (arrays.terminated[sl.stop - 1] or arrays.truncated[sl.stop - 1]):
            continue
        returns.append(float(arrays.reward[sl].sum()))
        lengths.append(sl.stop - sl.start)
        clicks.append(int((arrays.event[sl] >= CLICK).sum()))
        purchases.append(int((arrays.event[sl] == PURCHASE).sum()))
        churned.append(bool(arrays.terminated[sl.stop - 1]))
    return EpisodeStats(np.array(returns), np.array(lengths), np.array(clicks), np.array(purchases),
                        np.array(churned, dtype=bool))


def updates_per_iteration(cfg: ExperimentConfig) -> int:
    d = cfg.dqn
    return max(1, round(cfg.run.steps_per_iteration * d.training_intensity / d.train_batch_size))


def replayed_steps_per_update(cfg: ExperimentConfig) -> float:
    return cfg.dqn.train_batch_size / cfg.dqn.training_intensity


def offline_iteration(algo: Any, cfg: ExperimentConfig, n_updates: int, replayed_before: float) -> dict[str, float]:
    """``n_updates`` sample-update-reprioritise rounds on the algorithm's replay buffer (DQN's training step
    without sampling). Returns the iteration's mean loss/Q and the new replayed-step count."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.utils.metrics import NUM_AGENT_STEPS_SAMPLED_LIFETIME, NUM_ENV_STEPS_SAMPLED_LIFETIME
    from ray.rllib.utils.numpy import convert_to_numpy

    per_update = replayed_steps_per_update(cfg)
    stats: dict[str, list[float]] = defaultdict(list)
    replayed = replayed_before
    for _ in range(n_updates):
        replayed += per_update
        steps = int(replayed)
        results = algo.replay_update(
            {NUM_ENV_STEPS_SAMPLED_LIFETIME: steps, NUM_AGENT_STEPS_SAMPLED_LIFETIME: {DEFAULT_MODULE_ID: steps}})
        for res in results:
            module_results = res.get(DEFAULT_MODULE_ID, {})
            for key in ("qf_loss", "qf_mean", "sample_weight_max"):
                if key in module_results:
                    stats[key].append(float(convert_to_numpy(module_results[key].peek())))
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out.update(replayed_steps=replayed, updates=float(n_updates))
    for key in ("qf_loss", "qf_mean", "sample_weight_max"):
        out.setdefault(key, math.nan)
    return out


class OfflineLoop:
    """Iterations of offline DQN on a log: the replay buffer is filled once, then only updated from.
    Progress is counted in replayed steps (see the module docstring), MLflow's step for offline runs."""

    step_key = "replayed_steps"

    def __init__(self, algo: Any, cfg: ExperimentConfig, data: OfflineData, replayed_before: float,
                 log: Any) -> None:
        self.algo, self.cfg = algo, cfg
        self.n_updates = updates_per_iteration(cfg)
        self.replayed = replayed_before
        algo.store_episodes(data.episodes)
        log(f"offline: {data.n_transitions:,} logged transitions from {len(data.episodes):,} episodes of "
            f"{', '.join(data.policy_ids)} in the replay buffer ({data.path})")

    def run_iteration(self) -> dict[str, float]:
        m = {"env_steps": 0.0, "epsilon": 0.0, **offline_iteration(self.algo, self.cfg, self.n_updates, self.replayed)}
        self.replayed = m["replayed_steps"]
        return m

    def progress(self, m: dict[str, float]) -> str:
        rate = self.n_updates / m["seconds"] if m["seconds"] > 0 else math.nan
        return (f"offline updates {self.n_updates}  replayed {m['replayed_steps']:>9,.0f}  loss {m['qf_loss']:7.4f}  "
                f"Q {m['qf_mean']:6.2f}  {rate:6,.1f} updates/s")

    def closing_note(self, last: dict[str, float]) -> str | None:
        return None
