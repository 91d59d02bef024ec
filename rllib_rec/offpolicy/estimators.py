"""Off-policy evaluation: estimate a target policy's value from logs of another (behaviour) policy.

Inputs per logged row ``i`` (``n`` rows, ``A`` actions: the K candidate slots of a simulated log, or the 80
items of the Open Bandit Dataset): the logged action ``a_i``, its reward ``r_i``,
the behaviour probability ``p_i = mu(a_i | x_i)`` and the target policy's distribution ``pi[i, :]``
(``pi[i, a]`` for every action; a deterministic target is one-hot, and ``pi[i, a_i] = 0`` is fine).
With importance weights ``w_i = pi[i, a_i] / p_i`` and a reward model ``q[i, a] ~ E[r | x_i, a]``:

=======  ======================================================  =====================================
IPS      mean(w_i r_i)                                           unbiased (exact p), high variance
SNIPS    sum(w_i r_i) / sum(w_i)                                 self-normalised: small bias, lower var
DM       mean(sum_a pi[i, a] q[i, a])                            no weights: biased if q is wrong
DR       DM + mean(w_i (r_i - q[i, a_i]))                        unbiased if p is exact or q is right
=======  ======================================================  =====================================

Each estimator takes optional row ``weights`` (multiplicities: how often each row is counted, default 1):
:func:`estimate` computes its point estimates with the logs as they are and its 95% intervals by calling
the same functions with the multiplicities of each bootstrap resample (percentile bootstrap over rows,
seeded, :mod:`rllib_rec.stats`), with the reward model *refitted* on every resample, so the DM/DR intervals
include the reward model's own estimation noise. The effective sample size of the weights is
``(sum w)^2 / sum w^2`` (n when the target equals the behaviour policy).

These are per-step (bandit) estimates: of the target's expected reward per decision, on the logged
context distribution. For single-step episodes that is the policy's value. For sequential logs the
per-step estimates describe the target's first decision on the *behaviour* policy's states, not the
episode return of running the target, and a reward model of immediate reward (myopic) cannot fix that.
:func:`per_decision_ips` and :func:`trajectory_ips` estimate the episode return itself: unbiased with
exact behaviour probabilities, but their variance grows with the product of weights over the episode
(``bench/ope.py`` measures both).

Reward models follow the :class:`RewardModel` protocol. :class:`TabularRewardModel` is the default: mean
reward per (item, key) cell with shrinkage, where the item is the one behind the action (the row's candidate
in that slot) and the key is a small discrete feature of the context: :func:`position_key` (Open Bandit
Dataset: item x position) or :func:`history_key` (simulated logs: how often and how recently the candidate
appears in the user's history). Nothing here is sized by the catalog: arrays are [n, A] at most, and the
reward model stores only the logged cells.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rllib_rec.offpolicy.policies import baseline_greedy, checkpoint_greedy, epsilon_greedy_dist
from rllib_rec.stats import bootstrap_ci, mean_ci, multiplicity_bootstrap_ci
from rllib_rec.tables import format_table

if TYPE_CHECKING:
    from envs import ECommerceEnv
    from rllib_rec.offpolicy.logs import LogArrays

__all__ = [
    "ESTIMATORS",
    "Context",
    "RewardModel",
    "TabularRewardModel",
    "candidate_items",
    "position_key",
    "history_key",
    "N_HISTORY_KEYS",
    "Estimate",
    "importance_weights",
    "effective_sample_size",
    "ips",
    "snips",
    "dm",
    "dr",
    "estimate",
    "per_decision_ips",
    "trajectory_ips",
    "estimate_sequential",
    "mean_with_ci",
    "target_distribution",
    "evaluate_logs",
    "estimates_table",
    "LOW_ESS_FRACTION",
    "low_ess",
    "low_ess_warnings",
    "LOG_AGAIN_ADVICE",
]

ESTIMATORS = ("IPS", "SNIPS", "DM", "DR")

# Per-row context for a reward model: named arrays whose first dimension is the row.
Context = Mapping[str, np.ndarray]


class RewardModel(Protocol):
    """Expected reward of every action in every logged context."""

    def fit(
        self, context: Context, actions: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None
    ) -> RewardModel:
        """Fit on logged rows; ``weights`` [n] are row multiplicities (the bootstrap passes them)."""
        ...

    def predict(self, context: Context) -> np.ndarray:
        """[n, A] expected reward of each action in each row's context."""
        ...


