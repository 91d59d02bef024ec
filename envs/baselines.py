"""Baseline policies and a seeded evaluation loop.

A policy maps ``(obs, env, rng)`` to an action: a candidate slot index into ``obs["candidates"]`` among the
slots with ``obs["candidate_mask"] == 1``. Policies look only at the K candidates (and the history), never at
the whole catalog. Non-oracle baselines see only what the agent sees (the observation) plus public shop
metadata (item categories and popularity). The oracles read the hidden user state over the candidates:

- ``myopic``: maximises expected *immediate* reward — the best a next-click optimiser can do.
- ``planning``: one-step lookahead over the hidden state with a linear value of patience: score =
  E[reward] + w * E[patience change], where w falls to 0 as the episode nears ``max_steps`` (patience is
  worth nothing when the session ends anyway). It gives up some immediate reward (clickbait) to keep the
  user longer; the gap between it and ``myopic`` is what a long-term RL agent can win.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.config import EnvConfig
from envs.ecommerce import ECommerceEnv
from envs.response import CLICK, IGNORED, ORGANIC, PURCHASE, VIEW

__all__ = [
    "Policy",
    "random_policy",
    "popularity_policy",
    "history_policy",
    "myopic_oracle",
    "planning_oracle",
    "BASELINES",
    "EpisodeStats",
    "run_episodes",
]

Policy = Callable[[dict[str, np.ndarray], ECommerceEnv, np.random.Generator], int]

# How much each history event says about interest in the item's category.
_EVIDENCE = np.zeros(6)
_EVIDENCE[[ORGANIC, IGNORED, VIEW, CLICK, PURCHASE]] = [1.0, -0.5, 0.5, 2.0, 3.0]


def _valid(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(valid slot indices, their item ids) of this step, in slot order."""
    slots = np.flatnonzero(obs["candidate_mask"])
    return slots, obs["candidates"][slots]


