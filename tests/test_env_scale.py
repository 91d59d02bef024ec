"""The candidate-set simulator at catalog scale: the K-slot contract, exact reproduction of the item-indexed shop
for K = N, the retrieval mix, lazy stock-outs, the 1M-item catalog and a step that never touches the catalog."""

from __future__ import annotations

import pathlib
import time
import tracemalloc

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import POPULARITY_BANDS, PRICE_BANDS, Catalog, ECommerceEnv, EnvConfigError, InvalidActionError
from envs.baselines import BASELINES, run_episodes
from envs.candidates import COVISIT_WINDOW, RELATED_PER_ITEM
from envs.config import CatalogConfig, make_env_config
from envs.response import IGNORED

REFERENCE = pathlib.Path(__file__).parent / "data" / "env_reference.npz"
CASES = {"seed": "seed", "default": "default", "default_dropout": {"preset": "default", "item_dropout": 0.4}}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return dict(data)


@pytest.mark.parametrize("case", list(CASES))
def test_full_catalog_reproduces_the_frozen_reference(case: str, reference: dict[str, np.ndarray]) -> None:
    """With n_candidates 0 (K = N, slot == item id) the same seed and the same recommended items give the same
    observations, rewards, events and termination as the item-indexed simulator (tests/data/record_env_reference.py
    recorded them before the rewrite), and the same catalog."""
    ref = {k.split("/", 1)[1]: v for k, v in reference.items() if k.startswith(f"{case}/")}
    env = ECommerceEnv(CASES[case])
    for attr in ("category", "popularity", "price", "quality", "is_clickbait", "appeal"):
        assert np.array_equal(getattr(env.catalog, attr), ref[f"catalog_{attr}"]), attr
    row = 0
    for ep in range(len(ref["reset_items"])):
        obs, _ = env.reset(seed=1000 + ep)
        assert np.array_equal(obs["items"], ref["reset_items"][ep]) and np.array_equal(obs["events"], ref["reset_events"][ep])
        assert np.array_equal(obs["candidate_mask"], ref["reset_mask"][ep])
        assert np.array_equal(obs["candidates"], np.arange(env.n_items))
        while row < len(ref["episode"]) and ref["episode"][row] == ep:
            action = int(ref["action"][row])
            obs, reward, term, trunc, info = env.step(action)
            assert (reward, info["event"], term, trunc) == (
                ref["reward"][row], ref["event"][row], ref["terminated"][row], ref["truncated"][row]), row
            assert info["item"] == action
            for key, name in (("items", "items"), ("events", "events"), ("candidate_mask", "mask")):
                assert np.array_equal(obs[key], ref[name][row]), (row, key)
            assert np.array_equal(obs["candidates"], np.arange(env.n_items))
            row += 1
    assert row == len(ref["episode"])


def test_scalar_and_vector_probabilities_agree_bit_for_bit() -> None:
    """respond() uses the scalar probabilities_of; the oracles use the vectorised probabilities: same numbers."""
    env = ECommerceEnv("default")
    rng = np.random.default_rng(0)
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        for _ in range(8):
            vec = env.response.probabilities(env.user, np.arange(env.n_items), env.t)  # as the oracles call it
            for item in range(env.n_items):
                assert env.response.probabilities_of(env.user, item, env.t) == tuple(float(p[item]) for p in vec)
            slots = np.flatnonzero(obs["candidate_mask"])
            obs, _, term, trunc, _ = env.step(int(slots[rng.integers(len(slots))]))
            if term or trunc:
                break


@pytest.mark.parametrize("preset", ["large", "xl"])
def test_observation_is_k_sized_and_item_of_maps_slots(preset: str) -> None:
    env = ECommerceEnv(preset)
    obs, _ = env.reset(seed=0)
    k, n = 100, env.n_items
    assert env.n_candidates == k == env.action_space.n and n > k
    for space in env.observation_space.values():
        assert n not in space.shape  # nothing in the observation is catalog-sized
    assert env.observation_space["candidates"].high.max() == n - 1
    rng = np.random.default_rng(1)
    for _ in range(20):
        slots = np.flatnonzero(obs["candidate_mask"])
        assert np.array_equal(env.candidate_items, obs["candidates"][slots])
        slot = int(slots[rng.integers(len(slots))])
        item = env.item_of(slot)
        assert item == obs["candidates"][slot]
        obs, _, term, trunc, info = env.step(slot)
        assert info["item"] == item
        if term or trunc:
            obs, _ = env.reset()
    with pytest.raises(InvalidActionError, match=r"not a candidate index in \[0, 100\)"):
        env.item_of(k)