KeyFn = Callable[[Context, int], np.ndarray]  # (context, n_actions) -> [n, A] int keys in [0, n_keys)


def candidate_items(context: Context, n_actions: int) -> np.ndarray:
    """[n, A] item id behind each action of each row: ``context["candidates"]`` (the logged candidate slots), or
    the action index itself where the context has none (every item a candidate: K = N, slot = item)."""
    if "candidates" in context:
        return np.asarray(context["candidates"], dtype=np.int64)
    n = len(next(iter(context.values()))) if context else 0
    return np.broadcast_to(np.arange(n_actions, dtype=np.int64), (n, n_actions))


def position_key(context: Context, n_actions: int) -> np.ndarray:
    """The row's slate position, the same for every action: [n, A]."""
    pos = np.asarray(context["position"], dtype=np.int64)
    return np.broadcast_to(pos[:, None], (len(pos), n_actions))


N_HISTORY_KEYS = 4 * 6 * 2
_KEY_CHUNK = 4096  # rows per [rows, A, H] comparison in history_key (~8 MB at A = 100, H = 20)


def history_key(context: Context, n_actions: int) -> np.ndarray:
    """[n, A] key of each candidate item in each row's history: (occurrences clipped to 3) x (most recent event
    code of the item, 0 if absent) x (whether it is the row's most frequent history item): 48 values.

    Reads ``items`` [n, H] (item id + 1, 0 = pad) and ``events`` [n, H], as in the observation, and the
    candidates' item ids (:func:`candidate_items`). Candidate ids are compared with history ids, a [rows, A, H]
    array per chunk of rows: O(n A H), nothing sized by the catalog.
    """
    hist = np.asarray(context["items"], dtype=np.int64) - 1  # item ids, -1 = padding
    events = np.asarray(context["events"], dtype=np.int64)
    cands = candidate_items(context, n_actions)
    out = np.empty(cands.shape, dtype=np.int64)
    for lo in range(0, len(hist), _KEY_CHUNK):
        rows = slice(lo, lo + _KEY_CHUNK)
        out[rows] = _history_key_rows(hist[rows], events[rows], cands[rows])
    return out


