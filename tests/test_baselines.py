"""The simulator's reason to exist: planning beats myopia, and the baselines are ordered."""

from __future__ import annotations

import pytest

from envs.baselines import BASELINES, run_episodes

N = 1000  # the acceptance criterion asks for >= 1,000 seeded episodes


@pytest.fixture(scope="module")
def default_results() -> dict[str, dict[str, float]]:
    return {name: run_episodes("default", policy, N, seed=20_000).summary() for name, policy in BASELINES.items()}


def test_planning_beats_myopic_by_5_percent_with_disjoint_cis(default_results) -> None:
    plan, myopic = default_results["planning_oracle"], default_results["myopic_oracle"]
    assert plan["return_mean"] >= 1.05 * myopic["return_mean"]
    assert plan["return_mean"] - plan["return_ci95"] > myopic["return_mean"] + myopic["return_ci95"]


def test_baseline_ordering(default_results) -> None:
    r = {k: v["return_mean"] for k, v in default_results.items()}
    assert r["myopic_oracle"] > r["history"] > r["random"]


def test_planning_keeps_users_longer(default_results) -> None:
    assert default_results["planning_oracle"]["length_mean"] > default_results["myopic_oracle"]["length_mean"]


def test_seed_preset_oracle_is_4x_random() -> None:
    oracle = run_episodes("seed", BASELINES["myopic_oracle"], N, seed=0).summary()["return_mean"]
    rnd = run_episodes("seed", BASELINES["random"], N, seed=0).summary()["return_mean"]
    assert oracle >= 4 * rnd


def test_same_seeds_same_users_across_policies() -> None:
    a = run_episodes("default", BASELINES["random"], 5, seed=3)
    b = run_episodes("default", BASELINES["random"], 5, seed=3)
    assert (a.returns == b.returns).all()


def test_planning_avoids_clickbait_that_myopia_recommends(default_results) -> None:
    """The share of clickbait recommendations is what separates the two oracles (measured: ~0.19 vs ~0.02)."""
    assert default_results["planning_oracle"]["clickbait_share"] < 0.5 * default_results["myopic_oracle"]["clickbait_share"]


def test_clickbait_share_counts_clickbait_recommendations() -> None:
    from envs import ECommerceEnv

    env = ECommerceEnv("default")
    bait, honest = (int(next(i for i in range(env.n_items) if env.catalog.is_clickbait[i] == flag)) for flag in (1, 0))
    for item, want in ((bait, 1.0), (honest, 0.0)):
        s = run_episodes("default", lambda obs, env, rng, item=item: item, 3, seed=0, env=env).summary()
        assert s["clickbait_share"] == want
