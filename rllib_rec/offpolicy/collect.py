"""``rllib-rec collect``: roll a behaviour policy in the simulator and write an interaction log.

The behaviour policy is epsilon-greedy over a greedy part (see :mod:`rllib_rec.offpolicy.policies`), so each row's
``behaviour_prob`` and ``behaviour_dist`` (over the step's K candidate slots) are exact. Episodes run batched across envs (one network call per
step for a checkpoint policy) and are written in ``episode_id`` order, rows ordered by step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs import OBS_KEYS, ECommerceEnv, EnvConfig
from rllib_rec.config.schema import to_dict
from rllib_rec.offpolicy.logs import COLLECT_KEY, ENV_CONFIG_KEY, LogWriter
from rllib_rec.offpolicy.policies import GreedyFn, baseline_greedy, checkpoint_greedy, epsilon_greedy_dist

__all__ = ["BehaviourPolicy", "CollectResult", "make_behaviour", "rollout", "collect_logs"]

Row = dict[str, Any]


@dataclass
class BehaviourPolicy:
    """``(1 - epsilon) * greedy + epsilon * uniform(valid candidates)``; ``greedy`` is None for the random policy."""

    policy_id: str
    epsilon: float
    greedy: GreedyFn | None = None
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the file's metadata

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.greedy is None and self.epsilon != 1.0:
            raise ValueError("a policy without a greedy part must have epsilon = 1 (uniform random)")


def make_behaviour(
    policy: str,
    env: ECommerceEnv,
    *,
    epsilon: float | None = None,
    base: str = "history",
    module: Any = None,
    checkpoint: str | None = None,
    seed: int = 0,
) -> BehaviourPolicy:
    """Build the behaviour policy named on the command line.

    ``random``; ``epsilon-greedy`` (over ``module`` if given, else baseline ``base``; epsilon default 0.1);
    ``checkpoint`` (``module``'s greedy action, epsilon default 0); or a baseline name (epsilon default 0).
    """
    if policy == "random":
        if epsilon not in (None, 1.0):
            raise ValueError("--epsilon does not apply to the random policy")
        return BehaviourPolicy("random", 1.0, None, {"policy": "random"})
    if policy == "epsilon-greedy":
        eps = 0.1 if epsilon is None else epsilon
        if module is not None:
            return _checkpoint_behaviour(module, checkpoint, eps)
        greedy = baseline_greedy(base, env, live=True, seed=seed)
        return BehaviourPolicy(f"epsilon-greedy({base},eps={eps:g})", eps, greedy,
                               {"policy": "epsilon-greedy", "base": base, "epsilon": eps})
    if policy == "checkpoint":
        if module is None:
            raise ValueError("--policy checkpoint needs --checkpoint")
        return _checkpoint_behaviour(module, checkpoint, 0.0 if epsilon is None else epsilon)
    eps = 0.0 if epsilon is None else epsilon
    greedy = baseline_greedy(policy, env, live=True, seed=seed)
    pid = policy if eps == 0 else f"epsilon-greedy({policy},eps={eps:g})"
    return BehaviourPolicy(pid, eps, greedy, {"policy": policy, "epsilon": eps})


def _checkpoint_behaviour(module: Any, checkpoint: str | None, eps: float) -> BehaviourPolicy:
    name = Path(checkpoint).name if checkpoint else "module"
    pid = f"checkpoint({name})" if eps == 0 else f"epsilon-greedy(checkpoint({name}),eps={eps:g})"
    return BehaviourPolicy(pid, eps, checkpoint_greedy(module),
                           {"policy": "checkpoint", "checkpoint": checkpoint, "epsilon": eps})


def _sample(dist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One slot per row of ``dist`` [B, K] (inverse CDF; zero-probability slots are never drawn)."""
    cdf = np.cumsum(dist, axis=1)  # [B, K]
    u = rng.random(len(dist)) * cdf[:, -1]  # [B]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), dist.shape[1] - 1)


def rollout(
    env_config: EnvConfig,
    behaviour: BehaviourPolicy,
    n_episodes: int,
    seed: int = 0,
    batch_envs: int = 64,
) -> Iterator[list[Row]]:
    """Yield each episode's rows (dicts in :class:`rllib_rec.offpolicy.logs.LogWriter.add`'s arguments), in episode
    order. Episode ``i`` is ``reset(seed=seed + i)``, so the same seed gives every policy the same users."""
    rng = np.random.default_rng([seed, 11])  # the behaviour policy's own randomness
    envs = [ECommerceEnv(env_config) for _ in range(max(1, min(batch_envs, n_episodes)))]
    slots: list[tuple[int, dict[str, np.ndarray]] | None] = []
    rows: dict[int, list[Row]] = {}
    finished: dict[int, list[Row]] = {}
    next_ep = next_out = 0
    for env in envs:
        if next_ep < n_episodes:
            obs, _ = env.reset(seed=seed + next_ep)
            slots.append((next_ep, obs))
            rows[next_ep] = []
            next_ep += 1
        else:
            slots.append(None)
    while any(s is not None for s in slots):
        live = [i for i, s in enumerate(slots) if s is not None]
        batch = {k: np.stack([slots[i][1][k] for i in live]) for k in OBS_KEYS}
        greedy = None
        if behaviour.greedy is not None and behaviour.epsilon < 1.0:
            greedy = behaviour.greedy(batch, [envs[i] for i in live])
        dist = epsilon_greedy_dist(greedy, batch["candidate_mask"], behaviour.epsilon)  # [B, K]
        actions = _sample(dist, rng)
        for j, (i, a) in enumerate(zip(live, actions, strict=True)):
            ep, obs = slots[i]
            next_obs, r, term, trunc, info = envs[i].step(int(a))
            rows[ep].append({
                "episode_id": ep, "episode_seed": seed + ep, "step": len(rows[ep]), "obs": obs, "action": int(a),
                "item": int(info["item"]), "behaviour_prob": float(dist[j, a]), "behaviour_dist": dist[j].astype(np.float32),
                "reward": float(r), "event": int(info["event"]), "terminated": bool(term),
                "truncated": bool(trunc), "next_obs": next_obs, "policy_id": behaviour.policy_id,
                "timestamp_us": time.time_ns() // 1000,
            })
            if term or trunc:
                finished[ep] = rows.pop(ep)
                if next_ep < n_episodes:
                    obs, _ = envs[i].reset(seed=seed + next_ep)
                    slots[i] = (next_ep, obs)
                    rows[next_ep] = []
                    next_ep += 1
                else:
                    slots[i] = None
            else:
                slots[i] = (ep, next_obs)
        while next_out in finished:  # hand episodes out in order
            yield finished.pop(next_out)
            next_out += 1


@dataclass
class CollectResult:
    path: Path
    rows: int
    episodes: int
    mean_return: float
    seconds: float

    def summary(self) -> str:
        return (f"wrote {self.rows:,} rows ({self.episodes:,} episodes, mean return {self.mean_return:.3f}) "
                f"to {self.path} in {self.seconds:.1f}s")


def collect_logs(
    out: str | os.PathLike[str],
    env_config: EnvConfig,
    behaviour: BehaviourPolicy,
    n_episodes: int,
    seed: int = 0,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
    progress_every_s: float = 5.0,
) -> CollectResult:
    """Roll ``behaviour`` for ``n_episodes`` and write the log to ``out`` atomically; ``log`` gets a progress line
    every ``progress_every_s`` seconds."""
    meta = {
        ENV_CONFIG_KEY: json.dumps(to_dict(env_config)).encode(),
        COLLECT_KEY: json.dumps({**behaviour.info, "policy_id": behaviour.policy_id, "seed": seed,
                                 "episodes": n_episodes}).encode(),
    }
    t0 = last = time.perf_counter()
    returns: list[float] = []
    with LogWriter(out, n_items=env_config.catalog.n_items, n_candidates=env_config.n_slots,
                   history_length=env_config.history_length, overwrite=overwrite, metadata=meta) as writer:
        for ep_rows in rollout(env_config, behaviour, n_episodes, seed):
            for row in ep_rows:
                writer.add(**row)
            returns.append(sum(r["reward"] for r in ep_rows))
            now = time.perf_counter()
            if log is not None and now - last >= progress_every_s:
                last = now
                log(f"  {len(returns):,}/{n_episodes:,} episodes, {writer.rows_added:,} rows, {now - t0:.0f}s "
                    f"({writer.rows_added / (now - t0):,.0f} rows/s)")
        writer.flush()
        rows = writer.rows_written
    mean_ret = float(np.mean(returns)) if returns else float("nan")
    return CollectResult(Path(out), rows, len(returns), mean_ret, time.perf_counter() - t0)