def _history_key_rows(hist: np.ndarray, events: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """:func:`history_key` of a chunk of rows: ``hist`` [r, H] item ids (-1 = pad), ``events`` [r, H], ``cands``
    [r, A] item ids."""
    h = hist.shape[1]
    match = cands[:, :, None] == hist[:, None, :]  # [r, A, H]
    count = match.sum(axis=2)  # [r, A]
    last_pos = h - 1 - np.argmax(match[:, :, ::-1], axis=2)  # [r, A]: the candidate's most recent occurrence
    last = np.where(count > 0, np.take_along_axis(events, last_pos, axis=1), 0)
    # How often the row's most frequent history item occurs (0 for an empty history).
    same = (hist[:, :, None] == hist[:, None, :]) & (hist[:, None, :] >= 0)  # [r, H, H]
    top_count = same.sum(axis=2).max(axis=1, initial=0)  # [r]
    top = (count == top_count[:, None]) & (count > 0)
    return (np.minimum(count, 3) * 6 + last) * 2 + top


def _shrunk_mean(total: np.ndarray, count: np.ndarray, s: float, parent: np.ndarray) -> np.ndarray:
    """``(total + s * parent) / (count + s)``; an empty cell (possible with s = 0) takes its parent."""
    den = count + s
    return np.divide(total + s * parent, den, out=np.array(parent, dtype=np.float64), where=den > 0)


def _find(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The position of each of ``ids`` in ``sorted_ids`` (unique, ascending), -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(np.shape(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


@dataclass
class _Layout:
    """The logged items and (item, key) cells of a fit, and where each logged row falls among them."""

    items: np.ndarray  # [I] sorted ids of the logged items
    cells: np.ndarray  # [C] sorted ids of the logged cells: item * n_keys + key
    row_item: np.ndarray  # [n] each logged row's position in items
    row_cell: np.ndarray  # [n] ... in cells
    row_key: np.ndarray  # [n] its key
    cell_item: np.ndarray  # [C] each cell's position in items
    cell_key: np.ndarray  # [C] its key


class TabularRewardModel:
    """Mean reward per (item, key) cell with shrinkage, stored sparsely.

    ``q(item, key) = (sum_cell + s * parent) / (n_cell + s)`` with ``parent = key_mean[key] + (item_mean[item] -
    g)`` clipped to the logged reward range: the key's mean reward, moved by how far the item's rows are from the
    global mean ``g``; ``key_mean`` and ``item_mean`` are themselves shrunk toward ``g``. A cell or item without
    logged rows takes its parent, so an item never logged is predicted from its key alone. With one key
    (``key_fn`` None) this is the per-item mean shrunk toward the global mean.

    The item of an action is :func:`candidate_items` (``context["candidates"]``, or the action index itself).
    Only logged items and cells are stored (``np.unique`` over the logged rows), so memory and time are
    O(rows x actions) whatever the catalog size. The bootstrap refits on the same context many times: its keys,
    the layout of its cells and the look-ups of its (row, action) pairs are computed once.

    ``key_fn(context, n_actions) -> [n, A]`` ints in ``[0, n_keys)``; None = one key.
    """

    def __init__(
        self,
        n_actions: int,
        key_fn: KeyFn | None = None,
        n_keys: int = 1,
        shrinkage: float = 2.0,
    ) -> None:
        self.n_actions, self.key_fn, self.n_keys, self.shrinkage = int(n_actions), key_fn, int(n_keys), shrinkage
        self.global_mean = 0.0
        self.reward_range = (0.0, 0.0)
        self.key_mean: np.ndarray | None = None  # [n_keys]
        self.item_mean: np.ndarray | None = None  # [I], aligned with the fitted layout's items
        self.cell_mean: np.ndarray | None = None  # [C], aligned with its cells
        self._fitted: _Layout | None = None
        # Caches hold the context object itself, so an identity match can never be a recycled id.
        self._context_cache: tuple[Context, np.ndarray, np.ndarray] | None = None
        self._layout_cache: tuple[Context, np.ndarray, _Layout] | None = None
        self._lookup_cache: tuple[Context, _Layout, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None

    def fit(
        self, context: Context, actions: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None
    ) -> TabularRewardModel:
        actions = np.asarray(actions, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        wts = np.ones(len(actions)) if weights is None else np.asarray(weights, dtype=np.float64)
        layout = self._layout(context, actions)
        s, wr = self.shrinkage, wts * rewards
        g = self.global_mean = float(np.sum(wr) / max(np.sum(wts), 1e-12))
        counted = rewards[wts > 0]  # the rows this fit counts (a bootstrap resample leaves some out)
        self.reward_range = (float(counted.min(initial=g)), float(counted.max(initial=g)))

        def shrunk(index: np.ndarray, size: int, parent: np.ndarray) -> np.ndarray:
            total, count = np.bincount(index, wr, minlength=size), np.bincount(index, wts, minlength=size)
            return _shrunk_mean(total, count, s, parent)

        self.key_mean = shrunk(layout.row_key, self.n_keys, np.full(self.n_keys, g))
        self.item_mean = shrunk(layout.row_item, len(layout.items), np.full(len(layout.items), g))
        self.cell_mean = shrunk(layout.row_cell, len(layout.cells), self._parent(layout.cell_item, layout.cell_key))
        self._fitted = layout
        return self

    def predict(self, context: Context) -> np.ndarray:
        """[n, A]: the cell's mean where the (item, key) cell was logged, else its parent."""
        if self._fitted is None or self.cell_mean is None:
            raise RuntimeError("fit() the reward model first")
        index, pair_item, pair_key = self._lookup(context)
        values = np.concatenate([self.cell_mean, self._parent(pair_item, pair_key)])  # [C + U]
        return values[index]  # [n, A]

    def _parent(self, item_pos: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``key_mean[key] + item_mean[item] - g`` (an unlogged item, position -1, adds nothing), clipped."""
        assert self.key_mean is not None and self.item_mean is not None
        g = self.global_mean
        item_shift = np.where(item_pos >= 0, self.item_mean[item_pos] - g, 0.0) if len(self.item_mean) else 0.0
        return np.clip(self.key_mean[keys] + item_shift, *self.reward_range)

    def _items_and_keys(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """[n, A] item ids and keys of every action in every row of ``context``."""
        cache = self._context_cache
        if cache is not None and cache[0] is context:
            return cache[1], cache[2]
        items = candidate_items(context, self.n_actions)
        if self.key_fn is None:
            keys = np.zeros(items.shape, dtype=np.int64)
        else:
            keys = np.asarray(self.key_fn(context, self.n_actions), dtype=np.int64)
            if keys.min(initial=0) < 0 or keys.max(initial=0) >= self.n_keys:
                raise ValueError(f"reward-model keys must be in [0, {self.n_keys})")
        self._context_cache = (context, items, keys)
        return items, keys

    def _layout(self, context: Context, actions: np.ndarray) -> _Layout:
        """The logged items and cells of ``context``'s rows with ``actions`` (sorted unique ids)."""
        cache = self._layout_cache
        if cache is not None and cache[0] is context and np.array_equal(cache[1], actions):
            return cache[2]
        items, keys = self._items_and_keys(context)
        rows = np.arange(len(actions))
        item, key = items[rows, actions], keys[rows, actions]  # [n]
        logged_items, row_item = np.unique(item, return_inverse=True)
        cells, row_cell = np.unique(item * self.n_keys + key, return_inverse=True)
        layout = _Layout(logged_items, cells, row_item, row_cell, key,
                         _find(logged_items, cells // self.n_keys), cells % self.n_keys)
        self._layout_cache = (context, actions.copy(), layout)
        return layout

    def _lookup(self, context: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each (row, action) of ``context`` takes its value from: ``index`` [n, A] into the fitted cells'
        means [C] followed by the parents of the U distinct (item, key) pairs whose cell was not logged, and
        those pairs' item positions (-1: item not logged) and keys [U]."""
        layout = self._fitted
        assert layout is not None
        cache = self._lookup_cache
        if cache is not None and cache[0] is context and cache[1] is layout:
            return cache[2]
        items, keys = self._items_and_keys(context)
        cell_pos = _find(layout.cells, items * self.n_keys + keys)  # [n, A]
        unlogged = cell_pos < 0
        pair = (_find(layout.items, items[unlogged]) + 1) * self.n_keys + keys[unlogged]  # item position + 1, key
        pairs, pair_index = np.unique(pair, return_inverse=True)
        index = cell_pos
        index[unlogged] = len(layout.cells) + pair_index
        found = (index, pairs // self.n_keys - 1, pairs % self.n_keys)
        self._lookup_cache = (context, layout, found)
        return found


@dataclass
class Estimate:
    """One estimator's point estimate, percentile-bootstrap interval and effective sample size."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    ess: float | None = None  # of the importance weights; None for DM (no weights)
    n: int = 0  # rows (episodes for the sequential estimators)

    def covers(self, truth: float) -> bool:
        return self.ci_low <= truth <= self.ci_high


# ---------------------------------------------------------------------------------------------- per step


def importance_weights(pi: np.ndarray, actions: np.ndarray, pscore: np.ndarray) -> np.ndarray:
    """``w_i = pi[i, a_i] / p_i`` ([n])."""
    pscore = np.asarray(pscore, dtype=np.float64)
    if (pscore <= 0).any():
        raise ValueError("behaviour probabilities must be > 0 for every logged action")
    return np.asarray(pi, dtype=np.float64)[np.arange(len(actions)), actions] / pscore


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (0 if every weight is 0)."""
    w = np.asarray(w, dtype=np.float64)
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else 0.0


def _mean(x: np.ndarray, weights: np.ndarray | None) -> float:
    """``mean(x)``, or with row multiplicities ``sum(weights * x) / sum(weights)``."""
    if weights is None:
        return float(np.mean(x))
    return float(np.sum(weights * x)) / float(np.sum(weights))


def ips(w: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``mean(w_i r_i)``; ``weights`` [n]: row multiplicities (None = each row once)."""
    if weights is None:
        return float(np.mean(w * rewards))
    return float(np.sum((w * weights) * rewards)) / float(np.sum(weights))


def snips(w: np.ndarray, rewards: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``sum(w_i r_i) / sum(w_i)`` (NaN if every weight is 0); ``weights``: row multiplicities."""
    wm = w if weights is None else w * weights
    s = float(np.sum(wm))
    return float(np.sum(wm * rewards)) / s if s > 0 else float("nan")


def dm(pi: np.ndarray, q: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``mean(sum_a pi[i, a] q[i, a])``; ``weights``: row multiplicities."""
    return _mean(np.sum(pi * q, axis=1), weights)


def dr(
    pi: np.ndarray,
    q: np.ndarray,
    w: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    weights: np.ndarray | None = None,
) -> float:
    """DM plus ``mean(w_i (r_i - q[i, a_i]))``; ``weights``: row multiplicities."""
    q_logged = q[np.arange(len(actions)), actions]
    return _mean(np.sum(pi * q, axis=1) + w * (rewards - q_logged), weights)


def _check_inputs(pi: np.ndarray, actions: np.ndarray, rewards: np.ndarray, pscore: np.ndarray) -> None:
    n = len(actions)
    if pi.ndim != 2 or pi.shape[0] != n or len(rewards) != n or len(pscore) != n:
        raise ValueError(f"shapes disagree: pi {pi.shape}, actions {len(actions)}, rewards {len(rewards)}, "
                         f"pscore {len(pscore)}")
    if n == 0:
        raise ValueError("no logged rows")
    if actions.min() < 0 or actions.max() >= pi.shape[1]:
        raise ValueError(f"logged actions must be in [0, {pi.shape[1]})")
    if not np.allclose(pi.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row of the target distribution must sum to 1")


def estimate(
    pi: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    pscore: np.ndarray,
    context: Context | None = None,
    reward_model: RewardModel | None = None,
    estimators: Sequence[str] = ESTIMATORS,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[Estimate]:
    """Point estimates and ``1 - alpha`` bootstrap intervals of the per-step value of target ``pi``.

    Args:
        pi: [n, A] target distribution per logged row.
        actions, rewards, pscore: [n] logged action, reward and behaviour probability of the action.
        context: named [n, ...] arrays the reward model reads (DM/DR only).
        reward_model: fitted afresh on the logs and on every bootstrap sample (default: per-item means).
        n_bootstrap: bootstrap samples (rows drawn with replacement; seeded by ``seed``).

    Point estimates and every bootstrap resample go through the public :func:`ips`, :func:`snips`,
    :func:`dm` and :func:`dr`, a resample as row multiplicities (``weights``).
    """
    pi = np.asarray(pi, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.int64)
    rewards = np.asarray(rewards, dtype=np.float64)
    _check_inputs(pi, actions, rewards, np.asarray(pscore))
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise ValueError(f"unknown estimator {unknown[0]!r} (choose from {', '.join(ESTIMATORS)})")
    n = len(actions)
    context = context if context is not None else {"_rows": np.zeros(n)}
    model = reward_model if reward_model is not None else TabularRewardModel(pi.shape[1])
    w = importance_weights(pi, actions, pscore)
    need_q = any(e in ("DM", "DR") for e in estimators)

    def values(m: np.ndarray | None) -> list[float]:
        """The requested estimators, in order, with row multiplicities ``m`` (None = the logs as they are)."""
        q = model.fit(context, actions, rewards, m).predict(context) if need_q else None  # [n, A]
        by_name = {
            "IPS": lambda: ips(w, rewards, m),
            "SNIPS": lambda: snips(w, rewards, m),
            "DM": lambda: dm(pi, q, m),
            "DR": lambda: dr(pi, q, w, actions, rewards, m),
        }
        return [by_name[e]() for e in estimators]

    point = values(None)
    lo, hi = multiplicity_bootstrap_ci(n, values, n_resamples=n_bootstrap, alpha=alpha, seed=[seed, 17])
    ess = effective_sample_size(w)
    return [Estimate(e, point[k], float(lo[k]), float(hi[k]), None if e == "DM" else ess, n)
            for k, e in enumerate(estimators)]


# ---------------------------------------------------------------------------------------------- sequential


def _episode_starts(episode_id: np.ndarray) -> np.ndarray:
    ep = np.asarray(episode_id)
    return np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])


def _per_episode(
    episode_id: np.ndarray, w: np.ndarray, rewards: np.ndarray, gamma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per episode: per-decision weighted return, trajectory weight, discounted return ([E] each)."""
    starts = _episode_starts(episode_id)
    ends = np.r_[starts[1:], len(w)]
    pd = np.empty(len(starts))
    rho_t = np.empty(len(starts))
    ret = np.empty(len(starts))
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        rho = np.cumprod(w[s:e])  # weight of the trajectory up to each step
        disc = gamma ** np.arange(e - s)
        pd[k] = float(np.sum(disc * rho * rewards[s:e]))
        rho_t[k] = rho[-1]
        ret[k] = float(np.sum(disc * rewards[s:e]))
    return pd, rho_t, ret


def per_decision_ips(episode_id: np.ndarray, w: np.ndarray, rewards: np.ndarray, gamma: float = 1.0) -> float:
    """Per-decision importance sampling of the episode return:
    ``mean_episodes sum_t gamma^t (prod_{s<=t} w_s) r_t``. Rows of an episode must be consecutive and in
    step order (as in :mod:`rllib_rec.offpolicy.logs`)."""
    return float(np.mean(_per_episode(episode_id, np.asarray(w, float), np.asarray(rewards, float), gamma)[0]))


def trajectory_ips(episode_id: np.ndarray, w: np.ndarray, rewards: np.ndarray, gamma: float = 1.0) -> float:
    """Trajectory-wise importance sampling: ``mean_episodes (prod_t w_t) sum_t gamma^t r_t``."""
    _, rho, ret = _per_episode(episode_id, np.asarray(w, float), np.asarray(rewards, float), gamma)
    return float(np.mean(rho * ret))


def estimate_sequential(
    episode_id: np.ndarray,
    w: np.ndarray,
    rewards: np.ndarray,
    gamma: float = 1.0,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[Estimate]:
    """Per-decision and trajectory-wise IPS of the target's episode return, with bootstrap intervals over
    episodes; ESS is that of the trajectory weights."""
    pd, rho, ret = _per_episode(episode_id, np.asarray(w, float), np.asarray(rewards, float), gamma)
    per_ep = {"PDIS (episode return)": pd, "trajectory IS (episode return)": rho * ret}
    ess = effective_sample_size(rho)
    # Both are means over episodes: one paired bootstrap, the same resamples of episodes for both.
    lo, hi = bootstrap_ci(tuple(per_ep.values()), _means, n_resamples=n_bootstrap, alpha=alpha,
                          seed=[seed, 19], paired=True)
    return [Estimate(name, float(vals.mean()), float(lo[k]), float(hi[k]), ess, len(vals))
            for k, (name, vals) in enumerate(per_ep.items())]


def _means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """[k, ...]: the mean of each sample along ``axis``."""
    return np.stack([np.mean(s, axis=axis) for s in samples])


# ---------------------------------------------------------------------------------------------- simulated logs


def target_distribution(
    arrays: LogArrays,
    policy: str | None = None,
    env: ECommerceEnv | None = None,
    module: Any = None,
    epsilon: float = 0.0,
) -> np.ndarray:
    """[n, K] target distribution over every logged row's candidate slots: ``random`` (uniform over the row's
    valid candidates), an observation-only baseline (``env`` supplies the catalog), or ``module``'s greedy
    slot; epsilon-greedy with ``epsilon`` (0 = deterministic, i.e. one-hot)."""
    mask = arrays.obs["candidate_mask"]
    if module is None and policy == "random":
        return epsilon_greedy_dist(None, mask, 1.0)
    if module is not None:
        greedy_fn = checkpoint_greedy(module)
    else:
        if policy is None or env is None:
            raise ValueError("give a policy name and an env (for the catalog), or a module")
        greedy_fn = baseline_greedy(policy, env)
    return epsilon_greedy_dist(greedy_fn(arrays.obs, None), mask, epsilon)


def evaluate_logs(
    arrays: LogArrays,
    pi: np.ndarray,
    n_bootstrap: int = 1000,
    seed: int = 0,
    gamma: float = 1.0,
    reward_model: RewardModel | None = None,
) -> list[Estimate]:
    """Per-step IPS/SNIPS/DM/DR of target ``pi`` [n, K] on simulated logs (reward model: (item,
    :func:`history_key`) cells), the logged per-step mean reward for scale, and for multi-step episodes the
    per-decision and trajectory-wise IPS of the episode return beside the logged mean episode return."""
    shape = (arrays.n_rows, arrays.n_candidates)
    if pi.shape != shape:
        raise ValueError(f"target distribution has shape {pi.shape}, logs have {shape} (rows, candidate slots)")
    model = reward_model or TabularRewardModel(arrays.n_candidates, history_key, N_HISTORY_KEYS)
    pscore = arrays.behaviour_prob.astype(np.float64)
    rewards = arrays.reward.astype(np.float64)
    out = estimate(pi, arrays.action, rewards, pscore, arrays.obs, model, n_bootstrap=n_bootstrap, seed=seed)
    out.append(mean_with_ci("logged (behaviour) per step", rewards, n_bootstrap, seed))
    if (arrays.step > 0).any():
        w = importance_weights(pi, arrays.action, pscore)
        out += estimate_sequential(arrays.episode_id, w, rewards, gamma, n_bootstrap=n_bootstrap, seed=seed)
        _, _, ret = _per_episode(arrays.episode_id, np.ones(len(w)), rewards, gamma)
        out.append(mean_with_ci("logged (behaviour) episode return", ret, n_bootstrap, seed))
    return out


def mean_with_ci(name: str, values: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> Estimate:
    """A plain mean with a percentile-bootstrap 95% interval (e.g. the logging policy's own value)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = mean_ci(values, n_resamples=n_bootstrap, seed=[seed, 29])
    return Estimate(name, float(values.mean()), lo, hi, None, len(values))


# ---------------------------------------------------------------------------------------------- report


# An importance-weighted estimate whose weights' effective sample size is below this fraction of its rows
# (episodes, for the episode-return estimators) rests on a handful of them: it is flagged in the table and
# warned about (e.g. trajectory IS with an ESS of 5 out of 200 episodes).
LOW_ESS_FRACTION = 0.1


def low_ess(e: Estimate) -> bool:
    """Whether ``e``'s effective sample size is below :data:`LOW_ESS_FRACTION` of its ``n``."""
    return e.ess is not None and e.n > 0 and e.ess < LOW_ESS_FRACTION * e.n


def estimates_table(estimates: Sequence[Estimate]) -> str:
    """``estimator  estimate  95% CI  ESS`` as a plain-text table (a low ESS is marked ``LOW``)."""

    rows = []
    for e in estimates:
        ess = "-" if e.ess is None else f"{e.ess:,.1f}" + (" LOW" if low_ess(e) else "")
        rows.append([e.name, f"{e.value:.6g}", f"[{e.ci_low:#.4g}, {e.ci_high:#.4g}]", ess, f"{e.n:,}"])
    return format_table(["estimator", "estimate", "95% CI", "ESS", "n"], rows)


LOG_AGAIN_ADVICE = "log with a policy closer to the target, e.g. a smaller epsilon"


def low_ess_warnings(estimates: Sequence[Estimate], advice: str = LOG_AGAIN_ADVICE) -> list[str]:
    """One ``warning:`` line per estimate with a low effective sample size (see :data:`LOW_ESS_FRACTION`),
    ending with ``advice`` in brackets (a fixed dataset cannot be logged again)."""
    return [f"warning: {e.name}: effective sample size {e.ess:,.1f} of {e.n:,} ({e.ess / e.n:.1%} < "
            f"{LOW_ESS_FRACTION:.0%}); the estimate rests on a few heavily weighted samples ({advice})"
            for e in estimates if low_ess(e)]
