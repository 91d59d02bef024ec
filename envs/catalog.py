"""The product catalog: categories, price, quality, click appeal, power-law popularity and side features.

The catalog is fixed for a given ``CatalogConfig`` (a shop does not reshuffle its products between sessions),
so an agent can learn item properties — e.g. which items are clickbait — from experience. Every item also has
side features a shop knows for it (category, ``price_band``, ``popularity_band``), so that a model that embeds
them has something to say about an item it never saw in training.

Everything is built with whole-array numpy operations (1,000,000 items in about a second on one core, no
per-category Python loops), and the per-step helpers (:meth:`Catalog.sample_in_category`,
:meth:`Catalog.sample_popular`, :meth:`Catalog.covisited`, :meth:`Catalog.neighbours`) cost O(draws x log N) at
most, never O(N); the per-category tables the candidate generator uses (:meth:`Catalog.category_draws`,
:meth:`Catalog.covisit_table`) are built once. :meth:`Catalog.shared` hands out one read-only catalog per process
for equal configs, so eight vectorised envs of a 1M-item shop hold one catalog, not eight. Memory: about 66 bytes
per item (66 MB at 1M items).
"""

from __future__ import annotations

import dataclasses
import operator
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from envs.config import CatalogConfig

__all__ = ["Catalog", "PRICE_BANDS", "POPULARITY_BANDS"]

PRICE_BANDS = 8  # quantile bands of price (band 0 = cheapest eighth)
_BELOW_ONE = 1.0 - 2.0**-30
_HEAD_RANKS = 4096  # popularity draws: ranks below this by table look-up, the rest from the rank law
POPULARITY_BANDS = 16  # band b = popularity ranks [2^b, 2^(b+1)) (rank 1 = best-seller), the last band open-ended


