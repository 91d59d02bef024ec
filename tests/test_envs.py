"""ECommerceEnv: gymnasium API conformance, determinism, spaces and invalid actions.

Actions are candidate slot indices; with ``n_candidates: 0`` (``seed``, ``default``) slot index == item id.
Scale-specific behaviour (K < N candidates, stock-outs, the 1M-item shop) is in ``tests/test_env_scale.py``."""

from __future__ import annotations

import ast
import pathlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import ECommerceEnv, InvalidActionError
from envs.response import IGNORED, ORGANIC

PRESETS = ["seed", "default", "large", "xl"]


@pytest.mark.parametrize("preset", PRESETS)
def test_check_env_passes(preset: str) -> None:
    check_env(gym.make(envs.GYM_IDS[preset]).unwrapped, skip_render_check=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_trajectory(preset: str) -> None:
    def rollout(seed: int) -> list:
        env = ECommerceEnv(preset)
        rng = np.random.default_rng(123)  # same policy randomness in both runs
        obs, _ = env.reset(seed=seed)
        traj = [obs]
        for _ in range(60):
            slots = np.flatnonzero(obs["candidate_mask"])
            obs, r, term, trunc, info = env.step(int(slots[rng.integers(len(slots))]))
            traj += [obs, r, term, trunc, info]
            if term or trunc:
                obs, _ = env.reset()
                traj.append(obs)
        return traj

    def same(a: list, b: list) -> bool:
        for x, y in zip(a, b, strict=True):
            if isinstance(x, dict) and "items" in x:
                if not all(np.array_equal(x[k], y[k]) for k in x):
                    return False
            elif x != y:
                return False
        return True

    assert same(rollout(7), rollout(7))
    assert not same(rollout(7), rollout(8))


@pytest.mark.parametrize("preset", PRESETS)
def test_observation_contract(preset: str) -> None:
    env = ECommerceEnv(preset)
    obs, _ = env.reset(seed=0)
    k = env.config.n_candidates or env.n_items
    assert set(obs) == {"items", "events", "candidates", "candidate_mask"}
    assert obs["items"].shape == (20,) and obs["items"].dtype == np.int32
    assert obs["events"].shape == (20,) and obs["events"].dtype == np.int32
    assert obs["candidates"].shape == (k,) and obs["candidates"].dtype == np.int32
    assert obs["candidate_mask"].shape == (k,) and obs["candidate_mask"].dtype == np.int8
    assert obs["candidate_mask"].any() and env.observation_space.contains(obs)
    assert env.action_space.n == k == env.n_candidates
    # Padding is on the left, and items and events pad together.
    filled = obs["items"] > 0
    assert np.array_equal(filled, obs["events"] > 0)
    assert not np.any(np.diff(filled.astype(int)) < 0)


def test_ignored_recommendations_are_visible() -> None:
    env = ECommerceEnv({"preset": "seed"})
    obs, _ = env.reset(seed=3)
    location = env.user.location
    wrong = (location + 1) % env.n_items
    seen_ignored = False
    for _ in range(20):
        obs, _, term, trunc, info = env.step(wrong)
        assert obs["items"][-1] == wrong + 1
        assert obs["events"][-1] == info["event"]
        seen_ignored |= info["event"] == IGNORED
        if term or trunc:
            break
    assert seen_ignored


def test_large_preset_offers_candidate_subsets() -> None:
    env = ECommerceEnv("large")
    obs, _ = env.reset(seed=0)
    offered = [set(env.candidate_items.tolist())]
    featured = env.catalog.by_popularity[:10]
    for _ in range(5):
        assert np.array_equal(obs["candidates"][:10], featured)  # the best-sellers lead every step
        slots = np.flatnonzero(obs["candidate_mask"])
        obs, *_ = env.step(int(slots[-1]))
        offered.append(set(env.candidate_items.tolist()))
    sizes = [len(o) for o in offered]
    assert all(50 <= s <= 100 for s in sizes), sizes
    assert not all(offered[0] == o for o in offered[1:])
    # action_space.sample() without a mask is valid in every state (featured slots).
    for _ in range(50):
        assert obs["candidate_mask"][env.action_space.sample()] == 1


@pytest.mark.parametrize("preset", ["default", "large"])
@pytest.mark.parametrize("bad", [-1, "k", 2.5, "3", None, np.array([1, 2])])
def test_action_outside_space_is_refused(preset: str, bad: object) -> None:
    env = ECommerceEnv(preset)
    env.reset(seed=0)
    bad = env.n_candidates if isinstance(bad, str) and bad == "k" else bad
    with pytest.raises(InvalidActionError, match=rf"not a candidate index in \[0, {env.n_candidates}\)"):
        env.step(bad)


def test_masked_action_is_refused_and_state_unchanged() -> None:
    env = ECommerceEnv({"preset": "large", "item_dropout": 0.3})
    obs, _ = env.reset(seed=0)
    masked = int(np.flatnonzero(obs["candidate_mask"] == 0)[0])
    t, patience = env.t, env.user.patience
    with pytest.raises(InvalidActionError, match=rf"action {masked} is masked"):
        env.step(masked)
    with pytest.raises(InvalidActionError, match="is masked"):
        env.item_of(masked)
    assert env.t == t and env.user.patience == patience


def test_numpy_integer_actions_are_accepted() -> None:
    env = ECommerceEnv("default")
    env.reset(seed=0)
    env.step(np.int64(3))
    env.step(np.array(4))


def test_step_before_reset_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        ECommerceEnv("default").step(0)


def test_initial_history_is_organic_browsing() -> None:
    env = ECommerceEnv("default")
    obs, _ = env.reset(seed=1)
    events = obs["events"][obs["events"] > 0]
    lo, hi = env.config.users.initial_history
    assert lo <= len(events) <= hi
    assert np.all(events == ORGANIC)


def test_catalog_is_fixed_by_its_seed() -> None:
    a, b = ECommerceEnv("default").catalog, ECommerceEnv("default").catalog
    c = ECommerceEnv({"catalog": {"seed": 1}}).catalog
    assert np.array_equal(a.quality, b.quality) and np.array_equal(a.category, b.category)
    assert not np.array_equal(a.quality, c.quality)


def test_envs_package_never_imports_ray_keras_torch() -> None:
    forbidden = {"ray", "keras", "torch", "tensorflow", "rllib_rec"}
    for path in pathlib.Path(envs.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_registered_with_rllib() -> None:
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from rllib_rec.agent.registry import RLLIB_ENV_NAME, register_rllib_env

    assert register_rllib_env() == RLLIB_ENV_NAME
    creator = _global_registry.get(ENV_CREATOR, RLLIB_ENV_NAME)
    env = creator({"preset": "seed"})
    assert isinstance(env, ECommerceEnv) and env.n_items == 10


def test_item_dropout_puts_items_out_of_stock_for_a_whole_session() -> None:
    env = ECommerceEnv({"item_dropout": 0.5})
    in_stock_share, stocks = [], []
    for seed in range(60):
        obs, _ = env.reset(seed=seed)
        stock = obs["candidate_mask"].copy()
        stocks.append(stock)
        in_stock_share.append(stock.mean())
        done = False
        while not done:
            assert np.array_equal(obs["candidate_mask"], stock)  # fixed for the session
            out = np.flatnonzero(stock == 0)
            if out.size:
                with pytest.raises(InvalidActionError, match="masked"):
                    env.step(int(out[0]))
            a = env.action_space.sample()  # unmasked samples stay valid this session
            assert stock[a] == 1
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
    assert 0.4 < np.mean(in_stock_share) < 0.6
    assert len({s.tobytes() for s in stocks}) > 50  # redrawn each session
    again, _ = env.reset(seed=7)
    assert np.array_equal(again["candidate_mask"], stocks[7])  # and reproducible per seed


def test_item_dropout_keeps_a_candidate_and_respects_per_step_candidates() -> None:
    for seed in range(50):
        obs, _ = ECommerceEnv({"item_dropout": 0.95}).reset(seed=seed)
        assert obs["candidate_mask"].sum() >= 1
    env = ECommerceEnv({"preset": "large", "item_dropout": 0.5})
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        valid = obs["candidate_mask"].astype(bool)
        assert valid.sum() >= 1 and env.in_stock(obs["candidates"][valid]).all()
        assert obs["candidate_mask"][env.action_space.sample()] == 1
        obs, *_ = env.step(int(np.flatnonzero(obs["candidate_mask"])[0]))


def test_item_dropout_zero_leaves_seeded_sessions_unchanged() -> None:
    # The stock is drawn after the user and the initial history, and only when item_dropout > 0, so a
    # seed's user is the same with or without it, and dropout 0 is the simulator as it always was.
    plain, dropped = ECommerceEnv("default"), ECommerceEnv({"item_dropout": 0.3})
    for seed in range(5):
        a, _ = plain.reset(seed=seed)
        b, _ = dropped.reset(seed=seed)
        assert np.array_equal(a["items"], b["items"]) and np.array_equal(a["events"], b["events"])
        assert a["candidate_mask"].all() and plain.user.patience == dropped.user.patience


def test_history_is_the_last_events_however_long_the_session() -> None:
    """The observed history is the last H (item, event) pairs, left-padded, across many more pushes than fit in the
    env's history buffer."""
    env = ECommerceEnv({"preset": "large", "max_steps": 400, "response": {"churn": False}})
    obs, _ = env.reset(seed=3)
    h = env.history_length
    pairs = [(i, e) for i, e in zip(obs["items"].tolist(), obs["events"].tolist(), strict=True) if e]
    rng = np.random.default_rng(0)
    for _ in range(300):
        valid = np.flatnonzero(obs["candidate_mask"])
        obs, _, term, trunc, info = env.step(int(rng.choice(valid)))
        assert not term
        # This step pushed the recommendation's event (never organic), then its organic browses: the window's
        # trailing run of organic events.
        events = obs["events"].tolist()
        n_organic = next(i for i, e in enumerate(reversed(events)) if e != ORGANIC)
        assert obs["items"][h - 1 - n_organic] == info["item"] + 1
        pairs.append((info["item"] + 1, info["event"]))
        pairs += [(i, ORGANIC) for i in obs["items"][h - n_organic :].tolist()]
        want = pairs[-h:]
        want = [(0, 0)] * (h - len(want)) + want
        assert list(zip(obs["items"].tolist(), obs["events"].tolist(), strict=True)) == want


def test_user_interest_summaries_follow_interest_moves() -> None:
    """The user's cached interest maximum and category draws match numpy on the current interest after moves."""
    env = ECommerceEnv("large")
    env.reset(seed=11)
    user = env.user
    rng = np.random.default_rng(5)
    for _ in range(200):
        c = int(rng.integers(len(user.interest)))
        assert user.interest_max == float(user.interest.max())
        u = float(rng.random())
        cdf = np.cumsum(user.interest)
        want = min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(cdf) - 1)
        assert user.category_at(u) == want
        user.move_interest(c, float(rng.uniform(0.01, 0.5)))
        assert abs(float(user.interest.sum()) - 1.0) < 1e-9
