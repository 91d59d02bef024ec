"""Policies as exact action distributions: the behaviour side of ``collect`` and the target side of ``ope``.

Every policy here is epsilon-greedy over a *greedy part* (a deterministic baseline from
:data:`envs.baselines.BASELINES`, or a checkpoint's greedy action), with the random draw uniform over the
step's valid candidates, so its distribution over the K candidate slots is known exactly::

    pi(a | obs) = (1 - eps) * 1[a == greedy(obs)] + eps * candidate_mask[a] / |candidate_mask|

Actions are candidate slots (``0..K-1``), as in the env; ``obs["candidates"][a]`` is the item.

``random`` is the case eps = 1 (no greedy part). That exactness is what makes the logged behaviour
probabilities usable for importance weighting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from envs import OBS_KEYS, ECommerceEnv
from envs.baselines import BASELINES

__all__ = [
    "OBSERVATION_BASELINES",
    "ORACLE_BASELINES",
    "GreedyFn",
    "epsilon_greedy_dist",
    "baseline_greedy",
    "checkpoint_greedy",
]

# Baselines that read only the observation (plus public catalog metadata): usable on logged rows.
OBSERVATION_BASELINES = ("popularity", "history")
# Baselines that read the hidden user state: only usable live in the simulator.
ORACLE_BASELINES = ("myopic_oracle", "planning_oracle")

# obs batch {"items" [B, H], "events" [B, H], "candidates" [B, K], "candidate_mask" [B, K]} (+ the live envs, or
# None) -> candidate slots [B]
GreedyFn = Callable[[dict[str, np.ndarray], Sequence[ECommerceEnv] | None], np.ndarray]


def epsilon_greedy_dist(greedy: np.ndarray | None, mask: np.ndarray, epsilon: float) -> np.ndarray:
    """[B, K] float64 distribution over the candidate slots: ``(1 - eps) * onehot(greedy) + eps * mask / |mask|``.

    ``greedy`` [B] (slots) may be None only when ``epsilon == 1`` (uniform over the mask). Every row of ``mask``
    (the candidate mask [B, K]) needs a valid slot, and each greedy slot must be one.
    """
    allowed = np.asarray(mask) > 0  # [B, K]
    n_allowed = allowed.sum(axis=1, keepdims=True)  # [B, 1]
    if (n_allowed == 0).any():
        raise ValueError("a row of candidate_mask has no valid candidate")
    dist = epsilon * allowed / n_allowed  # [B, K]
    if epsilon < 1.0:
        if greedy is None:
            raise ValueError("a greedy action is needed when epsilon < 1")
        rows = np.arange(len(dist))
        if not allowed[rows, greedy].all():
            raise ValueError("a greedy action is not among its row's candidates")
        dist[rows, greedy] += 1.0 - epsilon
    return dist


def baseline_greedy(name: str, env: ECommerceEnv, live: bool = False, seed: int = 0) -> GreedyFn:
    """The greedy part from baseline ``name``.

    With ``live=False`` the function is applied to logged observations with ``env`` serving only the catalog,
    so the oracles (which read the hidden user) are refused. With ``live=True`` the caller passes the
    stepping envs, one per row.
    """
    if name not in BASELINES or name == "random":
        choices = [n for n in BASELINES if n != "random"]
        raise ValueError(f"unknown baseline {name!r} as a greedy policy (choose from {', '.join(choices)})")
    if not live and name in ORACLE_BASELINES:
        raise ValueError(f"{name} reads the hidden user state, which logs do not record; use one of "
                         f"{', '.join(OBSERVATION_BASELINES)}")
    policy = BASELINES[name]
    rng = np.random.default_rng([seed, 13])  # the deterministic baselines ignore it; the signature wants one

    def greedy(obs: dict[str, np.ndarray], envs: Sequence[ECommerceEnv] | None = None) -> np.ndarray:
        n = len(obs["candidate_mask"])
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            row = {k: v[i] for k, v in obs.items()}
            out[i] = policy(row, envs[i] if live and envs is not None else env, rng)
        return out

    return greedy


def checkpoint_greedy(module: Any, chunk: int = 2048) -> GreedyFn:
    """The greedy slot of a trained RLModule (``forward_inference``: argmax of Q over the valid candidates),
    batched."""
    import torch
    from ray.rllib.core.columns import Columns

    def greedy(obs: dict[str, np.ndarray], envs: Sequence[ECommerceEnv] | None = None) -> np.ndarray:
        n = len(obs["candidate_mask"])
        out = np.empty(n, dtype=np.int64)
        with torch.no_grad():
            for lo in range(0, n, chunk):
                batch = {k: torch.from_numpy(np.array(obs[k][lo:lo + chunk]))  # a copy: inputs may be read-only
                         for k in OBS_KEYS}
                res = module.forward_inference({Columns.OBS: batch})
                out[lo:lo + chunk] = res[Columns.ACTIONS].cpu().numpy()
        return out

    return greedy