def test_recommended_item_enters_the_history() -> None:
    env = ECommerceEnv({"preset": "large", "response": {"organic_browsing": False}})
    obs, _ = env.reset(seed=3)
    for _ in range(10):
        slot = int(np.flatnonzero(obs["candidate_mask"])[-1])
        item = env.item_of(slot)
        obs, _, term, trunc, info = env.step(slot)
        assert obs["items"][-1] == item + 1 and obs["events"][-1] == info["event"]
        if term or trunc:
            break


def test_xl_is_registered_with_gymnasium() -> None:
    assert envs.GYM_IDS["xl"] == "ecommerce/XL-v0"
    env = gym.make("ecommerce/XL-v0").unwrapped
    assert isinstance(env, ECommerceEnv) and env.n_items == 1_000_000 and env.n_candidates == 100


def test_equal_catalog_configs_share_one_read_only_catalog() -> None:
    a, b = ECommerceEnv("xl"), ECommerceEnv({"preset": "xl", "item_dropout": 0.2, "n_candidates": 50})
    assert a.catalog is b.catalog
    assert ECommerceEnv("large").catalog is not a.catalog
    vec = gym.make_vec(envs.GYM_IDS["xl"], num_envs=3, vectorization_mode="sync")
    assert all(e.unwrapped.catalog is a.catalog for e in vec.envs)
    vec.close()
    with pytest.raises(ValueError, match="read-only"):
        a.catalog.popularity[0] = 1.0


