"""Tests for rllib_rec.agent.learner (weighted loss) and rllib_rec.agent.replay, plus a tiny end-to-end DQN run."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils.metrics import TD_ERROR_KEY

from rllib_rec.agent.dqn import RecDQNConfig
from rllib_rec.agent.learner import WeightedDQNTorchLearner, combined_weights
from rllib_rec.agent.module import TransformerDQNModule
from rllib_rec.agent.replay import PRIORITIZED_BUFFER, TRANSITION_BUFFER, UNIFORM_BUFFER
from rllib_rec.agent.spec import REWARD_PREDS, QNetSpec

torch.set_num_threads(1)


class ToyRecEnv(gym.Env):
    """Tiny env with the simulator's observation contract.

    The user has a favourite item that shows up as organic "click" events; recommending the most
    recently clicked item pays 1. Episodes start cold (all padding) and the mask is random.
    """

    def __init__(self, config=None):
        cfg = dict(config or {})
        self.n, self.t, self.horizon = (
            cfg.get("n_items", 10),
            cfg.get("history_length", 20),
            cfg.get("horizon", 10),
        )
        self.observation_space = gym.spaces.Dict(
            {
                "items": gym.spaces.Box(0, self.n, (self.t,), np.int32),
                "events": gym.spaces.Box(0, 5, (self.t,), np.int32),
                "candidates": gym.spaces.Box(0, self.n - 1, (self.n,), np.int32),
                "candidate_mask": gym.spaces.Box(0, 1, (self.n,), np.int8),
            }
        )
        self.action_space = gym.spaces.Discrete(self.n)

    def _push(self, token, event):
        self.items = np.roll(self.items, -1)
        self.events = np.roll(self.events, -1)
        self.items[-1], self.events[-1] = token, event

    def _obs(self):
        self.mask = (self.np_random.random(self.n) < 0.5).astype(np.int8)
        self.mask[self.fav] = 1 if self.np_random.random() < 0.8 else self.mask[self.fav]
        if not self.mask.any():
            self.mask[self.np_random.integers(self.n)] = 1
        return {"items": self.items.copy(), "events": self.events.copy(),
                "candidates": np.arange(self.n, dtype=np.int32), "candidate_mask": self.mask.copy()}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.items = np.zeros(self.t, np.int32)
        self.events = np.zeros(self.t, np.int32)
        self.fav, self.steps = int(self.np_random.integers(self.n)), 0
        return self._obs(), {}

    def step(self, action):
        assert self.mask[action] == 1, "masked item recommended"
        clicks = self.events == 4
        last_click = int(self.items[np.flatnonzero(clicks)[-1]]) if clicks.any() else -1
        reward = float(int(action) + 1 == last_click)
        self._push(int(action) + 1, 4 if reward else 2)
        if self.np_random.random() < 0.5:
            self._push(self.fav + 1, 4)
        self.steps += 1
        return self._obs(), reward, False, self.steps >= self.horizon, {}


# ------------------------------------------------------------------------------------ combined_weights
def test_combined_weights_hand_numbers():
    per = torch.tensor([0.1, 0.2, 0.05, 0.05])
    p = torch.tensor([0.5, 0.01, 1.0, 0.25])
    # IPS: min(1/p, 10) = [2, 10, 1, 4]
    ips = torch.tensor([2.0, 10.0, 1.0, 4.0])
    torch.testing.assert_close(combined_weights(per, p, False, True, 10.0, "none"), ips)
    torch.testing.assert_close(combined_weights(per, p, True, False, 10.0, "none"), per)
    torch.testing.assert_close(combined_weights(per, p, True, True, 10.0, "none"), per * ips)
    raw = torch.tensor([0.2, 2.0, 0.05, 0.2])  # per * ips, mean 0.6125
    torch.testing.assert_close(combined_weights(per, p, True, True, 10.0), raw / 0.6125)
    torch.testing.assert_close(combined_weights(per, p, True, False, 10.0), per / 0.1)
    torch.testing.assert_close(combined_weights(per, p, False, False, 10.0), torch.ones(4))
    torch.testing.assert_close(combined_weights(per, None, False, False, 10.0), torch.ones(4))
    # p = 0 / NaN are clipped, not inf.
    w = combined_weights(None, torch.tensor([0.0, float("nan"), 1.0]), False, True, 5.0, "none")
    torch.testing.assert_close(w, torch.tensor([5.0, 5.0, 1.0]))


def test_combined_weights_fail_fast():
    with pytest.raises(ValueError):
        combined_weights(torch.ones(3), None, True, True, 10.0)
    with pytest.raises(ValueError):
        combined_weights(None, torch.ones(3), True, False, 10.0)
    with pytest.raises(ValueError):
        combined_weights(torch.ones(3), torch.ones(3), True, True, 0.5)


# ------------------------------------------------------------------------------------ learner loss
def _config(**learner_cfg):
    return (
        RecDQNConfig()
        .environment(ToyRecEnv)
        .training(gamma=0.9, double_q=True)
        .learners(learner_class=WeightedDQNTorchLearner, learner_config_dict=learner_cfg)
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"use_per": True, "use_ips": True, "ips_clip": 10.0},
        {"use_per": False, "use_ips": True, "ips_clip": 3.0},
        {"use_per": True, "use_ips": False},
        {"use_per": False, "use_ips": False},
    ],
)
def test_loss_equals_hand_computed_weighted_huber(settings):
    config = _config(**settings)
    learner = WeightedDQNTorchLearner(config=config)
    q = torch.tensor([[1.0, 2.0, -1e9], [0.5, 0.0, 3.0], [4.0, -1e9, 0.0]], requires_grad=True)
    q_next = torch.tensor([[0.0, 1.0, 0.0], [-1e9, 2.0, 1.0], [0.0, 0.0, 5.0]])  # online next: argmax 1, 1, 2
    q_target_next = torch.tensor([[9.0, 0.5, 9.0], [9.0, 4.0, 9.0], [9.0, 9.0, 2.0]])
    batch = {
        Columns.ACTIONS: torch.tensor([1, 2, 0]),
        Columns.REWARDS: torch.tensor([0.0, 1.0, 2.0]),
        Columns.TERMINATEDS: torch.tensor([False, False, True]),
        "n_step": torch.tensor([1.0, 2.0, 1.0]),
        "weights": torch.tensor([0.1, 0.05, 0.2]),
        Columns.ACTION_PROB: torch.tensor([0.5, 0.1, 1.0]),
    }
    fwd = {QF_PREDS: q, QF_NEXT_PREDS: q_next, QF_TARGET_NEXT_PREDS: q_target_next}
    loss = learner.compute_loss_for_module(
        module_id="default_policy", config=config, batch=batch, fwd_out=fwd
    )

    # By hand: q_sel = [2, 3, 4]; targets = [0 + .9*0.5, 1 + .81*4, 2 (terminal)] = [0.45, 4.24, 2]
    err = np.array([2 - 0.45, 3 - 4.24, 4 - 2.0])
    huber = np.where(np.abs(err) <= 1, 0.5 * err**2, np.abs(err) - 0.5)
    w = np.ones(3)
    if settings["use_per"]:
        w *= [0.1, 0.05, 0.2]
    if settings["use_ips"]:
        w *= np.minimum(1 / np.array([0.5, 0.1, 1.0]), settings["ips_clip"])
    w /= w.mean()
    assert loss.item() == pytest.approx(float(np.mean(w * huber)), rel=1e-5)
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_reward_loss_adds_the_weighted_squared_error_of_the_taken_slot():
    config = _config(use_per=False, use_ips=False, reward_loss_weight=0.5)
    learner = WeightedDQNTorchLearner(config=config)
    q = torch.tensor([[1.0, 2.0], [0.5, 3.0]], requires_grad=True)
    preds = torch.tensor([[0.1, 0.7], [1.5, -2.0]], requires_grad=True)
    batch = {Columns.ACTIONS: torch.tensor([1, 0]), Columns.REWARDS: torch.tensor([1.0, 2.0]),
             Columns.TERMINATEDS: torch.tensor([True, True]), "n_step": torch.tensor([1.0, 1.0]),
             "weights": torch.ones(2)}
    fwd = {QF_PREDS: q, QF_NEXT_PREDS: torch.zeros(2, 2), QF_TARGET_NEXT_PREDS: torch.zeros(2, 2),
           REWARD_PREDS: preds}
    loss = learner.compute_loss_for_module(module_id="default_policy", config=config, batch=batch, fwd_out=fwd)
    # TD: terminal targets = rewards; q_sel = [2, 0.5] -> errors [1, -1.5] -> Huber [0.5, 1.0]
    # reward head: taken slots [0.7, 1.5] vs [1, 2] -> squared errors [0.09, 0.25]
    assert loss.item() == pytest.approx(np.mean([0.5, 1.0]) + 0.5 * np.mean([0.09, 0.25]), rel=1e-5)
    loss.backward()
    assert preds.grad[0, 0] == 0 and preds.grad[1, 1] == 0 and preds.grad[0, 1] != 0
    fwd.pop(REWARD_PREDS)
    with pytest.raises(ValueError, match="no reward head"):
        learner.compute_loss_for_module(module_id="default_policy", config=config, batch=batch, fwd_out=fwd)


# ------------------------------------------------------------------------------------ end to end
MODEL_CONFIG = {
    "qnet": QNetSpec(10, 10, 20, embed_dim=16, num_heads=2, num_layers=1, ff_dim=32, mlp_hidden=(32,)).to_dict(),
    "jit_trace": True,
}


def e2e_config(buffer_config, **learner_cfg):
    return (
        RecDQNConfig()
        .environment(ToyRecEnv, env_config={"n_items": 10, "history_length": 20, "horizon": 10})
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=2, rollout_fragment_length=8)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=TransformerDQNModule, model_config=MODEL_CONFIG))
        .training(
            lr=1e-3,
            train_batch_size_per_learner=16,
            num_steps_sampled_before_learning_starts=16,
            target_network_update_freq=32,
            n_step=1,
            epsilon=[(0, 1.0), (200, 0.1)],
            replay_buffer_config=buffer_config,
        )
        .learners(
            learner_class=WeightedDQNTorchLearner,
            learner_config_dict={"use_per": True, "use_ips": True, "ips_clip": 10.0, **learner_cfg},
        )
        .reporting(min_sample_timesteps_per_iteration=32)
        .debugging(seed=0)
    )


@pytest.fixture
def ray_local():
    import ray

    os.environ.setdefault("KERAS_BACKEND", "torch")
    # address="local": a private instance even when a `ray start` head (or a stale record of one in
    # /tmp/ray/ray_current_cluster) is on this machine; without it ray.init would try to join that.
    ray.init(address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize(
    "buffer_config",
    [
        {"type": PRIORITIZED_BUFFER, "capacity": 1000},  # alpha/beta from the subclass defaults
        {"type": UNIFORM_BUFFER, "capacity": 1000},
        {"type": TRANSITION_BUFFER, "capacity": 1000, "alpha": 0.6, "beta": 0.4},  # RecDQN's pipelined step
    ],
)
def test_end_to_end_dqn_trains(ray_local, buffer_config):
    buffer = buffer_config["type"]
    algo = e2e_config(buffer_config).build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        learner = result["learners"]["default_policy"]
        assert np.isfinite(learner["qf_loss"])
        assert learner["sample_weight_max"] >= 1.0 and 0 < learner["behaviour_prob_mean"] <= 1.0
        rb = algo.local_replay_buffer
        assert type(rb).__module__ + "." + type(rb).__name__ == buffer
        if buffer == TRANSITION_BUFFER:
            held = rb._priority[: len(rb)]
            assert len(np.unique(held)) > 1  # TD-error priority updates happened
            assert np.isfinite(rb._probs[: len(rb)]).all()
            # Replay ratio 1 here (batch 16 = one round of 2 envs x 8 steps): every step sampled after
            # learning starts is trained once, up to the last round's (trained one step later).
            sampled = result["env_runners"]["num_env_steps_sampled_lifetime"]
            trained = result["learners"]["__all_modules__"]["num_env_steps_trained_lifetime"]
            assert sampled - 16 - 2 * 16 <= trained <= sampled - 16
            assert TD_ERROR_KEY not in learner  # taken out of the learner's metrics after every update
            # The sampling module got the learner's weights (copied tensor to tensor in this process).
            learned = dict(algo.learner_group._learner.module["default_policy"].named_parameters())
            sampling = dict(algo.env_runner.module.named_parameters())
            assert sampling and all(torch.equal(p, learned[n]) for n, p in sampling.items())
        else:
            assert "action_prob" in rb.episodes[0].extra_model_outputs
        if buffer == PRIORITIZED_BUFFER:
            prios = np.array([rb._sum_segment[i] for i in range(rb.get_num_timesteps())])
            assert len(np.unique(prios)) > 1  # TD-error priority updates happened
            assert rb._alpha == 0.6 and rb.beta == 0.4
        module = algo.get_module()
        assert isinstance(module, TransformerDQNModule)
        # The ToyRecEnv asserts on masked actions, so finishing episodes also proves masks are respected.
        assert result["env_runners"]["num_episodes"] > 0 or result["env_runners"]["num_episodes_lifetime"] > 0
    finally:
        algo.stop()


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_fused_global_norm_clip_equals_rllibs(scale):
    from ray.rllib.utils.torch_utils import clip_gradients

    from rllib_rec.agent.learner import clip_gradients_fused

    torch.manual_seed(0)
    ours = {i: torch.randn(s) * scale for i, s in enumerate([(3, 4), (100,), (512, 32), (7,)])}
    ours[4] = None
    rllib = {k: None if v is None else v.clone() for k, v in ours.items()}
    norm = clip_gradients_fused(ours, grad_clip=10.0, grad_clip_by="global_norm")
    expected = clip_gradients(rllib, grad_clip=10.0, grad_clip_by="global_norm")
    assert torch.equal(norm, expected)
    assert all(torch.equal(ours[k], rllib[k]) for k in range(4)) and ours[4] is None
    assert (torch.linalg.vector_norm(torch.cat([ours[k].flatten() for k in range(4)])) <= 10.0 + 1e-3)


def test_a_non_finite_gradient_is_made_finite_before_the_step(ray_local):
    config = e2e_config({"type": PRIORITIZED_BUFFER, "capacity": 1000})
    algo = config.framework("torch", torch_skip_nan_gradients=True).build_algo()  # as build_algo_config sets
    try:
        learner = algo.learner_group._learner
        grads = {pid: torch.full_like(p, float("nan")) for pid, p in learner._params.items() if p.requires_grad}
        learner.apply_gradients(grads)
        assert all(torch.isfinite(p).all() for p in learner._params.values())
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in learner._params.values())
    finally:
        algo.stop()


def test_reward_loss_weight_builds_the_head_and_trains_it(ray_local):
    """`dqn.reward_loss_weight` > 0 switches the module's reward head on and gives the learner its weight; a
    run then logs a finite reward loss, and the sampling module holds the Q-network only."""
    from rllib_rec.agent.algo import learner_config, module_model_config
    from rllib_rec.agent.spec import REWARD_HEAD_KEY
    from rllib_rec.config import load_config

    base = load_config("configs/debug.yaml")
    assert module_model_config(base)[REWARD_HEAD_KEY] is False and learner_config(base)["reward_loss_weight"] == 0
    on = load_config("configs/debug.yaml", overrides=["dqn.reward_loss_weight=0.5"])
    assert module_model_config(on)[REWARD_HEAD_KEY] is True and learner_config(on)["reward_loss_weight"] == 0.5

    config = e2e_config({"type": PRIORITIZED_BUFFER, "capacity": 1000}, reward_loss_weight=1.0)
    config.rl_module(rl_module_spec=RLModuleSpec(module_class=TransformerDQNModule,
                                                 model_config={**MODEL_CONFIG, REWARD_HEAD_KEY: True}))
    algo = config.build_algo()
    try:
        for _ in range(2):
            result = algo.train()
        assert np.isfinite(result["learners"]["default_policy"]["reward_loss"])
        assert hasattr(algo.learner_group._learner.module["default_policy"], "_train_net")
        assert not hasattr(algo.env_runner.module, "_train_net")
    finally:
        algo.stop()
