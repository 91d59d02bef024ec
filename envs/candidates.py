"""``RetrievalMix``: the candidates a retrieval stage would hand the ranker at each step (K < N).

Each step's candidate list is, in slot order:

1. the ``n_featured`` best-sellers (the same first slots at every step);
2. ``candidates_popular`` of the other slots: items drawn in proportion to popularity;
3. ``candidates_related`` of them, around the session's last ``candidates_history`` engaged events (anything but
   an ignored recommendation): half items of the history item's category drawn by popularity within it (from the
   category's shelf, :meth:`Catalog.category_draws`: a fixed list of ``RELATED_PER_ITEM`` popularity draws per
   category, what a "more of this category" retrieval returns), half "co-visited" items, the next
   ``COVISIT_WINDOW`` items after it in a fixed per-category ordering of the catalog (ascending ids within the
   category, wrapping around). A step picks its related slots uniformly among the lists of the last
   ``candidates_history`` = L such history items (while fewer than L have been seen, their lists repeat to fill
   the L rows). A cold-start history (nothing engaged yet) gets popular draws instead;
4. ``candidates_uniform`` of them: uniform over the catalog (exploration of the long tail).

Duplicates collapse (first occurrence kept), so a step may offer fewer than K distinct items.

Cost: O(K + history length) per step, never O(N): popularity draws use a head table and the rank law
(:meth:`Catalog.sample_popular`), related lists are looked up once per history item, and a step's popular and
uniform draws are made in batches for the next few steps (a batch grows 16, 32, 64 steps and is dropped at a
seeded reset, so a seeded session is reproducible on its own). All randomness comes from the generator the env
passes in.
"""

from __future__ import annotations

import numpy as np

from envs.catalog import Catalog
from envs.config import EnvConfig
from envs.response import IGNORED

__all__ = ["RetrievalMix", "COVISIT_WINDOW", "RELATED_PER_ITEM"]

COVISIT_WINDOW = 16  # co-visited items per history item
RELATED_PER_ITEM = 64  # same-category items per history item: its category's shelf (Catalog.category_draws)
_BATCH_STEPS = (16, 32, 64)  # steps of draws made at once, growing until the next seeded reset