class _Segments(Sequence):
    """``segments[k]`` = ``flat[offsets[k]:offsets[k + 1]]`` (a view), without building C arrays up front."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self._flat, self._offsets = flat, offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = operator.index(k)
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"category {k} out of range [0, {len(self)})")
        return self._flat[self._offsets[k] : self._offsets[k + 1]]


class Catalog:
    """Item attributes as flat arrays indexed by item id (``0..n_items-1``).

    Public arrays (all ``[N]``, read-only): ``category``, ``popularity`` (sums to 1), ``price``, ``quality``,
    ``is_clickbait``, ``appeal``, ``price_band`` (``0..n_price_bands-1``), ``popularity_band``
    (``0..n_popularity_bands-1``), ``popularity_rank`` (0 = most popular), ``by_popularity`` (item ids, most
    popular first); ``items_by_category[k]`` is category k's item ids in ascending order (a view into
    ``category_items``, whose segment k is ``category_offsets[k]:category_offsets[k + 1]``;
    ``category_position[i]`` is item i's index in ``category_items``).
    """

    _cache: ClassVar[OrderedDict[tuple, Catalog]] = OrderedDict()
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()
    CACHE_SIZE: ClassVar[int] = 8  # catalogs kept by shared() ...
    CACHE_ITEMS: ClassVar[int] = 20_000_000  # ... and items in them all (the newest is always kept)

    def __init__(self, config: CatalogConfig) -> None:
        self.n_items, self.n_categories = config.n_items, config.n_categories
        self._seed = config.seed
        rank = self._draw_items(config)
        self._order_by_popularity(rank)
        del rank
        self._band_side_features()
        order, counts = self._group_by_category()
        self._popularity_cdfs(config, order, counts)
        self._offsets_list: list[int] = self.category_offsets.tolist()  # for scalar look-ups
        self._category_draws: dict[int, np.ndarray] = {}
        self._covisit_tables: dict[int, tuple[np.ndarray, list[int]]] = {}
        for value in vars(self).values():  # shared between envs: nobody may write into it
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    def _draw_items(self, config: CatalogConfig) -> np.ndarray:
        """Every random draw of the catalog; returns the drawn popularity ranks (1 = most popular)."""
        # The draws (and their order) are the ones the catalog always made, so a seed's shop stays the same shop.
        rng = np.random.default_rng([config.seed, 0])
        n, c = config.n_items, config.n_categories
        # Balanced categories in a shuffled order, so every category has floor(N/C) or ceil(N/C) items.
        self.category: np.ndarray = rng.permutation(np.arange(n) % c).astype(np.int32)  # [N]
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
        return rank

    def _order_by_popularity(self, rank: np.ndarray) -> None:
        n = self.n_items
        # Popularity order (ties: lower id first) and its inverse. Popularity falls strictly with the drawn rank
        # whenever the exponent separates all ranks (checked), and then the order is the rank permutation's
        # inverse, O(N); otherwise (ties) a stable argsort.
        self.popularity_rank: np.ndarray = (rank - 1).astype(np.int32)  # [N], 0 = most popular
        self.by_popularity: np.ndarray = np.empty(n, dtype=np.int32)  # [N] item ids, most popular first
        self.by_popularity[self.popularity_rank] = np.arange(n, dtype=np.int32)
        if not np.all(np.diff(self.popularity[self.by_popularity]) < 0):
            self.by_popularity[:] = np.argsort(-self.popularity, kind="stable")
            self.popularity_rank[self.by_popularity] = np.arange(n, dtype=np.int32)

    def _band_side_features(self) -> None:
        # Side features: price quantile band and log2 popularity-rank band.
        self.n_price_bands, self.n_popularity_bands = PRICE_BANDS, POPULARITY_BANDS
        edges = np.quantile(self.price, np.arange(1, PRICE_BANDS) / PRICE_BANDS)
        self.price_band: np.ndarray = np.searchsorted(edges, self.price, side="right").astype(np.int8)  # [N]
        log2_rank = np.frexp(self.popularity_rank + 1.0)[1] - 1  # floor(log2(rank)), exact for integers
        self.popularity_band: np.ndarray = np.minimum(log2_rank, POPULARITY_BANDS - 1).astype(np.int8)  # [N]
        del edges, log2_rank

    def _group_by_category(self) -> tuple[np.ndarray, np.ndarray]:
        """Category index arrays; returns the item order by category and the category sizes."""
        n, c = self.n_items, self.n_categories
        # Items grouped by category (a stable argsort: ascending ids within a category) + segment offsets.
        keys = self.category.astype(np.uint16) if c <= 2**16 else self.category  # 16-bit keys: radix sort
        order = np.argsort(keys, kind="stable")
        del keys
        counts = np.bincount(self.category, minlength=c)
        self.category_offsets: np.ndarray = np.zeros(c + 1, dtype=np.int64)  # [C+1]
        np.cumsum(counts, out=self.category_offsets[1:])
        self.category_items: np.ndarray = order.astype(np.int32)  # [N]
        self.category_position: np.ndarray = np.empty(n, dtype=np.int32)  # [N] index of each item in category_items
        self.category_position[order] = np.arange(n, dtype=np.int32)
        self.category_sizes: np.ndarray = counts  # [C]
        self.items_by_category: Sequence[np.ndarray] = _Segments(self.category_items, self.category_offsets)
        return order, counts

    def _popularity_cdfs(self, config: CatalogConfig, order: np.ndarray, counts: np.ndarray) -> None:
        n, c = self.n_items, self.n_categories
        # Per-category popularity CDFs as one flat array of segment-wise cumsums, for popularity draws within a
        # category. Categories are balanced, so a [C, ceil(N/C)] zero-padded table holds them; its row-wise
        # cumsum is the sequential per-category cumsum (bit for bit what a per-category loop computes).
        row = self.category[order].astype(np.int64)
        col = np.arange(n) - self.category_offsets[row]
        table = np.zeros((c, int(counts.max())))
        table[row, col] = self.popularity[order]
        np.cumsum(table, axis=1, out=table)
        totals = table[np.arange(c), counts - 1]  # [C]
        self._cat_cdf = table[row, col] / totals[row]  # [N] in (0, 1], 1.0 at each segment's end
        del table, row, col, order
        # Popularity draws: the CDF over the head ranks (most popular first; small, so it stays in cache) and, for
        # the tail, the rank law itself (popularity of rank r is r^-exponent / Z, sampled without a table).
        self.popularity_exponent = float(config.popularity_exponent)
        rank_cdf = np.cumsum(self.popularity[self.by_popularity])
        rank_cdf /= rank_cdf[-1]
        self._head_cdf = rank_cdf[: min(n, _HEAD_RANKS)].copy()  # [H]
        del rank_cdf

    @classmethod
    def shared(cls, config: CatalogConfig) -> Catalog:
        """The process-wide catalog for ``config`` (built once per distinct config; the most recently used few are
        kept, up to ``CACHE_SIZE`` catalogs and ``CACHE_ITEMS`` items)."""
        key = dataclasses.astuple(config)
        with cls._cache_lock:
            catalog = cls._cache.get(key)
            if catalog is not None:
                cls._cache.move_to_end(key)
                return catalog
        catalog = cls(config)  # outside the lock: a 10M-item build takes seconds
        with cls._cache_lock:
            catalog = cls._cache.setdefault(key, catalog)
            cls._cache.move_to_end(key)
            while len(cls._cache) > 1 and (
                len(cls._cache) > cls.CACHE_SIZE or sum(c.n_items for c in cls._cache.values()) > cls.CACHE_ITEMS
            ):
                cls._cache.popitem(last=False)
        return catalog

    # -- draws (per step: O(draws x log N)) -------------------------------------------------------------------
    def sample_in_category(self, category: int, rng: np.random.Generator) -> int:
        """An item of ``category`` drawn in proportion to popularity."""
        return self.item_in_category(category, rng.random())

    def item_in_category(self, category: int, u: float) -> int:
        """The item of ``category`` at quantile ``u`` in [0, 1) of its popularity distribution."""
        lo, hi = self._offsets_list[category], self._offsets_list[category + 1]
        idx = int(self._cat_cdf[lo:hi].searchsorted(u, side="right"))
        return int(self.category_items[lo + min(idx, hi - lo - 1)])

    def sample_popular(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` items drawn (with replacement) in proportion to popularity.

        The head ranks come from a small CDF table; a tail rank (probability ``1 - head mass``) is drawn from the
        rank law r^-e by rejection from a continuous envelope, so no draw touches an N-sized table but the one
        look-up of the item id (``by_popularity[rank]``)."""
        u = rng.random(k)
        head_cdf = self._head_cdf
        ranks = np.searchsorted(head_cdf, u, side="right")  # = len(head_cdf) for a tail draw
        tail = ranks >= len(head_cdf)
        n_tail = int(np.count_nonzero(tail))
        if n_tail:
            ranks[tail] = self._tail_ranks(n_tail, rng)
        return self.by_popularity[ranks]

    def _tail_ranks(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` 0-based ranks in ``[H, N)``, rank r (1-based) drawn with probability proportional to r^-e.

        Rejection from a continuous envelope: x in [H, N] with density proportional to x^-e (inverse CDF, written
        with log1p/expm1 so that it stays accurate for e near 1), r = ceil(x), whose proposal mass is
        W(r) = integral of x^-e over [r - 1, r] >= r^-e; accept with probability r^-e / W(r) (>= (1 - 1/r)^e,
        above 0.999 for r > H, so a second round is rare)."""
        e, h, n = self.popularity_exponent, len(self._head_cdf), self.n_items
        a, ln_h, ln_ratio = 1.0 - e, float(np.log(h)), float(np.log(n / h))
        c = float(np.expm1(a * ln_ratio))
        out = np.empty(k, dtype=np.int64)
        filled = 0
        while filled < k:
            m = k - filled
            v, w = rng.random(m), rng.random(m)
            lx = ln_h + v * ln_ratio if a == 0.0 else ln_h + np.log1p(v * c) / a
            r = np.ceil(np.exp(lx))
            lg = np.log1p(-1.0 / np.maximum(r, 2.0))  # log((r - 1) / r)
            if a == 0.0:  # e = 1 (the default): W(r) = log(r / (r - 1)), accept if w W(r) < 1 / r
                ok = (r > h) & (r <= n) & (w * r * lg > -1.0)
            else:
                ok = (r > h) & (r <= n) & (w * (r**a * -np.expm1(a * lg) / a) < r**-e)
            got = r[ok].astype(np.int64) - 1
            out[filled : filled + len(got)] = got
            filled += len(got)
        return out

    def category_draws(self, per_category: int) -> np.ndarray:
        """``[C, per_category]``: for each category, a fixed list of its items drawn by popularity within it
        (with replacement; seeded by the catalog seed) - the shelf a "more of this category" retrieval returns.
        Built once per size and kept (C x per_category ids; a catalog-level table, not per step)."""
        table = self._category_draws.get(per_category)
        if table is None:
            rng = np.random.default_rng([self._seed, 3])
            u = rng.random((self.n_categories, per_category))
            # The per-category CDFs shifted by the category index (segment k in (k, k + 1]): one searchsorted
            # draws in every category at once. u is scaled just below 1 so that k + u stays below k + 1 after
            # rounding (the last item of a category gives up 1e-9 of its share; rounding at 1e5 categories is
            # ~1e-11, far below any item's share).
            shifted = self._cat_cdf + self.category[self.category_items]  # [N], only while building
            keys = np.arange(self.n_categories)[:, None] + u * _BELOW_ONE
            table = self.category_items[np.searchsorted(shifted, keys, side="right")]
            table.setflags(write=False)
            self._category_draws[per_category] = table
        return table

    def covisit_table(self, window: int) -> tuple[np.ndarray, list[int]]:
        """``(ext, shift)``: ``category_items`` with each category's segment followed by its first ``window``
        items again (cyclically), and per category the shift from an item's ``category_position`` to its place in
        ``ext``; so the ``window`` items after ``item`` in its category's order (wrapping around) are
        ``ext[s + 1 : s + 1 + window]`` with ``s = shift[category[item]] + category_position[item]`` (see
        :meth:`covisited`). Built once per window size (N + C x window ids)."""
        table = self._covisit_tables.get(window)
        if table is None:
            c, n, sizes = self.n_categories, self.n_items, self.category_sizes
            starts = self.category_offsets[:-1] + np.arange(c) * window  # [C]
            ext = np.empty(n + c * window, dtype=np.int32)
            ext[np.arange(n) + np.repeat(np.arange(c), sizes) * window] = self.category_items
            j = np.arange(window)
            ext[(starts + sizes)[:, None] + j] = self.category_items[self.category_offsets[:-1, None] + j % sizes[:, None]]
            ext.setflags(write=False)
            table = self._covisit_tables[window] = (ext, (starts - self.category_offsets[:-1]).tolist())
        return table

    def covisited(self, item: int, window: int) -> np.ndarray:
        """The ``window`` items after ``item`` in its category's fixed order (ascending ids, wrapping around):
        ``neighbours(item, 1..window)`` as one slice of :meth:`covisit_table`."""
        ext, shift = self.covisit_table(window)
        start = shift[int(self.category[item])] + int(self.category_position[item]) + 1
        return ext[start : start + window]

    def neighbours(self, items: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """"Co-visited" items: the item ``offsets`` places away from each of ``items`` in the fixed per-category
        ordering of the catalog (ascending ids within a category, wrapping around); an offset of 0 is the item."""
        cat = self.category[items]
        lo = self.category_offsets[cat]
        pos = (self.category_position[items] - lo + offsets) % self.category_sizes[cat]
        return self.category_items[lo + pos]
