"""Users: hidden demographics -> category interests, plus the engagement state the response model moves.

Demographics (age in [0, 1], gender in {0, 1}, one of ``n_locations`` locations, as in the seed notebook)
set a prior over category interests through a fixed random linear map; each user adds personal noise.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from envs.catalog import Catalog
from envs.config import UserConfig

__all__ = ["UserState", "UserSampler"]


@dataclass
class UserState:
    """Everything about the user that the agent cannot see (oracles may)."""

    age: float
    gender: int
    location: int
    interest: np.ndarray  # [C] probabilities over categories
    fatigue: np.ndarray  # [C] >= 0
    click_propensity: float
    purchase_propensity: float
    patience: float
    # item id -> step at which it was last recommended (never recommended: absent). At most one entry per step
    # of the session, so it is bounded by the session length, not the catalog.
    last_shown: dict[int, int] = field(default_factory=dict)
    # Derived from ``interest`` and read at every step, so kept until :meth:`move_interest` changes it (the one
    # way the simulator does): its maximum and its cumulative sums (the same numbers as np.max / np.cumsum).
    _interest_max: float | None = field(default=None, init=False, repr=False, compare=False)
    _interest_cdf: list[float] | None = field(default=None, init=False, repr=False, compare=False)

    def move_interest(self, category: int, amount: float) -> None:
        """Move ``amount`` of interest onto ``category``: every interest shrinks by ``1 - amount``, then
        ``category`` gains ``amount`` (the sum stays 1)."""
        self.interest *= 1 - amount
        self.interest[category] += amount
        self._interest_max = self._interest_cdf = None

    @property
    def interest_max(self) -> float:
        """``interest.max()``."""
        if self._interest_max is None:
            self._interest_max = float(self.interest.max())
        return self._interest_max

    def category_at(self, u: float) -> int:
        """The category at quantile ``u`` in [0, 1) of ``interest`` (inverse-CDF draw, clipped to the last)."""
        cdf = self._interest_cdf
        if cdf is None:
            cdf = self._interest_cdf = list(accumulate(self.interest.tolist()))
        return min(bisect_right(cdf, u * cdf[-1]), len(cdf) - 1)


class UserSampler:
    """Draws new users; the demographics -> interest map is fixed by the catalog seed."""

    def __init__(self, config: UserConfig, catalog: Catalog, seed: int) -> None:
        self.config, self.catalog = config, catalog
        rng = np.random.default_rng([seed, 1])
        c = catalog.n_categories
        self._location_logits = rng.normal(0.0, 1.5, (config.n_locations, c))  # [L, C]
        self._age_logits = rng.normal(0.0, 1.0, c)  # [C]
        self._gender_logits = rng.normal(0.0, 0.5, (2, c))  # [2, C]

    def sample(self, rng: np.random.Generator) -> UserState:
        cfg, c = self.config, self.catalog.n_categories
        age = float(rng.random())
        gender = int(rng.integers(2))
        location = int(rng.integers(cfg.n_locations))
        noise = rng.normal(0.0, 1.0, c)
        if cfg.demographics:
            logits = self._location_logits[location] + (2 * age - 1) * self._age_logits + self._gender_logits[gender]
            logits = logits + 0.5 * noise
        else:
            logits = noise
        z = cfg.interest_sharpness * logits
        interest = np.exp(z - z.max())
        interest /= interest.sum()
        return UserState(
            age=age,
            gender=gender,
            location=location,
            interest=interest,
            fatigue=np.zeros(c),
            click_propensity=float(rng.uniform(*cfg.click_propensity)),
            purchase_propensity=float(rng.uniform(*cfg.purchase_propensity)),
            patience=float(rng.uniform(*cfg.patience)),
        )
