"""Each simulator mechanism demonstrably happens — and stops happening when switched off."""

from __future__ import annotations

import numpy as np
import pytest

from envs import ECommerceEnv
from envs.baselines import myopic_oracle, random_policy, run_episodes
from envs.response import CLICK, ORGANIC, PURCHASE, VIEW


def _events(config: dict, policy=random_policy, episodes: int = 200) -> tuple[np.ndarray, list[dict]]:
    env = ECommerceEnv(config)
    rng = np.random.default_rng(0)
    events, infos = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy(obs, env, rng))
            events.append(info["event"])
            infos.append(info)
            done = term or trunc
    return np.array(events), infos


@pytest.mark.parametrize("on", [True, False])
def test_purchases(on: bool) -> None:
    events, _ = _events({"response": {"purchases": on}}, policy=myopic_oracle)
    n = int((events == PURCHASE).sum())
    assert (n > 50) if on else (n == 0)
    assert (events == CLICK).sum() > 50


@pytest.mark.parametrize("on", [True, False])
def test_views(on: bool) -> None:
    events, _ = _events({"response": {"views": on}})
    n = int((events == VIEW).sum())
    assert (n > 100) if on else (n == 0)


@pytest.mark.parametrize("on", [True, False])
def test_churn(on: bool) -> None:
    stats = run_episodes({"response": {"churn": on}}, random_policy, 200, seed=0)
    if on:
        assert stats.churned.mean() > 0.5 and stats.lengths.mean() < 50
    else:
        assert not stats.churned.any() and np.all(stats.lengths == 50)


@pytest.mark.parametrize("on", [True, False])
def test_interest_shifts(on: bool) -> None:
    cfg = {"response": {"interest_shift": on, "churn": False}}
    _, infos = _events(cfg, episodes=100)
    n = sum(i["interest_shift"] for i in infos)
    assert (n > 50) if on else (n == 0)
    if on:  # a shift moves the user's favourite category
        env = ECommerceEnv({"response": {"interest_shift": True, "shift_prob": 1.0, "churn": False}})
        env.reset(seed=0)
        before = int(np.argmax(env.user.interest))
        env.step(0)
        assert int(np.argmax(env.user.interest)) != before


@pytest.mark.parametrize("on", [True, False])
def test_fatigue(on: bool) -> None:
    """Recommending the same category over and over loses clicks with fatigue; without it, it does not."""
    cfg = {
        "max_steps": 12,
        "response": {
            "fatigue": on, "churn": False, "interest_drift": False, "interest_shift": False,
            "engagement_growth": False,
        },
    }
    env = ECommerceEnv(cfg)
    early, late = [], []
    for ep in range(1500):
        env.reset(seed=ep)
        fav = int(np.argmax(env.user.interest))
        items = env.catalog.items_by_category[fav]
        for t in range(12):
            _, _, _, _, info = env.step(int(items[t % len(items)]))
            (early if t == 0 else late if t >= 8 else []).append(info["event"] >= CLICK)
    early_rate, late_rate = np.mean(early), np.mean(late)
    if on:
        assert late_rate < 0.6 * early_rate, (early_rate, late_rate)
    else:
        assert late_rate == pytest.approx(early_rate, rel=0.15), (early_rate, late_rate)


@pytest.mark.parametrize("on", [True, False])
def test_interest_drift(on: bool) -> None:
    """A click on an item raises the user's interest in its category (unless it is all they want)."""
    env = ECommerceEnv({"response": {"interest_drift": on, "interest_shift": False, "churn": False}})
    gains = []
    for ep in range(300):
        env.reset(seed=ep)
        c = int(np.argsort(env.user.interest)[-2])  # the second favourite category
        item = int(env.catalog.items_by_category[c][0])
        before = env.user.interest[c]
        _, _, _, _, info = env.step(item)
        if info["event"] >= CLICK:
            gains.append(env.user.interest[c] - before)
    assert len(gains) >= 10
    assert (min(gains) > 0.01) if on else (max(np.abs(gains)) == 0.0)


@pytest.mark.parametrize("on", [True, False])
def test_engagement_growth(on: bool) -> None:
    env = ECommerceEnv({"response": {"engagement_growth": on, "churn": False}})
    grew = 0
    for ep in range(100):
        obs, _ = env.reset(seed=ep)
        p0 = env.user.click_propensity
        for _ in range(10):
            obs, *_ = env.step(myopic_oracle(obs, env, np.random.default_rng(0)))
        grew += env.user.click_propensity > p0
    assert (grew > 50) if on else (grew == 0)


@pytest.mark.parametrize("on", [True, False])
def test_organic_browsing(on: bool) -> None:
    events = []
    env = ECommerceEnv({"response": {"organic_browsing": on}, "users": {"initial_history": [0, 0]}})
    for ep in range(50):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            obs, _, term, trunc, _ = env.step(0)
            done = term or trunc
        events.extend(obs["events"].tolist())
    n = events.count(ORGANIC)
    assert (n > 20) if on else (n == 0)


@pytest.mark.parametrize("on", [True, False])
def test_demographics_set_interest_prior(on: bool) -> None:
    """Users of the same location share a favourite category far more often when demographics are on."""
    env = ECommerceEnv({"users": {"demographics": on}})
    favs: dict[int, list[int]] = {}
    for ep in range(600):
        env.reset(seed=ep)
        favs.setdefault(env.user.location, []).append(int(np.argmax(env.user.interest)))
    # share of users whose favourite is their location's most common favourite
    agree = np.mean([np.bincount(f).max() / len(f) for f in favs.values()])
    n_cat = env.catalog.n_categories
    assert (agree > 0.45) if on else (agree < 0.35), (agree, 1 / n_cat)
