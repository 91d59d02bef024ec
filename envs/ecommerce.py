"""``ECommerceEnv``: the simulated shop as a gymnasium environment over a per-step candidate set.

Each step the shop offers K candidate slots and the agent picks one (action = slot index, ``Discrete(K)``);
the env recommends that slot's item. ``K = n_candidates``, or ``n_items`` when ``n_candidates`` is 0 (every
item is a candidate: ``candidates`` is ``arange(N)`` at every step, so slot index == item id, and the env is
the item-indexed shop it always was). A step costs O(K + history length) whatever the catalog size.

Observation (a ``Dict``, static shapes; H = ``history_length``, N = ``n_items``):

- ``items`` int32 [H]: the user's recent clickstream, item token = item id + 1 (0 = padding), oldest first,
  left-padded;
- ``events`` int32 [H]: each history entry's event code (see :mod:`envs.response`; 0 = padding). Ignored
  recommendations are in the history too: without them a greedy learner never discovers what the user wants;
- ``candidates`` int32 [K]: item ids (0-based) of this step's candidate slots;
- ``candidate_mask`` int8 [K]: 1 iff the slot is a valid candidate this step. Slots beyond the distinct
  candidates (id 0) and out-of-stock items (their own id) are 0.

Everything else about the user is hidden. ``info["item"]`` is the recommended item id; :meth:`ECommerceEnv.item_of`
maps a slot to its item before the step, :attr:`ECommerceEnv.candidate_items` lists the valid items.

Candidates (K < N) are what a retrieval stage would return (:mod:`envs.candidates`): the ``n_featured``
best-sellers in the first slots of every step, then the other slots in shares ``candidates_popular`` (drawn by
popularity), ``candidates_related`` (around the session's last ``candidates_history`` engaged events, i.e. not
ignored: half items of the same category drawn by popularity, half "co-visited" items, the next few after the
history item in a fixed per-category ordering of the catalog; popular draws for a cold-start history) and
``candidates_uniform`` (uniform over the catalog, for exploration). Duplicates collapse (first occurrence kept),
so a step may offer fewer than K; the leftover slots are padding (mask 0).

With ``item_dropout`` p > 0 each item is out of stock for a whole session with probability p. For K < N it is
decided lazily per candidate by a hash of (a per-session salt, item id), so nothing is drawn per item at reset;
for K = N one draw per item at reset, as always. At least one featured (K = N: any) item stays in stock, so every
step has a valid candidate. At p = 0 the RNG is not touched, so every seeded session is what it was. Training
uses this as temporally consistent exploration (``dqn.explore_item_dropout``): whole sessions played without some
items, which step-wise epsilon never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.candidates import RetrievalMix
from envs.catalog import Catalog
from envs.config import EnvConfig, make_env_config
from envs.response import EVENT_NAMES, N_EVENT_TYPES, ORGANIC, RewardFunction, make_response_model
from envs.users import UserSampler, UserState

__all__ = ["OBS_KEYS", "ECommerceEnv", "CandidateDiscrete", "InvalidActionError"]

# The observation's keys, in the order everything downstream stacks, logs and feeds them.
OBS_KEYS = ("items", "events", "candidates", "candidate_mask")

_HISTORY_SLACK = 64  # pushes between two moves of the history buffer

# splitmix64 constants (the per-session stock hash)
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)


class InvalidActionError(ValueError):
    """The action is not a candidate slot index, or its slot is not a valid candidate this step."""


class CandidateDiscrete(spaces.Discrete):
    """``Discrete(K)`` (a candidate slot) whose unmasked ``sample()`` only returns slots valid in *every* state.

    With per-step candidates, an arbitrary slot may be padding or out of stock, and the env refuses it. Generic
    code (gymnasium's env checker, random smoke tests) calls ``action_space.sample()`` without a mask and may
    use the action in a later state, so unmasked samples come from the slots valid at every step of the session
    (the featured best-sellers in stock; with K = N every in-stock item). Pass ``mask=obs["candidate_mask"]`` to
    sample among the current step's valid slots.
    """

    def __init__(self, n: int, always_valid: np.ndarray, seed: int | None = None) -> None:
        super().__init__(n, seed=seed)
        self._always_valid = always_valid  # int8 [K], updated in place by the env at each reset

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        if mask is None and probability is None:
            mask = self._always_valid
        return super().sample(mask=mask, probability=probability)


class ECommerceEnv(gym.Env[dict[str, np.ndarray], int]):
    """The shop. ``n_items`` = N, ``n_candidates`` = K (slots per step = ``action_space.n``)."""

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self, config: EnvConfig | Mapping[str, Any] | str | None = None, render_mode: str | None = None
    ) -> None:
        # RLlib passes an EnvContext (a dict subclass); a preset name or an EnvConfig work too.
        self.config: EnvConfig = make_env_config(dict(config) if isinstance(config, Mapping) else config, "env")
        cfg = self.config
        self.render_mode = render_mode
        self.catalog = Catalog.shared(cfg.catalog)  # one per process for equal catalog configs (read-only)
        self.user_sampler = UserSampler(cfg.users, self.catalog, cfg.catalog.seed)
        self.reward_fn = RewardFunction(cfg.rewards)
        self.response = make_response_model(cfg.response, self.catalog, self.reward_fn)
        n, h, k = cfg.catalog.n_items, cfg.history_length, cfg.n_slots
        self.n_items, self.n_candidates, self.history_length = n, k, h
        self.full_catalog = k == n  # every item is a candidate, slot index == item id
        self.observation_space = spaces.Dict(
            {
                "items": spaces.Box(0, n, shape=(h,), dtype=np.int32),
                "events": spaces.Box(0, N_EVENT_TYPES - 1, shape=(h,), dtype=np.int32),
                "candidates": spaces.Box(0, n - 1, shape=(k,), dtype=np.int32),
                "candidate_mask": spaces.Box(0, 1, shape=(k,), dtype=np.int8),
            }
        )
        self.user: UserState | None = None
        self.t = 0
        # [2, H + slack]: item tokens, event codes. The history is the H columns before _end; a push writes at
        # _end and moves it on, and only when the buffer is full are the last H - 1 columns moved to the front.
        self._history = np.zeros((2, h + _HISTORY_SLACK), dtype=np.int32)
        self._end = h
        self._cands = np.zeros(k, dtype=np.int32)  # [K] this step's candidate item ids
        self._mask = np.zeros(k, dtype=np.int8)  # [K] valid slots this step
        # Valid at every step of *this* session; updated in place, so the action space's unmasked samples stay
        # valid whatever is out of stock.
        self._always_valid = np.zeros(k, dtype=np.int8)
        self.action_space = CandidateDiscrete(k, self._always_valid)
        if self.full_catalog:
            self._cands[:] = np.arange(n)
            self._in_stock = np.ones(n, dtype=np.int8)  # [N] = [K]: this session's stock
        else:
            self.retrieval = RetrievalMix(cfg, self.catalog)  # this step's candidates (envs.candidates)
            self._featured = self.retrieval.featured  # [F], the first slots of every step
            self._featured_stock = np.ones(len(self._featured), dtype=np.int8)  # [F] their stock this session
            self._salt = np.uint64(0)  # per-session stock salt (item_dropout > 0)
            self._mask_buf = self._mask
            self._prefix_masks = np.tri(k + 1, k, -1, dtype=np.int8)  # row m: the first m slots valid
            self._prefix_masks.setflags(write=False)

    # -- gymnasium API ---------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        rng = self.np_random
        # The user is drawn first, so the same seed gives the same user whatever the policy does later.
        self.user = self.user_sampler.sample(rng)
        self.t = 0
        self._history.fill(0)
        self._end = self.history_length
        if not self.full_catalog:
            self.retrieval.reset(reseeded=seed is not None)
        lo, hi = self.config.users.initial_history
        self._push_organic(self.response.sample_organic_many(self.user, rng, int(rng.integers(lo, hi + 1))))
        self._draw_stock(rng)
        self._draw_candidates()
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self.user is None:
            raise RuntimeError("ECommerceEnv.step() called before reset()")
        item = self.item_of(action)
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
        info = {"event": event, "item": item, "interest_shift": shifted, "churned": terminated}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.user is None:
            return None
        items, events = self._window().tolist()
        events = [f"{EVENT_NAMES[e]}:{i - 1}" for i, e in zip(items, events, strict=True) if e]
        return f"t={self.t} patience={self.user.patience:.2f} history=[{', '.join(events)}]"

    # -- public helpers --------------------------------------------------------------------------------------
    def item_of(self, action: Any) -> int:
        """The item id in candidate slot ``action`` this step; :class:`InvalidActionError` for a slot outside
        ``[0, K)`` or one that is masked (padding or out of stock)."""
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, np.integer):
            action = int(action)
        k = self.n_candidates
        if not isinstance(action, int) or isinstance(action, bool) or not 0 <= action < k:
            raise InvalidActionError(f"action {action!r} is not a candidate index in [0, {k})")
        item = int(self._cands[action])
        if not self._mask[action]:
            raise InvalidActionError(
                f"action {action} is masked: candidate slot {action} (item {item}) is not on offer this step"
            )
        return item

    @property
    def candidate_items(self) -> np.ndarray:
        """Item ids of this step's valid candidates, in slot order."""
        return self._cands[self._mask.astype(bool)]

    def in_stock(self, items: np.ndarray) -> np.ndarray:
        """[M] bool: whether each item id is in stock this session (the same answer at every step)."""
        items = np.asarray(items)
        if self.full_catalog:
            return self._in_stock[items].astype(bool)
        f = len(self._featured)
        rank = self.catalog.popularity_rank[items]
        featured = rank < f  # featured items' stock is settled at reset (one of them is kept)
        out = np.ones(items.shape, dtype=bool)
        if self.config.item_dropout > 0:
            out = self._stock_uniform(items) >= self.config.item_dropout
        out[featured] = self._featured_stock[rank[featured]].astype(bool)
        return out

    # -- internals -------------------------------------------------------------------------------------------
    def _push(self, item: int, event: int) -> None:
        hist, end = self._history, self._end
        if end == hist.shape[1]:
            keep = self.history_length - 1
            hist[:, :keep] = hist[:, end - keep : end]
            end = keep
        hist[0, end] = item + 1
        hist[1, end] = event
        self._end = end + 1
        if not self.full_catalog:
            self.retrieval.observe(item, event)

    def _push_organic(self, items: list[int]) -> None:
        """Organic browses into an empty history (a session's initial history): the last H of them, at the end."""
        k = min(len(items), self.history_length)
        if k:
            end = self._end  # an empty history: nothing pushed since reset
            self._history[0, end - k : end] = np.asarray(items[-k:]) + 1
            self._history[1, end - k : end] = ORGANIC
        if not self.full_catalog:
            for item in items:
                self.retrieval.observe(item, ORGANIC)

    def _stock_uniform(self, items: np.ndarray) -> np.ndarray:
        """A uniform in [0, 1) per item, fixed for the session: splitmix64 of (session salt, item id)."""
        x = np.asarray(items, dtype=np.uint64) * _GOLDEN + self._salt
        x ^= x >> _S30
        x *= _MIX1
        x ^= x >> _S27
        x *= _MIX2
        x ^= x >> _S31
        return (x >> _S11) * 2.0**-53

    def _draw_stock(self, rng: np.random.Generator) -> None:
        p = self.config.item_dropout
        if self.full_catalog:  # one draw per item (N = K), as the item-indexed shop always did
            if p > 0:  # only then is the RNG used, so p == 0 leaves every seeded session as it was
                self._in_stock[:] = rng.random(self.n_items) >= p
                if not self._in_stock.any():  # keep one, so every step has a candidate
                    self._in_stock[int(rng.integers(self.n_items))] = 1
            self._always_valid[:] = self._in_stock
            self._mask[:] = self._in_stock
            return
        f = len(self._featured)
        if p > 0:  # lazily per candidate: only a salt is drawn here (and only when p > 0)
            self._salt = np.uint64(rng.integers(0, 2**63, dtype=np.uint64))
            self._featured_stock[:] = self._stock_uniform(self._featured) >= p
            if not self._featured_stock.any():  # keep one featured item, so every step has a candidate
                self._featured_stock[int(rng.integers(f))] = 1
        self._always_valid[:f] = self._featured_stock  # the featured slots are the first F of every step

    def _draw_candidates(self) -> None:
        if self.full_catalog:
            return  # every item in stock, all session: the mask set by _draw_stock holds
        m = self.retrieval.draw(self.np_random, self._cands)  # M <= K distinct, the F featured items first
        f, cands = len(self._featured), self._cands
        p = self.config.item_dropout
        if p == 0:  # every candidate in stock: the first m slots (a row of a constant table)
            self._mask = self._prefix_masks[m]
        else:
            mask = self._mask = self._mask_buf
            mask[:f] = self._featured_stock
            mask[f:m] = self._stock_uniform(cands[f:m]) >= p
            mask[m:] = 0

    def _window(self) -> np.ndarray:
        """[2, H] view: the history's item tokens and event codes, oldest first."""
        return self._history[:, self._end - self.history_length : self._end]

    def _obs(self) -> dict[str, np.ndarray]:
        history = self._window().copy()
        return {
            "items": history[0],
            "events": history[1],
            "candidates": self._cands.copy(),
            "candidate_mask": self._mask.copy(),
        }
