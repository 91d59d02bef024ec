"""The product catalog: categories, price, quality, click appeal and power-law popularity.

The catalog is fixed for a given ``CatalogConfig.seed`` (a shop does not reshuffle its products between
sessions), so an agent can learn item properties — e.g. which items are clickbait — from experience.
"""

from __future__ import annotations

import numpy as np

from envs.config import CatalogConfig

__all__ = ["Catalog"]


class Catalog:
    """Item attributes as flat arrays indexed by action (item index ``0..n_items-1``)."""

    def __init__(self, config: CatalogConfig) -> None:
        rng = np.random.default_rng([config.seed, 0])
        n, c = config.n_items, config.n_categories
        self.n_items, self.n_categories = n, c
        # Balanced categories in a shuffled order, so every category has items.
        self.category: np.ndarray = rng.permutation(np.arange(n) % c).astype(np.int64)  # [N]
        rank = rng.permutation(n) + 1
        pop = rank.astype(np.float64) ** -config.popularity_exponent
        self.popularity: np.ndarray = pop / pop.sum()  # [N], sums to 1
        self.price: np.ndarray = rng.uniform(0.1, 1.0, n)  # [N]
        self.quality: np.ndarray = rng.beta(4.0, 2.0, n)  # [N], mean ~0.67
        self.is_clickbait: np.ndarray = rng.random(n) < config.clickbait_fraction  # [N] bool
        self.quality[self.is_clickbait] = config.clickbait_quality
        # Popular items are a little more appealing; clickbait items much more.
        pop_rank01 = 1.0 - (rank - 1) / max(n - 1, 1)
        self.appeal: np.ndarray = (0.85 + 0.3 * pop_rank01) * np.where(
            self.is_clickbait, config.clickbait_appeal, 1.0
        )  # [N]
        # Per-category popularity CDFs, for fast organic-browse sampling in large catalogs.
        self.items_by_category: list[np.ndarray] = [np.flatnonzero(self.category == k) for k in range(c)]
        self._cat_cdf: list[np.ndarray] = []
        for items in self.items_by_category:
            cdf = np.cumsum(self.popularity[items])
            self._cat_cdf.append(cdf / cdf[-1])
        self._pop_cdf = np.cumsum(self.popularity)
        self._pop_cdf /= self._pop_cdf[-1]
        self.by_popularity: np.ndarray = np.argsort(-self.popularity, kind="stable")  # most popular first

    def sample_in_category(self, category: int, rng: np.random.Generator) -> int:
        """An item of ``category`` drawn in proportion to popularity."""
        items = self.items_by_category[category]
        idx = int(np.searchsorted(self._cat_cdf[category], rng.random(), side="right"))
        return int(items[min(idx, len(items) - 1)])

    def sample_popular(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` items drawn (with replacement) in proportion to popularity."""
        idx = np.searchsorted(self._pop_cdf, rng.random(k), side="right")
        return np.minimum(idx, self.n_items - 1)