def _fresh(obs: dict[str, np.ndarray], slots: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The valid slots whose item is not among the last 3 history events (all of them if none is fresh)."""
    recent = _recent(obs, 3)
    fresh = ~(items[:, None] == recent[None, :]).any(axis=1)
    return (slots[fresh], items[fresh]) if fresh.any() else (slots, items)


def random_policy(obs: dict[str, np.ndarray], env: ECommerceEnv, rng: np.random.Generator) -> int:
    slots = np.flatnonzero(obs["candidate_mask"])
    return int(slots[rng.integers(len(slots))])


def _recent(obs: dict[str, np.ndarray], k: int) -> np.ndarray:
    items = obs["items"][-k:]
    return items[items > 0] - 1


def popularity_policy(obs: dict[str, np.ndarray], env: ECommerceEnv, rng: np.random.Generator) -> int:
    """The most popular candidate not recommended in the last few events."""
    slots, items = _fresh(obs, *_valid(obs))
    return int(slots[np.argmin(env.catalog.popularity_rank[items])])


def history_policy(obs: dict[str, np.ndarray], env: ECommerceEnv, rng: np.random.Generator) -> int:
    """Infer the favourite category from the history (organic browses, clicks, purchases count for it,
    ignored recommendations against), then recommend its most popular fresh candidate."""
    cat = env.catalog.category
    items, events = obs["items"], obs["events"]
    seen = items > 0
    score = np.zeros(env.catalog.n_categories)  # [C]: categories, not the catalog
    # Later events weigh more: interests drift and shift.
    recency = np.linspace(0.5, 1.0, len(items))[seen]
    np.add.at(score, cat[items[seen] - 1], _EVIDENCE[events[seen]] * recency)
    slots, cands = _fresh(obs, *_valid(obs))
    cand_score = score[cat[cands]] + 1e-3 * env.catalog.popularity[cands]  # popularity breaks ties
    return int(slots[np.argmax(cand_score)])


def myopic_oracle(obs: dict[str, np.ndarray], env: ECommerceEnv, rng: np.random.Generator) -> int:
    """Argmax of expected immediate reward over the valid candidates, computed from the hidden user state."""
    slots, items = _valid(obs)
    return int(slots[np.argmax(env.response.expected_reward(env.user, items, env.t))])


def make_planning_oracle(patience_value: float = 0.3, trust_value: float = 3.0, horizon: int = 10) -> Policy:
    """Lookahead oracle valuing a unit of patience at ``patience_value`` and a unit of purchase propensity
    at ``trust_value``, both fading to 0 over the last ``horizon`` steps of the episode."""

    def planning_oracle(obs: dict[str, np.ndarray], env: ECommerceEnv, rng: np.random.Generator) -> int:
        slots, items = _valid(obs)
        steps_left = env.config.max_steps - env.t
        fade = min(1.0, (steps_left - 1) / horizon)
        resp, user, t = env.response, env.user, env.t
        score = resp.expected_reward(user, items, t)
        if fade > 0:
            score = score + fade * (
                patience_value * resp.expected_patience_change(user, items, t)
                + trust_value * resp.expected_trust_change(user, items, t)
            )
        return int(slots[np.argmax(score)])

    return planning_oracle


planning_oracle = make_planning_oracle()

BASELINES: dict[str, Policy] = {
    "random": random_policy,
    "popularity": popularity_policy,
    "history": history_policy,
    "myopic_oracle": myopic_oracle,
    "planning_oracle": planning_oracle,
}


@dataclass
class EpisodeStats:
    """Per-episode arrays from :func:`run_episodes`."""

    returns: np.ndarray
    lengths: np.ndarray
    clicks: np.ndarray  # clicks including those that became purchases
    purchases: np.ndarray
    churned: np.ndarray  # bool: ended by patience running out
    # Recommendations of clickbait items per episode: they pay now and cost patience and trust later, so
    # their share is the plainest sign of whether a policy optimises beyond the next click.
    clickbait: np.ndarray | None = None

    def summary(self) -> dict[str, float]:
        n = len(self.returns)
        half = 1.96 * self.returns.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        return {
            "episodes": n,
            "return_mean": float(self.returns.mean()),
            "return_ci95": float(half),
            "length_mean": float(self.lengths.mean()),
            "clicks_mean": float(self.clicks.mean()),
            "purchases_mean": float(self.purchases.mean()),
            "churn_rate": float(self.churned.mean()),
            **({} if self.clickbait is None else
               {"clickbait_share": float(self.clickbait.sum() / max(self.lengths.sum(), 1.0))}),
        }


def run_episodes(
    config: EnvConfig | dict | str | None,
    policy: Policy,
    n_episodes: int,
    seed: int = 0,
    env: ECommerceEnv | None = None,
) -> EpisodeStats:
    """Run ``n_episodes`` with seeds ``seed, seed+1, ...``; the same seeds give every policy the same users."""
    env = env or ECommerceEnv(config)
    rng = np.random.default_rng([seed, 7])  # the policy's own randomness, separate from the env's
    out = {k: np.zeros(n_episodes) for k in ("returns", "lengths", "clicks", "purchases", "churned", "clickbait")}
    for ep in range(n_episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        ret = length = clicks = purchases = clickbait = 0.0
        info: dict = {}
        while not done:
            action = policy(obs, env, rng)
            clickbait += env.catalog.is_clickbait[env.item_of(action)]
            obs, r, term, trunc, info = env.step(action)
            ret += r
            length += 1
            clicks += info["event"] >= CLICK
            purchases += info["event"] == PURCHASE
            done = term or trunc
        out["returns"][ep], out["lengths"][ep] = ret, length
        out["clicks"][ep], out["purchases"][ep] = clicks, purchases
        out["churned"][ep] = bool(info.get("churned", False))
        out["clickbait"][ep] = clickbait
    return EpisodeStats(**{k: (v.astype(bool) if k == "churned" else v) for k, v in out.items()})
