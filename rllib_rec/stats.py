"""Percentile-bootstrap intervals: the one bootstrap of the project (OPE estimators, bench scripts).

Every interval here is :func:`scipy.stats.bootstrap` with ``method="percentile"``, seeded: ``seed`` (an int
or a sequence of ints, as :func:`numpy.random.default_rng` takes) fixes the resamples, so the same call
gives the same interval. Resamples are drawn ``batch`` at a time (memory ``O(batch * n)``); the batch size
does not change the resamples (one generator stream), only the memory.

* :func:`mean_ci`: interval of a mean (vectorised).
* :func:`ratio_of_means_ci`: interval of ``mean(a) / mean(b)`` for paired observations (``paired=True``:
  the same rows of both are resampled together, so the spread they share cancels).
* :func:`multiplicity_bootstrap_ci`: interval of any statistic of *row multiplicities*, for statistics
  that refit a model on every resample (the DM/DR reward model) and so cannot be vectorised.
* :func:`bootstrap_ci`: the general wrapper the others use.

Resamples on which a statistic is undefined (NaN, e.g. SNIPS when every resampled importance weight is 0)
are left out of the percentiles (:func:`numpy.nanquantile`) instead of making the whole interval NaN, as
scipy's own interval would; an interval needs at least two observations and two resamples, and is
``(nan, nan)`` otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _sp_stats

__all__ = ["Seed", "bootstrap_ci", "mean_ci", "ratio_of_means_ci", "multiplicity_bootstrap_ci"]

Seed = int | Sequence[int]

# Resampled elements held at once (resample indices plus resampled data): ~8 MB of int64 per array.
_MAX_ELEMENTS = 1 << 20


def _batch(n: int) -> int:
    return max(1, _MAX_ELEMENTS // max(n, 1))


def bootstrap_ci(
    data: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray | float],
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: Seed = 0,
    paired: bool = False,
    vectorized: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``1 - alpha`` percentile-bootstrap interval of ``statistic(*data)``: ``(low, high)``, each of the
    statistic's shape (a statistic may return several values, e.g. one per estimator).

    ``statistic`` takes the (resampled) samples and, if ``vectorized``, an ``axis`` keyword along which to
    reduce (as :func:`scipy.stats.bootstrap` calls it). With ``paired=True`` the samples share one set of
    resampled row indices. Undefined (NaN) resample values are left out of the percentiles.
    """
    n = min((len(d) for d in data), default=0)
    if n < 2 or n_resamples < 2:
        shape = np.shape(statistic(*data, axis=-1) if vectorized else statistic(*data)) if n > 0 else ()
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        # scipy warns when its interval is NaN (a NaN resample value); the interval used here skips those.
        warnings.simplefilter("ignore", _sp_stats.DegenerateDataWarning)
        res = _sp_stats.bootstrap(
            tuple(data), statistic, n_resamples=int(n_resamples), batch=_batch(n), vectorized=vectorized,
            paired=paired, confidence_level=1 - alpha, method="percentile", rng=np.random.default_rng(seed),
        )
    lo, hi = res.confidence_interval
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if np.isnan(dist).any():  # scipy's quantile propagates NaN; same percentiles over the defined resamples
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: NaN, as it should be
            lo, hi = np.nanquantile(dist, [alpha / 2, 1 - alpha / 2], axis=-1)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def mean_ci(values: np.ndarray, *, n_resamples: int = 1000, alpha: float = 0.05, seed: Seed = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(values)``."""
    lo, hi = bootstrap_ci((np.asarray(values, dtype=np.float64),), np.mean, n_resamples=n_resamples, alpha=alpha,
                          seed=seed)
    return float(lo), float(hi)


def _ratio_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def ratio_of_means_ci(
    a: np.ndarray, b: np.ndarray, *, n_resamples: int = 2000, alpha: float = 0.05, seed: Seed = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(a) / mean(b)`` where ``a[i]`` and ``b[i]`` are paired (e.g. an
    agent's and an oracle's return on the same user): rows are resampled jointly (``paired=True``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    lo, hi = bootstrap_ci((a, b), _ratio_of_means, n_resamples=n_resamples, alpha=alpha, seed=seed, paired=True)
    return float(lo), float(hi)


def multiplicity_bootstrap_ci(
    n_rows: int,
    statistic: Callable[[np.ndarray], np.ndarray | Sequence[float]],
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: Seed = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of ``statistic(m)``, where ``m`` [n_rows] float holds each row's
    multiplicity in a resample (how often it was drawn; the data itself is ``np.ones(n_rows)``).

    Why not pass the resampled rows: the off-policy estimators refit a reward model on every resample, and
    weighting the *same* rows (the same context object, whose per-row keys the model computes once) by
    their multiplicities is equivalent to fitting on the resampled copy, without copying the context or
    recomputing its keys per resample. Such a statistic cannot be vectorised over resamples, so scipy
    calls it once per resample (``vectorized=False``) on the resampled row indices, turned into
    multiplicities here. The resamples are the ones :func:`bootstrap_ci` draws for ``n_rows`` rows.
    """
    n = int(n_rows)

    def of_indices(idx: np.ndarray) -> np.ndarray:
        return np.asarray(statistic(np.bincount(idx, minlength=n).astype(np.float64)), dtype=np.float64)

    return bootstrap_ci((np.arange(n),), of_indices, n_resamples=n_resamples, alpha=alpha, seed=seed,
                        vectorized=False)
