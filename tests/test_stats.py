"""rllib_rec.stats: the one bootstrap (scipy.stats.bootstrap, percentile, seeded), and the OPE estimators'
row multiplicities, through which estimate()'s bootstrap calls the public ips/snips/dm/dr."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_rec.offpolicy.estimators import (
    TabularRewardModel,
    dm,
    dr,
    estimate,
    importance_weights,
    ips,
    position_key,
    snips,
)
from rllib_rec.stats import bootstrap_ci, mean_ci, multiplicity_bootstrap_ci, ratio_of_means_ci


def _resample_indices(seed, n_resamples: int, n: int) -> np.ndarray:
    """The resamples the bootstrap draws: one generator stream, ``n`` row indices per resample."""
    return np.random.default_rng(seed).integers(0, n, (n_resamples, n))


def test_mean_ci_is_the_percentile_interval_of_the_seeded_resamples() -> None:
    x = np.random.default_rng(1).gamma(2.0, 3.0, 500)
    idx = _resample_indices([7, 29], 300, len(x))
    expected = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
    lo, hi = mean_ci(x, n_resamples=300, seed=[7, 29])
    np.testing.assert_allclose([lo, hi], expected, rtol=1e-12)
    assert mean_ci(x, n_resamples=300, seed=[7, 29]) == (lo, hi)  # reproducible
    assert mean_ci(x, n_resamples=300, seed=[8, 29]) != (lo, hi)


def test_ratio_of_means_ci_resamples_pairs_together() -> None:
    rng = np.random.default_rng(2)
    user = rng.gamma(2.0, 3.0, 2000)  # shared user-to-user spread
    a, b = user * rng.normal(1.0, 0.05, 2000), user
    idx = _resample_indices(0, 2000, len(a))
    expected = np.quantile(a[idx].mean(axis=1) / b[idx].mean(axis=1), [0.025, 0.975])
    lo, hi = ratio_of_means_ci(a, b)
    np.testing.assert_allclose([lo, hi], expected, rtol=1e-12)
    # Paired, the shared spread cancels: far narrower than the interval of mean(a) alone, scaled.
    m_lo, m_hi = mean_ci(a, n_resamples=2000)
    assert hi - lo < 0.2 * (m_hi - m_lo) / b.mean()
    with pytest.raises(ValueError, match="differ in shape"):
        ratio_of_means_ci(a, b[:-1])


def test_multiplicity_bootstrap_matches_resampled_rows_and_skips_undefined_resamples() -> None:
    x = np.random.default_rng(3).normal(size=50)
    idx = _resample_indices(5, 200, len(x))
    lo, hi = multiplicity_bootstrap_ci(len(x), lambda m: [np.sum(m * x) / np.sum(m), np.max(m)],
                                       n_resamples=200, seed=5)
    np.testing.assert_allclose(lo[0], np.percentile(x[idx].mean(axis=1), 2.5), rtol=1e-12)
    np.testing.assert_allclose(hi[1], np.percentile([np.bincount(i).max() for i in idx], 97.5))
    # A statistic undefined on some resamples (NaN): the interval is over the others, not NaN.
    def undefined_without_row_0(m: np.ndarray) -> float:
        return float(np.sum(m * x)) / np.sum(m) if m[0] > 0 else float("nan")

    lo1, hi1 = multiplicity_bootstrap_ci(len(x), undefined_without_row_0, n_resamples=200, seed=5)
    kept = [x[i].mean() for i in idx if (i == 0).any()]
    assert 0 < len(kept) < 200
    np.testing.assert_allclose([lo1, hi1], np.percentile(kept, [2.5, 97.5]), rtol=1e-12)


def test_degenerate_inputs_give_nan_intervals() -> None:
    assert all(np.isnan(mean_ci(np.array([1.0]))))
    assert all(np.isnan(mean_ci(np.arange(5.0), n_resamples=1)))
    lo, hi = bootstrap_ci((np.arange(5.0), np.arange(5.0)), lambda a, b, axis: np.stack([a.mean(axis), b.mean(axis)]),
                          n_resamples=0, paired=True)
    assert lo.shape == hi.shape == (2,) and np.isnan(lo).all()


# ------------------------------------------------------------------------- estimators with row multiplicities


def _obd_like(n: int = 400, n_actions: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(n_actions), n)
    actions = rng.integers(0, n_actions, n)
    pscore = np.full(n, 1.0 / n_actions)
    position = rng.integers(0, 3, n)
    rewards = (rng.random(n) < 0.1 + 0.1 * (actions % 3 == position)).astype(np.float64)
    return pi, actions, rewards, pscore, {"position": position}


def test_public_estimators_with_multiplicities_equal_the_resampled_rows() -> None:
    pi, actions, rewards, pscore, ctx = _obd_like()
    w = importance_weights(pi, actions, pscore)
    idx = _resample_indices(11, 1, len(actions))[0]
    m = np.bincount(idx, minlength=len(actions)).astype(np.float64)
    assert ips(w, rewards, m) == pytest.approx(ips(w[idx], rewards[idx]), rel=1e-12)
    assert snips(w, rewards, m) == pytest.approx(snips(w[idx], rewards[idx]), rel=1e-12)

    def model():
        return TabularRewardModel(pi.shape[1], position_key, n_keys=3)

    q_m = model().fit(ctx, actions, rewards, m).predict(ctx)
    sub = {"position": ctx["position"][idx]}
    q_sub = model().fit(sub, actions[idx], rewards[idx]).predict(sub)
    np.testing.assert_allclose(q_m[idx], q_sub, rtol=1e-12)
    assert dm(pi, q_m, m) == pytest.approx(dm(pi[idx], q_sub), rel=1e-12)
    assert dr(pi, q_m, w, actions, rewards, m) == pytest.approx(
        dr(pi[idx], q_sub, w[idx], actions[idx], rewards[idx]), rel=1e-12)


def test_estimate_is_the_public_functions_and_their_bootstrap() -> None:
    pi, actions, rewards, pscore, ctx = _obd_like()
    w = importance_weights(pi, actions, pscore)
    model = TabularRewardModel(pi.shape[1], position_key, n_keys=3)
    res = {e.name: e for e in estimate(pi, actions, rewards, pscore, ctx, model, n_bootstrap=100, seed=4)}
    q = TabularRewardModel(pi.shape[1], position_key, n_keys=3).fit(ctx, actions, rewards).predict(ctx)
    assert res["IPS"].value == ips(w, rewards) and res["SNIPS"].value == snips(w, rewards)
    assert res["DM"].value == dm(pi, q) and res["DR"].value == dr(pi, q, w, actions, rewards)
    # The interval: percentiles of the public functions on each seeded resample (as multiplicities).
    boot = {k: [] for k in res}
    for i in _resample_indices([4, 17], 100, len(actions)):
        m = np.bincount(i, minlength=len(actions)).astype(np.float64)
        q_m = TabularRewardModel(pi.shape[1], position_key, n_keys=3).fit(ctx, actions, rewards, m).predict(ctx)
        boot["IPS"].append(ips(w, rewards, m))
        boot["SNIPS"].append(snips(w, rewards, m))
        boot["DM"].append(dm(pi, q_m, m))
        boot["DR"].append(dr(pi, q_m, w, actions, rewards, m))
    for k, e in res.items():
        np.testing.assert_allclose([e.ci_low, e.ci_high], np.percentile(boot[k], [2.5, 97.5]), rtol=1e-12)
    # Only the requested estimators, in the requested order.
    assert [e.name for e in estimate(pi, actions, rewards, pscore, ctx, model, ["DR", "IPS"], 10)] == ["DR", "IPS"]
