"""Response models: how a hidden user reacts to one recommended item, and how that changes the user.

Everything takes item ids (``0..n_items-1``) and works over the items it is given — one recommended item, or
a step's K candidates for the oracles — never over the whole catalog.

Events (also the observation's event codes): 0 padding, 1 organic browse, 2 shown-ignored, 3 view,
4 click, 5 purchase. A purchase implies a click; the recorded event is the deepest funnel stage reached.

``FunnelResponse`` is the shop: notice (view) -> click -> purchase, with fatigue, interest drift and shifts,
engagement growth, and patience/churn. Clickbait items (high appeal, low quality) pay now and cost later:
a click on a low-quality item drains patience and purchase intent, so a myopic policy churns users sooner.
``NotebookResponse`` is the seed notebook's click model, for the ``seed`` preset.
"""

from __future__ import annotations

import numpy as np

from envs.catalog import Catalog
from envs.config import ResponseConfig, RewardConfig
from envs.users import UserState

__all__ = [
    "PAD",
    "ORGANIC",
    "IGNORED",
    "VIEW",
    "CLICK",
    "PURCHASE",
    "EVENT_NAMES",
    "N_EVENT_TYPES",
    "RewardFunction",
    "FunnelResponse",
    "NotebookResponse",
    "make_response_model",
]

PAD, ORGANIC, IGNORED, VIEW, CLICK, PURCHASE = range(6)
_NEVER = -(10**9)  # "last shown" step of an item never recommended
EVENT_NAMES = ("pad", "organic", "ignored", "view", "click", "purchase")
N_EVENT_TYPES = len(EVENT_NAMES)


class RewardFunction:
    """Reward of the event a recommendation produced (organic browsing is not the agent's doing)."""

    def __init__(self, config: RewardConfig) -> None:
        self.config = config
        self.table = np.zeros(N_EVENT_TYPES)
        self.table[IGNORED] = config.none
        self.table[VIEW] = config.view
        self.table[CLICK] = config.click
        self.table[PURCHASE] = config.purchase
        self._values = self.table.tolist()

    def __call__(self, event: int) -> float:
        return self._values[event]


