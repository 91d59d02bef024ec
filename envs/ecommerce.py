"""``ECommerceEnv``: the simulated shop as a gymnasium environment.

Each step the agent recommends one catalog item (action = item index). The observation is the user's
recent clickstream — the last ``history_length`` events, each an item token (item index + 1; 0 = padding)
and an event code (see :mod:`envs.response`), left-padded — plus the mask of this step's candidates.
Ignored recommendations are in the history too: without them a greedy learner never discovers what the
user wants. Everything else about the user is hidden.

With ``item_dropout`` > 0 each item is out of stock for a whole session with that probability (at least one
always-offered item stays); the mask shows it. Training uses this as temporally consistent exploration
(``dqn.explore_item_dropout``): whole sessions played without some items, which step-wise epsilon never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.catalog import Catalog
from envs.config import EnvConfig, make_env_config
from envs.response import EVENT_NAMES, N_EVENT_TYPES, ORGANIC, RewardFunction, make_response_model
from envs.users import UserSampler, UserState

__all__ = ["ECommerceEnv", "CandidateDiscrete", "InvalidActionError"]


class InvalidActionError(ValueError):
    """The action is not an item index or not among this step's candidates."""


class CandidateDiscrete(spaces.Discrete):
    """``Discrete(n)`` whose unmasked ``sample()`` only returns actions that are valid in *every* state.

    With per-step candidates, an arbitrary item is usually not on offer, and the env refuses it. Generic
    code (gymnasium's env checker, random smoke tests) calls ``action_space.sample()`` without a mask and
    may use the action in a later state, so unmasked samples come from the always-offered items (the
    featured best-sellers). Pass ``mask=obs["action_mask"]`` to sample among the current candidates.
    """

    def __init__(self, n: int, always_valid: np.ndarray, seed: int | None = None) -> None:
        super().__init__(n, seed=seed)
        self._always_valid = always_valid  # int8 [n]

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        if mask is None and probability is None:
            mask = self._always_valid
        return super().sample(mask=mask, probability=probability)


class ECommerceEnv(gym.Env[dict[str, np.ndarray], int]):
    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self, config: EnvConfig | Mapping[str, Any] | str | None = None, render_mode: str | None = None
    ) -> None:
        # RLlib passes an EnvContext (a dict subclass); a preset name or an EnvConfig work too.
        self.config: EnvConfig = make_env_config(dict(config) if isinstance(config, Mapping) else config, "env")
        cfg = self.config
        self.render_mode = render_mode
        self.catalog = Catalog(cfg.catalog)
        self.user_sampler = UserSampler(cfg.users, self.catalog, cfg.catalog.seed)
        self.reward_fn = RewardFunction(cfg.rewards)
        self.response = make_response_model(cfg.response, self.catalog, self.reward_fn)
        n, h = cfg.catalog.n_items, cfg.history_length
        self.n_items, self.history_length = n, h
        self.observation_space = spaces.Dict(
            {
                "items": spaces.Box(0, n, shape=(h,), dtype=np.int32),
                "events": spaces.Box(0, N_EVENT_TYPES - 1, shape=(h,), dtype=np.int32),
                "action_mask": spaces.Box(0, 1, shape=(n,), dtype=np.int8),
            }
        )
        self.user: UserState | None = None
        self.t = 0
        self._items = np.zeros(h, dtype=np.int32)
        self._events = np.zeros(h, dtype=np.int32)
        self._mask = np.ones(n, dtype=np.int8)
        self._always_offered = np.zeros(n, dtype=np.int8)  # featured best-sellers, or every item
        if cfg.n_candidates:
            self._always_offered[self.catalog.by_popularity[: cfg.n_featured]] = 1
        else:
            self._always_offered[:] = 1
        self._in_stock = np.ones(n, dtype=np.int8)  # this session's stock (item_dropout)
        # Offered at every step of *this* session; updated in place, so the action space's unmasked samples
        # stay valid whatever is out of stock.
        self._featured = self._always_offered.copy()
        self.action_space = CandidateDiscrete(n, self._featured)

    # -- gymnasium API ---------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        # The user is drawn first, so the same seed gives the same user whatever the policy does later.
        self.user = self.user_sampler.sample(rng)
        self.t = 0
        self._items.fill(0)
        self._events.fill(0)
        lo, hi = self.config.users.initial_history
        for _ in range(int(rng.integers(lo, hi + 1))):
            self._push(self.response.sample_organic(self.user, rng), ORGANIC)
        self._draw_stock(rng)
        self._draw_candidates()
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.user is None:
            raise RuntimeError("ECommerceEnv.step() called before reset()")
        item = self._check_action(action)
        rng = self.np_random
        event = self.response.respond(self.user, item, self.t, rng)
        reward = self.reward_fn(event)
        self._push(item, event)
        browsed, shifted = self.response.tick(self.user, rng)
        for b in browsed:
            self._push(b, ORGANIC)
        self.t += 1
        terminated = bool(self.config.response.churn and self.user.patience <= 0.0)
        truncated = bool(not terminated and self.t >= self.config.max_steps)
        self._draw_candidates()
        info = {"event": event, "interest_shift": shifted, "churned": terminated}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.user is None:
            return None
        events = [f"{EVENT_NAMES[e]}:{i - 1}" for i, e in zip(self._items, self._events, strict=True) if e]
        return f"t={self.t} patience={self.user.patience:.2f} history=[{', '.join(events)}]"

    # -- helpers ---------------------------------------------------------------------------------------------
    @property
    def candidates(self) -> np.ndarray:
        """Item indices that may be recommended this step."""
        return np.flatnonzero(self._mask)

    def _check_action(self, action: Any) -> int:
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, np.integer):
            action = int(action)
        if not isinstance(action, int) or isinstance(action, bool) or not 0 <= action < self.n_items:
            raise InvalidActionError(f"action {action!r} is not an item index in [0, {self.n_items})")
        if not self._mask[action]:
            raise InvalidActionError(f"action {action} is masked: item {action} is not a candidate this step")
        return action

    def _push(self, item: int, event: int) -> None:
        self._items[:-1] = self._items[1:]
        self._events[:-1] = self._events[1:]
        self._items[-1] = item + 1
        self._events[-1] = event

    def _draw_stock(self, rng: np.random.Generator) -> None:
        p = self.config.item_dropout
        if p > 0:  # only then is the RNG used, so p == 0 leaves every seeded session as it was
            self._in_stock[:] = rng.random(self.n_items) >= p
            offered = np.flatnonzero(self._always_offered)
            if not self._in_stock[offered].any():  # keep one, so every step has a candidate
                self._in_stock[offered[int(rng.integers(len(offered)))]] = 1
        self._featured[:] = self._always_offered & self._in_stock
        self._mask[:] = self._featured

    def _draw_candidates(self) -> None:
        k = self.config.n_candidates
        if k == 0:
            return  # every item in stock, all session: the mask set by _draw_stock holds
        rng = self.np_random
        # Featured best-sellers, then half of the rest by popularity (what a retrieval stage surfaces) and
        # half uniformly (coverage of the long tail); duplicates collapse, so a step may offer fewer than k.
        k -= self.config.n_featured
        n_pop = k // 2
        cands = np.concatenate([self.catalog.sample_popular(n_pop, rng), rng.integers(0, self.n_items, k - n_pop)])
        self._mask[:] = self._featured
        self._mask[cands] = self._in_stock[cands]

    def _obs(self) -> dict[str, np.ndarray]:
        return {"items": self._items.copy(), "events": self._events.copy(), "action_mask": self._mask.copy()}