class RetrievalMix:
    """Candidate item ids per step from a fixed mix of retrieval sources (see the module docstring)."""

    def __init__(self, config: EnvConfig, catalog: Catalog) -> None:
        self.catalog = catalog
        k, f = config.n_slots, config.n_featured
        if not 1 <= f <= k < catalog.n_items:
            raise ValueError(f"need 1 <= n_featured ({f}) <= n_candidates ({k}) < n_items ({catalog.n_items})")
        self.n_slots = k
        self.featured = catalog.by_popularity[:f].copy()  # [F] int32
        rest = k - f
        self.n_popular = min(int(rest * config.candidates_popular + 0.5), rest)
        self.n_related = min(int(rest * config.candidates_related + 0.5), rest - self.n_popular)
        self.n_uniform = rest - self.n_popular - self.n_related
        self.n_same_category = (self.n_related + 1) // 2  # the rest of the related share is co-visited
        self.n_anchors = config.candidates_history
        # Ring of the current history items' related lists: row = [category shelf (R) | co-visited (W)].
        self._shelves = catalog.category_draws(RELATED_PER_ITEM) if self.n_related else None  # [C, R], shared
        self._covisit_ext, self._covisit_shift = catalog.covisit_table(COVISIT_WINDOW) if self.n_related else ((), [])
        self._table = np.zeros((self.n_anchors, RELATED_PER_ITEM + COVISIT_WINDOW), dtype=np.int32)  # [L, R + W]
        self._table_flat = self._table.ravel()  # view
        # While r < L rows are filled, rows r..L-1 repeat them: their sources, per r.
        self._repeat_rows = [None, *(np.arange(r, self.n_anchors) % r for r in range(1, self.n_anchors))]
        lo = len(self.featured) + self.n_popular
        self._related_cols = (lo, lo + self.n_related)  # the related slots' columns of a candidate row
        self._first = np.ones(k, dtype=bool)  # dedup scratch: is each sorted entry the first of its value
        self.reset()

    def reset(self, reseeded: bool = True) -> None:
        """A new session: no history items. The batched draws (i.i.d., nothing to do with the session) are
        dropped when the env's generator was reseeded, so a seeded session is reproducible on its own; after an
        unseeded reset they carry on, as the generator's stream does."""
        self._n_rows = 0  # rows of the ring filled by distinct history items
        self._next_row = 0
        self._pending: list[int] = []  # engaged items whose related lists are not in the ring yet
        if reseeded:
            self._batch_i = self._batch_n = 0
            self._batch_k = 0  # index into _BATCH_STEPS

    def observe(self, item: int, event: int) -> None:
        """A history event: engaged ones (not ignored) become anchors of the related share."""
        if event != IGNORED:
            self._pending.append(item)

    # -- per step ----------------------------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, out: np.ndarray) -> int:
        """Write this step's distinct candidate item ids into ``out[:M]`` (the featured items first) and zeros into
        the rest of ``out`` ([K]); return M <= K."""
        if self._batch_i == self._batch_n:
            self._refill(rng)
        i = self._batch_i
        self._batch_i += 1
        row = self._rows[i]  # [K]: featured | popular | related (filled now) | uniform
        if self.n_related:
            if self._pending:
                self._add_anchors()
            lo, hi = self._related_cols
            if self._n_rows:
                self._table_flat.take(self._related_idx[i], out=row[lo:hi], mode="wrap")  # indices are in range
            else:  # cold start: nothing engaged yet, so what sells (rare: drawn on the spot)
                row[lo:hi] = self.catalog.sample_popular(hi - lo, rng)
        # Duplicates collapse, first occurrence kept (the distinct featured items stay in the first F slots).
        order = row.argsort(kind="stable")
        s = row[order]
        first = self._first  # [K] bool, first[0] is always True
        np.not_equal(s[1:], s[:-1], out=first[1:])
        keep = order[first]
        keep.sort()
        m = len(keep)
        row.take(keep, out=out[:m], mode="wrap")  # indices are in range
        out[m:] = 0
        return m

    def _refill(self, rng: np.random.Generator) -> None:
        """The draws of the next few steps: popular and uniform items, and which ring entries the related slots
        take (same-category slots: one of the L x R shelf entries, co-visited ones: one of the L x W)."""
        cat, steps = self.catalog, _BATCH_STEPS[self._batch_k]
        self._batch_k = min(self._batch_k + 1, len(_BATCH_STEPS) - 1)
        f, n_pop, n_rel, n_uni, m = len(self.featured), self.n_popular, self.n_related, self.n_uniform, self.n_same_category
        L, R, W = self.n_anchors, RELATED_PER_ITEM, COVISIT_WINDOW
        rows = np.empty((steps, self.n_slots), dtype=np.int32)
        rows[:, :f] = self.featured
        rows[:, f : f + n_pop] = cat.sample_popular(steps * n_pop, rng).reshape(steps, n_pop)
        u = rng.random((steps, n_rel + n_uni))
        rows[:, f + n_pop + n_rel :] = u[:, n_rel:] * cat.n_items  # floor(u N) < N for u < 1 (cast on assignment)
        same = (u[:, :m] * (L * R)).astype(np.intp)  # entry q of the L x R shelves: row q // R, column q % R
        covisit = (u[:, m:n_rel] * (L * W)).astype(np.intp)
        idx = np.empty((steps, n_rel), dtype=np.intp)
        idx[:, :m] = same + same // R * W  # flat index into the [L, R + W] ring
        idx[:, m:] = covisit + (covisit // W + 1) * R
        self._rows, self._related_idx = rows, idx
        self._batch_i, self._batch_n = 0, steps

    def _add_anchors(self) -> None:
        """Related lists for the history items that entered since the last step (the last L of them). While fewer
        than L distinct history items have entered, the filled rows repeat to fill the ring."""
        cat, L, R = self.catalog, self.n_anchors, RELATED_PER_ITEM
        pending = self._pending[-L:]
        self._pending.clear()
        row, table = self._next_row, self._table
        category, position, ext, shift = cat.category, cat.category_position, self._covisit_ext, self._covisit_shift
        for item in pending:  # at most L, usually one: a few scalar look-ups and two row copies each
            c = int(category[item])
            table[row, :R] = self._shelves[c]
            start = shift[c] + int(position[item]) + 1  # = Catalog.covisited(item, W), inlined
            table[row, R:] = ext[start : start + COVISIT_WINDOW]
            row = (row + 1) % L
        self._next_row = row
        self._n_rows = rows = min(self._n_rows + len(pending), L)
        if rows < L:
            table[rows:] = table[self._repeat_rows[rows]]