def test_catalog_of_a_million_items_builds_fast_with_side_features() -> None:
    t0 = time.perf_counter()
    cat = Catalog(CatalogConfig(n_items=1_000_000, n_categories=1_000, seed=5))  # not the shared one: a fresh build
    elapsed = time.perf_counter() - t0
    assert elapsed < 30.0, elapsed  # a few seconds at most on a laptop core
    n = cat.n_items
    assert np.all(cat.category_sizes >= n // 1_000) and cat.category_sizes.sum() == n
    k = 123
    assert np.array_equal(cat.items_by_category[k], np.flatnonzero(cat.category == k))
    assert np.isclose(cat.popularity.sum(), 1.0)
    assert np.array_equal(cat.by_popularity[cat.popularity_rank], np.arange(n))
    assert np.all(np.diff(cat.popularity[cat.by_popularity]) <= 0)
    # price bands: quantile eighths; popularity bands: floor(log2(rank)), capped
    assert cat.n_price_bands == PRICE_BANDS == 8 and cat.n_popularity_bands == POPULARITY_BANDS
    counts = np.bincount(cat.price_band, minlength=PRICE_BANDS)
    assert counts.min() > 0.99 * n / PRICE_BANDS and counts.max() < 1.01 * n / PRICE_BANDS
    order = np.argsort(cat.price)
    assert np.all(np.diff(cat.price_band[order]) >= 0)  # bands rise with price
    expected = np.minimum(np.floor(np.log2(cat.popularity_rank + 1.0)), POPULARITY_BANDS - 1)
    assert np.array_equal(cat.popularity_band, expected)
    assert cat.popularity_band[cat.by_popularity[0]] == 0 and cat.popularity_band.max() == POPULARITY_BANDS - 1


def test_small_catalog_side_features() -> None:
    cat = ECommerceEnv("default").catalog
    assert cat.price_band.min() == 0 and cat.price_band.max() == PRICE_BANDS - 1
    assert cat.popularity_band[cat.by_popularity[:4]].tolist() == [0, 1, 1, 2]


def test_sample_popular_follows_popularity_in_head_and_tail() -> None:
    cat = Catalog(CatalogConfig(n_items=20_000, n_categories=10, popularity_exponent=1.0))
    k = 1_000_000
    ranks = cat.popularity_rank[cat.sample_popular(k, np.random.default_rng(0))]
    p = cat.popularity[cat.by_popularity]
    edges = np.array([0, 1, 10, 100, 1000, 4096, 6000, 10_000, 15_000, 20_000])
    observed = np.add.reduceat(np.bincount(ranks, minlength=cat.n_items), edges[:-1])
    expected = np.add.reduceat(p, edges[:-1]) * k
    z = (observed - expected) / np.sqrt(expected)
    assert np.all(np.abs(z) < 5), z


def test_covisited_items_are_the_next_ones_in_the_category_order() -> None:
    cat = Catalog.shared(make_env_config("large").catalog)
    for item in (0, 17, 9_999):
        nxt = cat.covisited(item, COVISIT_WINDOW)
        assert np.array_equal(nxt, cat.neighbours(np.array([item]), np.arange(1, COVISIT_WINDOW + 1)))
        assert np.all(cat.category[nxt] == cat.category[item]) and item not in nxt
    shelves = cat.category_draws(RELATED_PER_ITEM)
    assert shelves.shape == (cat.n_categories, RELATED_PER_ITEM)
    assert np.all(cat.category[shelves] == np.arange(cat.n_categories)[:, None])


def _non_featured(env: ECommerceEnv, obs: dict) -> np.ndarray:
    return obs["candidates"][obs["candidate_mask"].astype(bool)][env.config.n_featured :]


def _engaged_history(obs: dict, n: int) -> np.ndarray:
    keep = (obs["events"] > 0) & (obs["events"] != IGNORED)
    return obs["items"][keep][-n:] - 1


def test_candidate_mix_shares_are_honoured() -> None:
    """Each source on its own, then the default mix (K = 100, 10 featured: 36 popular, 36 related, 18 uniform)."""
    base = {"preset": "xl"}
    shares = {"popular": (1.0, 0.0, 0.0), "related": (0.0, 1.0, 0.0), "uniform": (0.0, 0.0, 1.0)}
    stats = {}
    for name, (p, r, u) in shares.items():
        env = ECommerceEnv({**base, "candidates_popular": p, "candidates_related": r, "candidates_uniform": u})
        rng = np.random.default_rng(0)
        ranks, in_history_categories, covisited = [], [], []
        for seed in range(4):
            obs, _ = env.reset(seed=seed)
            for _ in range(15):
                items = _non_featured(env, obs)
                ranks.append(env.catalog.popularity_rank[items])
                anchors = _engaged_history(obs, env.config.candidates_history)
                in_history_categories.append(np.isin(env.catalog.category[items], env.catalog.category[anchors]))
                near = np.concatenate([env.catalog.covisited(int(a), COVISIT_WINDOW) for a in anchors])
                covisited.append(np.isin(items, near))
                slots = np.flatnonzero(obs["candidate_mask"])
                obs, _, term, trunc, _ = env.step(int(slots[rng.integers(len(slots))]))
                if term or trunc:
                    break
        stats[name] = {"median_rank": np.median(np.concatenate(ranks)),
                       "in_history_categories": np.concatenate(in_history_categories).mean(),
                       "covisited": np.concatenate(covisited).mean()}
    n = 1_000_000
    assert stats["popular"]["median_rank"] < 0.02 * n  # popularity draws sit in the head
    assert 0.4 * n < stats["uniform"]["median_rank"] < 0.6 * n  # uniform draws spread over the catalog
    assert stats["related"]["in_history_categories"] == 1.0  # all related to a recent engaged history item
    assert 0.3 < stats["related"]["covisited"] < 0.7  # about half of them co-visited neighbours
    assert stats["popular"]["in_history_categories"] < 0.1 and stats["uniform"]["in_history_categories"] < 0.05
    mix = ECommerceEnv("xl").retrieval
    assert (mix.n_popular, mix.n_related, mix.n_uniform) == (36, 36, 18)
    env = ECommerceEnv("xl")
    shares_related = []
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        items = _non_featured(env, obs)
        shares_related.append(np.isin(env.catalog.category[items], env.catalog.category[_engaged_history(obs, 5)]).mean())
    assert 0.25 < np.mean(shares_related) < 0.6, shares_related  # ~36 of ~85 distinct non-featured candidates


def test_cold_start_history_gets_popular_candidates() -> None:
    env = ECommerceEnv({"preset": "large", "candidates_popular": 0.0, "candidates_related": 1.0,
                        "candidates_uniform": 0.0, "users": {"initial_history": [0, 0]},
                        "response": {"organic_browsing": False}})
    obs, _ = env.reset(seed=0)
    assert not obs["items"].any()
    assert np.median(env.catalog.popularity_rank[_non_featured(env, obs)]) < 1_000  # popular draws


def test_stockouts_are_consistent_within_a_session_for_k_below_n() -> None:
    env = ECommerceEnv({"preset": "large", "item_dropout": 0.5})
    rng = np.random.default_rng(0)
    sessions = []
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        valid, invalid = set(), set()
        done = False
        while not done:
            mask = obs["candidate_mask"].astype(bool)
            ids = obs["candidates"]
            valid |= set(ids[mask].tolist())
            invalid |= set(ids[~mask & (ids != 0)].tolist())  # out of stock (id 0 may also be padding)
            assert mask.any() and mask[env.action_space.sample()]
            assert np.array_equal(env.in_stock(ids[mask]), np.ones(mask.sum(), dtype=bool))
            slots = np.flatnonzero(mask)
            obs, _, term, trunc, _ = env.step(int(slots[rng.integers(len(slots))]))
            done = term or trunc
        assert not valid & invalid  # an item out of stock at one step is out at every step of the session
        share_out = len(invalid) / (len(valid) + len(invalid))
        assert 0.3 < share_out < 0.7, share_out
        sessions.append(frozenset(invalid))
    assert len(set(sessions)) == len(sessions)  # a new stock each session
    again = ECommerceEnv({"preset": "large", "item_dropout": 0.5})
    a, _ = again.reset(seed=3)
    b, _ = env.reset(seed=3)
    assert np.array_equal(a["candidate_mask"], b["candidate_mask"])  # reproducible per seed


def test_stockouts_always_leave_a_valid_candidate() -> None:
    env = ECommerceEnv({"preset": "large", "item_dropout": 0.95})
    for seed in range(40):
        obs, _ = env.reset(seed=seed)
        for _ in range(3):
            assert obs["candidate_mask"].sum() >= 1
            assert obs["candidate_mask"][: env.config.n_featured].sum() >= 1  # a featured item stays
            obs, *_ = env.step(int(env.action_space.sample()))


@pytest.mark.parametrize("preset", ["large", "default"])
def test_stock_draw_touches_no_rng_at_dropout_zero(preset: str) -> None:
    for p, touched in ((0.0, False), (0.3, True)):
        env = ECommerceEnv({"preset": preset, "item_dropout": p})
        env.reset(seed=0)
        before = env.np_random.bit_generator.state
        env._draw_stock(env.np_random)
        assert (env.np_random.bit_generator.state != before) == touched
    plain, dropped = ECommerceEnv(preset), ECommerceEnv({"preset": preset, "item_dropout": 0.3})
    for seed in range(3):  # the user and the initial history are drawn before any stock
        a, _ = plain.reset(seed=seed)
        b, _ = dropped.reset(seed=seed)
        assert np.array_equal(a["items"], b["items"]) and plain.user.patience == dropped.user.patience


def test_million_item_env_steps_without_catalog_sized_allocations() -> None:
    env = ECommerceEnv("xl")
    env.reset(seed=0)  # builds the shared catalog tables once
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        obs, _ = env.reset(seed=1)
        for _ in range(100):
            slots = np.flatnonzero(obs["candidate_mask"])
            obs, _, term, trunc, _ = env.step(int(slots[rng.integers(len(slots))]))
            if term or trunc:
                obs, _ = env.reset()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < env.n_items * 8 / 20, peak  # measured ~0.1 MB against 8 MB for one float per item
    assert isinstance(env.user.last_shown, dict) and len(env.user.last_shown) <= env.t


@pytest.mark.parametrize("preset", ["large", "xl"])
def test_baselines_pick_valid_slots_at_scale(preset: str) -> None:
    env = ECommerceEnv(preset)
    for name, policy in BASELINES.items():
        stats = run_episodes(preset, policy, 3, seed=0, env=env)
        assert stats.lengths.min() >= 1, name
    oracle = run_episodes(preset, BASELINES["myopic_oracle"], 20, seed=0, env=env).returns.mean()
    rnd = run_episodes(preset, BASELINES["random"], 20, seed=0, env=env).returns.mean()
    assert oracle > rnd


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"candidates_popular": 0.5, "candidates_related": 0.4, "candidates_uniform": 0.2}, "candidates_uniform"),
        ({"candidates_popular": -0.1, "candidates_related": 0.9, "candidates_uniform": 0.2}, "candidates_popular"),
        ({"n_candidates": 100, "n_featured": 101}, "n_featured"),
    ],
)
def test_candidate_config_is_validated(override: dict, key: str) -> None:
    with pytest.raises(EnvConfigError, match=key):
        make_env_config({"preset": "large", **override})
