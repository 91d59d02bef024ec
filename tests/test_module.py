"""Tests for rllib_rec.agent.module.TransformerDQNModule: masked exploration/inference, ACTION_PROB, targets, trace."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
from ray.rllib.core.columns import Columns

from rllib_rec.agent.model import MASKED_Q
from rllib_rec.agent.module import TransformerDQNModule, masked_epsilon_greedy
from rllib_rec.agent.spec import REWARD_PREDS, QNetSpec

torch.set_num_threads(1)
N, T = 10, 20
OBS_SPACE = gym.spaces.Dict(
    {
        "items": gym.spaces.Box(0, N, (T,), np.int32),
        "events": gym.spaces.Box(0, 5, (T,), np.int32),
        "candidates": gym.spaces.Box(0, N - 1, (N,), np.int32),
        "candidate_mask": gym.spaces.Box(0, 1, (N,), np.int8),
    }
)
SMALL = {"qnet": QNetSpec(N, N, T, embed_dim=16, num_heads=2, ff_dim=32, mlp_hidden=(32,)).to_dict(), "double_q": True,
         "num_atoms": 1}


def make_module(epsilon=1.0, inference_only=False, **cfg):
    m = TransformerDQNModule(
        observation_space=OBS_SPACE,
        action_space=gym.spaces.Discrete(np.int64(N)),  # np.int64 like real spaces
        model_config={**SMALL, "epsilon": epsilon, **cfg},
        inference_only=inference_only,
    )
    if not inference_only:
        m.make_target_networks()
    return m


def make_obs(rng, batch, cold_frac=0.25, mask_p=0.3):
    items = rng.integers(1, N + 1, (batch, T)).astype(np.int32)
    lengths = rng.integers(1, T + 1, batch)
    lengths[: int(batch * cold_frac)] = 0  # cold-start rows: all padding
    for i, length in enumerate(lengths):
        items[i, : T - length] = 0
    events = rng.integers(1, 6, (batch, T)).astype(np.int32)
    events[items == 0] = 0
    mask = (rng.random((batch, N)) < mask_p).astype(np.int8)
    mask[np.arange(batch), rng.integers(0, N, batch)] = 1
    candidates = np.stack([rng.permutation(N) for _ in range(batch)]).astype(np.int32)  # slots hold any items
    obs = {"items": items, "events": events, "candidates": candidates, "candidate_mask": mask}
    return {k: torch.as_tensor(v) for k, v in obs.items()}


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def test_forward_shapes(rng):
    m = make_module(epsilon=0.5)
    obs = make_obs(rng, 16)
    q = m.compute_q_values({Columns.OBS: obs})[QF_PREDS]
    assert q.shape == (16, N) and torch.isfinite(q).all()
    assert (q[obs["candidate_mask"] == 0] == MASKED_Q).all()
    out = m.forward_exploration({Columns.OBS: obs}, t=0)
    assert out[Columns.ACTIONS].shape == (16,) and out[Columns.ACTION_PROB].shape == (16,)
    assert out[Columns.ACTION_PROB].dtype == torch.float32
    assert m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS].shape == (16,)
    nxt = make_obs(rng, 16)
    batch = {Columns.OBS: obs, Columns.NEXT_OBS: nxt}
    train = m.forward_train(batch)
    for key in (QF_PREDS, QF_NEXT_PREDS, QF_TARGET_NEXT_PREDS):
        assert train[key].shape == (16, N)


@pytest.mark.parametrize("epsilon", [0.0, 1.0, 0.3])
def test_masked_items_never_selected(rng, epsilon):
    m = make_module(epsilon=epsilon)
    obs = make_obs(rng, 4000, cold_frac=0.3, mask_p=0.15)
    mask = obs["candidate_mask"].bool()
    rows = torch.arange(4000)
    for _ in range(2):
        a = m.forward_exploration({Columns.OBS: obs}, t=0)[Columns.ACTIONS]
        assert mask[rows, a].all()
    a = m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    assert mask[rows, a].all()


def test_cold_start_only_batch_explores_uniformly_over_mask():
    m = make_module(epsilon=1.0)
    B = 6000
    mask = torch.zeros(B, N, dtype=torch.int8)
    mask[:, [1, 4, 7]] = 1
    obs = {
        "items": torch.zeros(B, T, dtype=torch.int32),
        "events": torch.zeros(B, T, dtype=torch.int32),
        "candidates": torch.arange(N, dtype=torch.int32).repeat(B, 1),
        "candidate_mask": mask,
    }
    out = m.forward_exploration({Columns.OBS: obs}, t=0)
    counts = torch.bincount(out[Columns.ACTIONS], minlength=N).numpy() / B
    np.testing.assert_allclose(counts[[1, 4, 7]], 1 / 3, atol=0.03)
    assert counts[[0, 2, 3, 5, 6, 8, 9]].sum() == 0
    torch.testing.assert_close(out[Columns.ACTION_PROB], torch.full((B,), 1 / 3))
    assert mask[torch.arange(B), m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]].all()


def test_action_prob_formula(rng):
    eps = 0.3
    m = make_module(epsilon=eps)
    obs = make_obs(rng, 2000)
    out = m.forward_exploration({Columns.OBS: obs}, t=0)
    greedy = m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    n_allowed = obs["candidate_mask"].sum(-1).float()
    expected = (1 - eps) * (out[Columns.ACTIONS] == greedy).float() + eps / n_allowed
    torch.testing.assert_close(out[Columns.ACTION_PROB], expected)
    # And the probabilities are the true sampling frequencies.
    q = torch.tensor([[0.0, 2.0, 1.0, 5.0]]).repeat(20000, 1)
    mask = torch.tensor([[1, 1, 1, 0]]).repeat(20000, 1)
    a, p = masked_epsilon_greedy(q, mask, eps)
    freq = torch.bincount(a, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.8, 0.1, 0.0]), atol=0.015, rtol=0)
    for act, prob in ((0, 0.1), (1, 0.8), (2, 0.1)):
        torch.testing.assert_close(p[a == act], torch.full_like(p[a == act], prob))


def test_epsilon_schedule_is_followed(rng):
    m = make_module(epsilon=[(0, 1.0), (100, 0.0)])
    obs = make_obs(rng, 500, cold_frac=0.0)
    greedy = m.forward_inference({Columns.OBS: obs})[Columns.ACTIONS]
    late = m.forward_exploration({Columns.OBS: obs}, t=1000)
    assert torch.equal(late[Columns.ACTIONS], greedy)
    torch.testing.assert_close(late[Columns.ACTION_PROB], torch.ones(500))


def test_target_network_and_inference_only_state():
    m = make_module()
    obs = make_obs(np.random.default_rng(1), 8)
    q = m.compute_q_values({Columns.OBS: obs})[QF_PREDS]
    torch.testing.assert_close(m.forward_target({Columns.OBS: obs})[QF_PREDS], q)
    [(online, target)] = m.get_target_network_pairs()
    assert [id(p) for p in online] == [id(p) for p in m.qnet.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in m._target_qnet.parameters())
    keys = set(m.state_dict())
    assert any(k.startswith("_target_qnet.") for k in keys)
    inf_state = m.get_state(inference_only=True)
    assert inf_state and not any(k.startswith("_target_qnet") for k in inf_state)
    worker = make_module(inference_only=True)
    worker.set_state(inf_state)
    torch.testing.assert_close(worker.compute_q_values({Columns.OBS: obs})[QF_PREDS], q)


def test_polyak_target_update_moves_trainable_weights_only():
    """RLlib's own target update over the module's pairs: trainable weights averaged in place, the constant
    tables untouched, and the (traced) target pass sees the new weights."""
    from ray.rllib.core.learner.utils import update_target_network

    m = make_module()
    obs = make_obs(np.random.default_rng(2), 8)
    m.forward_target({Columns.OBS: obs})  # trace the target net before its weights change
    trainable = {n for n, p in m.qnet.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in m._target_qnet.named_parameters()}
    assert set(before) - trainable, "the test module should have a constant (non-trainable) table"
    with torch.no_grad():
        for name, p in m.qnet.named_parameters():
            if name in trainable:
                p.add_(1.0)
    for online, target in m.get_target_network_pairs():
        update_target_network(main_net=online, target_net=target, tau=0.5)
    online = dict(m.qnet.named_parameters())
    for name, p in m._target_qnet.named_parameters():
        expected = 0.5 * online[name] + 0.5 * before[name] if name in trainable else before[name]
        torch.testing.assert_close(p, expected.detach())
    for online, target in m.get_target_network_pairs():
        update_target_network(main_net=online, target_net=target, tau=1.0)
    torch.testing.assert_close(m.forward_target({Columns.OBS: obs})[QF_PREDS],
                               m.compute_q_values({Columns.OBS: obs})[QF_PREDS])


def test_jit_trace_matches_eager_and_stays_out_of_state_dict():
    traced, eager = make_module(jit_trace=True), make_module(jit_trace=False)
    eager.load_state_dict(traced.state_dict())
    rng = np.random.default_rng(2)
    obs, nxt = make_obs(rng, 32), make_obs(rng, 32)
    actions = torch.as_tensor(rng.integers(0, N, 32))
    grads = []
    for m in (traced, eager):
        out = m.forward_train({Columns.OBS: obs, Columns.NEXT_OBS: nxt})
        loss = (
            out[QF_PREDS].gather(1, actions[:, None]).pow(2).mean() + out[QF_NEXT_PREDS].clamp(min=-10).mean()
        )
        m.zero_grad()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.qnet.named_parameters() if p.requires_grad})
    assert traced._traced and not eager._traced
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-6, rtol=1e-5)
    assert set(traced.state_dict()) == set(eager.state_dict())
    # Weight syncs reach the traced graph (parameters are shared, no re-trace needed).
    with torch.no_grad():
        for p in traced.qnet.parameters():
            if p.is_floating_point():
                p.add_(0.01)
    traced._target_qnet.load_state_dict(traced.qnet.state_dict())
    eager.load_state_dict(traced.state_dict())
    for fwd in ("compute_q_values", "forward_target"):
        torch.testing.assert_close(
            getattr(traced, fwd)({Columns.OBS: obs})[QF_PREDS],
            getattr(eager, fwd)({Columns.OBS: obs})[QF_PREDS],
        )


def test_rejects_distributional_and_bad_spaces():
    with pytest.raises(ValueError):
        make_module(num_atoms=51)
    with pytest.raises(ValueError):
        TransformerDQNModule(
            observation_space=OBS_SPACE,
            action_space=gym.spaces.Discrete(N + 1),
            model_config=dict(SMALL, epsilon=0.1),
        )


def test_train_forward_matches_the_stock_double_q_forward():
    """Only Q(obs) carries gradients: the same Q-values and the same loss gradient as RLlib's forward over
    cat(obs, next_obs), and nothing of the next-obs passes is kept for backward."""
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

    m = make_module(jit_trace=False)
    rng = np.random.default_rng(3)
    batch = {Columns.OBS: make_obs(rng, 32), Columns.NEXT_OBS: make_obs(rng, 32)}
    actions = torch.as_tensor(rng.integers(0, N, 32))
    rewards = torch.as_tensor(rng.random(32), dtype=torch.float32)
    results = []
    for forward in (m.forward_train, lambda b: DefaultDQNTorchRLModule._forward_train(m, b)):
        out = forward(batch)
        best = out[QF_NEXT_PREDS].argmax(-1, keepdim=True)
        target = rewards + 0.9 * out[QF_TARGET_NEXT_PREDS].gather(1, best).squeeze(1)
        loss = torch.nn.functional.huber_loss(out[QF_PREDS].gather(1, actions[:, None]).squeeze(1), target.detach())
        m.zero_grad()
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in m.qnet.named_parameters() if p.grad is not None}))
    (ours, our_grads), (stock, stock_grads) = results
    assert not ours[QF_NEXT_PREDS].requires_grad and not ours[QF_TARGET_NEXT_PREDS].requires_grad
    for key in (QF_PREDS, QF_NEXT_PREDS, QF_TARGET_NEXT_PREDS):
        torch.testing.assert_close(ours[key], stock[key], atol=1e-5, rtol=1e-5)
    assert our_grads.keys() == stock_grads.keys() and our_grads
    for name, g in our_grads.items():
        torch.testing.assert_close(g, stock_grads[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("jit_trace", [False, True])
def test_reward_head_shares_the_encoder_and_stays_out_of_acting(jit_trace):
    """With a reward head the training forward also predicts each slot's reward, from the Q-network's own
    layers: Q is unchanged, the Q-network's weights are exactly a plain module's, the reward loss's gradient
    reaches the shared encoder, and inference-only modules (env runners, export) never hold the head."""
    m = make_module(jit_trace=jit_trace, reward_head=True)
    plain = make_module(jit_trace=jit_trace)
    rng = np.random.default_rng(4)
    batch = {Columns.OBS: make_obs(rng, 16), Columns.NEXT_OBS: make_obs(rng, 16)}
    assert sorted(v.path for v in m.qnet.weights) == sorted(v.path for v in plain.qnet.weights)
    for _ in range(2):  # with a trace: first the sequential, then the threaded training forward
        out = m.forward_train(batch)
        assert out[REWARD_PREDS].shape == (16, N)
        torch.testing.assert_close(out[QF_PREDS], m.compute_q_values({Columns.OBS: batch[Columns.OBS]})[QF_PREDS])
    m.zero_grad()
    out[REWARD_PREDS].sum().backward()
    grads = {n: p.grad for n, p in m._train_net.named_parameters() if p.grad is not None}
    assert any("mha_0" in n for n in grads) and any("reward_query" in n for n in grads)
    assert not any(n.endswith(".value/kernel") for n in grads)  # the Q-only state value gets nothing
    inf_state = m.get_state(inference_only=True)
    assert not any(k.startswith("_train_net") for k in inf_state)
    worker = make_module(inference_only=True, reward_head=True)
    assert not hasattr(worker, "_train_net")
    worker.set_state(inf_state)
    torch.testing.assert_close(worker.compute_q_values({Columns.OBS: batch[Columns.OBS]})[QF_PREDS],
                               m.compute_q_values({Columns.OBS: batch[Columns.OBS]})[QF_PREDS])