class FunnelResponse:
    """view -> click -> purchase funnel over a :class:`Catalog`, mutating a :class:`UserState`."""

    def __init__(self, config: ResponseConfig, catalog: Catalog, rewards: RewardFunction) -> None:
        self.config, self.catalog, self.rewards = config, catalog, rewards

    # -- probabilities (vectorised over candidate items; used by the simulator and by the oracles) ----------
    def recently_shown(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray | None:
        """[K] bool: each item was recommended within ``repeat_window`` steps of ``t`` (None: nothing shown yet).

        O(K) dictionary look-ups: the user remembers what was shown this session, not a catalog-sized array."""
        last = user.last_shown
        if not last:
            return None
        w, get = self.config.repeat_window, last.get
        return np.fromiter((t - get(i, _NEVER) <= w for i in items.tolist()), dtype=bool, count=len(items))

    def probabilities(
        self, user: UserState, items: np.ndarray, t: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(notice), P(click | notice), P(purchase | click) for each item id in ``items`` ([K] each)."""
        cfg, cat = self.config, self.catalog
        items = np.asarray(items)
        c = cat.category[items]
        match = user.interest[c] / user.interest_max  # [K] in (0, 1]
        if cfg.fatigue:
            damp = np.exp(-user.fatigue[c])
            recent = self.recently_shown(user, items, t)
            if recent is not None:
                damp = np.where(recent, damp * cfg.repeat_penalty, damp)
        else:
            damp = 1.0
        p_notice = np.minimum(cfg.view_base + cfg.view_gain * match * damp, 0.98)
        p_click = np.minimum(cat.appeal[items] * user.click_propensity * (0.2 + 0.8 * match) * damp, 0.95)
        if cfg.purchases:
            p_buy = np.minimum(user.purchase_propensity * cat.quality[items] * (1.3 - cat.price[items]), 0.9)
        else:
            p_buy = np.zeros(len(items))
        return p_notice, p_click, p_buy

    def expected_reward(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray:
        """E[reward] of recommending each item now ([K])."""
        pv, pc, pb = self.probabilities(user, items, t)
        r = self.rewards.table
        r_seen = r[VIEW] if self.config.views else r[IGNORED]
        return (1 - pv) * r[IGNORED] + pv * ((1 - pc) * r_seen + pc * ((1 - pb) * r[CLICK] + pb * r[PURCHASE]))

    def expected_patience_change(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray:
        """E[patience change] of recommending each item now ([K]); zero when churn is off."""
        cfg = self.config
        if not cfg.churn:
            return np.zeros(len(items))
        pv, pc, pb = self.probabilities(user, items, t)
        seen_cost = cfg.view_cost if cfg.views else cfg.ignore_cost
        on_click = cfg.quality_gain * (self.catalog.quality[items] - 0.5) + pb * cfg.purchase_gain
        return -(1 - pv) * cfg.ignore_cost - pv * (1 - pc) * seen_cost + pv * pc * on_click

    def expected_trust_change(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray:
        """E[purchase-propensity change] of recommending each item now ([K]); clickbait erodes trust."""
        cfg = self.config
        if not (cfg.engagement_growth and cfg.purchases):
            return np.zeros(len(items))
        pv, pc, _ = self.probabilities(user, items, t)
        return pv * pc * cfg.trust_growth * (self.catalog.quality[items] - 0.5)

    def probabilities_of(self, user: UserState, item: int, t: int) -> tuple[float, float, float]:
        """:meth:`probabilities` of one item as Python floats: the same operations in the same order (so the
        same numbers, bit for bit), without the per-call cost of numpy on 1-element arrays."""
        cfg, cat = self.config, self.catalog
        c = cat.category.item(item)  # .item(): a Python scalar without a numpy scalar in between
        match = user.interest.item(c) / user.interest_max
        if cfg.fatigue:
            # np.exp, not math.exp: numpy's SIMD exp (AVX-512) and libm's differ in the last bit on some CPUs.
            damp = float(np.exp(-user.fatigue.item(c)))
            if t - user.last_shown.get(item, _NEVER) <= cfg.repeat_window:
                damp = damp * cfg.repeat_penalty
        else:
            damp = 1.0
        p_notice = min(cfg.view_base + cfg.view_gain * match * damp, 0.98)
        p_click = min(cat.appeal.item(item) * user.click_propensity * (0.2 + 0.8 * match) * damp, 0.95)
        if cfg.purchases:
            p_buy = min(user.purchase_propensity * cat.quality.item(item) * (1.3 - cat.price.item(item)), 0.9)
        else:
            p_buy = 0.0
        return p_notice, p_click, p_buy

    # -- one recommendation ----------------------------------------------------------------------------------
    def respond(self, user: UserState, item: int, t: int, rng: np.random.Generator) -> int:
        """Sample the user's reaction to ``item`` at step ``t``, update the user, return the event code."""
        cfg, cat = self.config, self.catalog
        item = int(item)
        pv, pc, pb = self.probabilities_of(user, item, t)
        u_notice, u_click, u_buy = rng.random(3).tolist()
        c = cat.category.item(item)
        if cfg.fatigue:
            user.fatigue[c] += cfg.fatigue_rate
        user.last_shown[item] = t

        if u_notice >= pv:
            event = IGNORED
        elif u_click >= pc:
            event = VIEW if cfg.views else IGNORED
        else:
            event = PURCHASE if u_buy < pb else CLICK

        quality = cat.quality.item(item)
        if cfg.churn:
            if event == IGNORED:
                user.patience -= cfg.ignore_cost
            elif event == VIEW:
                user.patience -= cfg.view_cost
            else:
                user.patience += cfg.quality_gain * (quality - 0.5)
                if event == PURCHASE:
                    user.patience += cfg.purchase_gain
        if event >= CLICK:
            if cfg.engagement_growth:
                user.click_propensity = min(1.0, user.click_propensity + cfg.click_growth)
                pp = user.purchase_propensity + cfg.trust_growth * (quality - 0.5)
                user.purchase_propensity = min(1.0, max(0.0, pp))
            if cfg.interest_drift:
                user.move_interest(c, cfg.drift_rate)
        return event

    def tick(self, user: UserState, rng: np.random.Generator) -> tuple[list[int], bool]:
        """Between recommendations: fatigue decays, intent may shift, the user may browse organically.

        Returns the organically browsed items (appended to the history) and whether interest shifted.
        """
        cfg = self.config
        if cfg.fatigue:
            user.fatigue *= cfg.fatigue_decay
        browsed: list[int] = []
        shifted = False
        u_shift, u_organic = rng.random(2).tolist()
        n_cat = self.catalog.n_categories
        if cfg.interest_shift and n_cat > 1 and u_shift < cfg.shift_prob:
            current = int(np.argmax(user.interest))
            new = int(rng.integers(n_cat - 1))
            new += new >= current  # any category but the current favourite
            user.move_interest(new, cfg.shift_strength)
            shifted = True
            if cfg.organic_browsing:  # a new intent shows up as the user looking for it
                browsed.append(self.catalog.sample_in_category(new, rng))
        if cfg.organic_browsing and u_organic < cfg.organic_prob:
            browsed.append(self.sample_organic(user, rng))
        return browsed, shifted

    def sample_organic(self, user: UserState, rng: np.random.Generator) -> int:
        """An item the user browses on their own: category by interest, item by popularity."""
        return self.catalog.sample_in_category(user.category_at(rng.random()), rng)

    def sample_organic_many(self, user: UserState, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` organic browses in a row (the interest does not move in between): the same draws, in the same
        order, and the same items as ``n`` calls of :meth:`sample_organic`, with the per-call work done once."""
        if n <= 0:
            return []
        cat = self.catalog
        u = rng.random(2 * n).tolist()  # the stream of n x (category draw, item draw)
        return [cat.item_in_category(user.category_at(a), b) for a, b in zip(u[0::2], u[1::2], strict=True)]


class NotebookResponse(FunnelResponse):
    """The seed notebook's model: the item whose index equals the user's location is clicked with
    probability a + b * propensity, any other item with a fixed probability; clicks raise the propensity.
    Only clicks and ignored recommendations happen."""

    def probabilities(
        self, user: UserState, items: np.ndarray, t: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = self.config.notebook_match_click
        p_click = np.where(items == user.location, a + b * user.click_propensity, self.config.notebook_other_click)
        ones = np.ones(len(items))
        return ones, np.minimum(p_click, 1.0), np.zeros(len(items))

    def probabilities_of(self, user: UserState, item: int, t: int) -> tuple[float, float, float]:
        pv, pc, pb = self.probabilities(user, np.array([item]), t)
        return float(pv[0]), float(pc[0]), float(pb[0])

    def expected_patience_change(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray:
        return np.zeros(len(items))

    def expected_trust_change(self, user: UserState, items: np.ndarray, t: int) -> np.ndarray:
        return np.zeros(len(items))

    def sample_organic_many(self, user: UserState, rng: np.random.Generator, n: int) -> list[int]:
        return [self.sample_organic(user, rng) for _ in range(n)]

    def sample_organic(self, user: UserState, rng: np.random.Generator) -> int:
        """The user mostly browses the product that matches them (how the clickstream reveals intent)."""
        if rng.random() < self.config.notebook_organic_match:
            return user.location
        return int(rng.integers(self.catalog.n_items))

    def respond(self, user: UserState, item: int, t: int, rng: np.random.Generator) -> int:
        item = int(item)
        _, pc, _ = self.probabilities(user, np.array([item]), t)
        user.last_shown[item] = t
        if rng.random() < pc[0]:
            if self.config.engagement_growth:
                user.click_propensity = min(1.0, user.click_propensity + self.config.click_growth)
            return CLICK
        return IGNORED


def make_response_model(config: ResponseConfig, catalog: Catalog, rewards: RewardFunction) -> FunnelResponse:
    cls = NotebookResponse if config.model == "notebook" else FunnelResponse
    return cls(config, catalog, rewards)
