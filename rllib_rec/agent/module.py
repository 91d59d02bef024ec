"""RLlib RLModule wrapping the Keras Transformer Q-network (Keras on the torch backend).

`TransformerDQNModule` plugs `rllib_rec.agent.model.build_q_model` into RLlib's new API stack DQN:

* The Keras model *is* a `torch.nn.Module` under `KERAS_BACKEND=torch`, so RLlib's torch optimizer,
  `state_dict` weight sync and checkpointing work unchanged. State-dict keys are
  ``"qnet._torch_params.<keras variable path>"`` (target: ``"_target_qnet..."``, dropped for
  inference-only modules).
* The stock DQN catalog cannot build an encoder for a Dict observation, so `setup()` does not call the
  parent's; it builds the Keras net from `model_config` instead.
* Masks are honoured everywhere: the network itself writes `MASKED_Q` into non-candidate items, the
  greedy action is `argmax(where(mask, q, finfo.min))`, and the random action is drawn uniformly from
  the mask (the stock exploration samples among "Q != 0", which picks masked items and crashes on a
  cold-start user). Exploration also emits the behaviour probability of the chosen action as
  `Columns.ACTION_PROB` for inverse-propensity weighting in the learner.
* Training runs Q(obs) with gradients and the double-Q argmax and target passes over next_obs without
  (the stock module backpropagates through cat(obs, next_obs): twice the backward work, same gradient).
* Optional `torch.jit.trace` of the Keras net (`model_config["jit_trace"]`, default True): Keras adds
  ~1 ms framework overhead per forward at these sizes; the traced graph shares the parameters (so
  optimizer steps and `load_state_dict` syncs need no re-trace) and is kept out of `state_dict`.
  It is skipped automatically when dropout > 0 (a trace freezes the training flag).

* Optional reward head (`model_config["reward_head"]`): the training forward then also returns `REWARD_PREDS`
  [B, K], the immediate reward predicted for each slot by a second scorer on the same encoder (see
  `build_q_and_reward_models`), for the learner's auxiliary loss. `qnet` stays the Q-network alone, so export,
  acting and the target network are unchanged; the training model is dropped from inference-only modules.

`model_config` keys read here: ``qnet`` (a :class:`~rllib_rec.agent.model.QNetSpec` as a dict: the whole
architecture), ``reward_head`` (default False), ``jit_trace`` (default True), plus DQNConfig's auto-included
double_q, epsilon and num_atoms (must be 1).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import keras
import torch
from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_NEXT_PREDS, QF_PREDS, QF_TARGET_NEXT_PREDS
from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
from ray.rllib.core.columns import Columns
from ray.rllib.utils.schedules.scheduler import Scheduler

from rllib_rec.agent.model import INPUTS, build_q_and_reward_models, build_q_model
from rllib_rec.agent.spec import MODEL_CONFIG_KEY, REWARD_HEAD_KEY, REWARD_PREDS, QNetSpec

__all__ = ["TransformerDQNModule", "masked_epsilon_greedy"]

_OBS_KEYS = INPUTS  # items, events, candidates, candidate_mask


def masked_epsilon_greedy(
    q: torch.Tensor, mask: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Epsilon-greedy over the allowed items only.

    Args:
        q: [B, A] Q-values.
        mask: [B, A] candidate mask (nonzero = allowed); every row needs at least one allowed item.
        epsilon: probability of replacing the greedy action by a uniform draw from the mask.

    Returns:
        actions [B] int64 and the behaviour probability of each chosen action [B] float32:
        ``(1 - eps) * 1[a == greedy] + eps / |mask|``.
    """
    allowed = mask > 0  # [B, A]
    greedy = torch.argmax(torch.where(allowed, q, torch.finfo(q.dtype).min), dim=-1)  # [B]
    n_allowed = allowed.sum(dim=-1).clamp(min=1).to(torch.float32)  # [B]
    eps = float(epsilon)
    if eps > 0.0:
        random = torch.multinomial(allowed.to(torch.float32), num_samples=1).squeeze(1)  # [B]
        explore = torch.rand(q.shape[0], device=q.device) < eps  # [B]
        actions = torch.where(explore, random, greedy)  # [B]
    else:
        actions = greedy
    probs = (1.0 - eps) * (actions == greedy).to(torch.float32) + eps / n_allowed  # [B]
    return actions, probs


class TransformerDQNModule(DefaultDQNTorchRLModule):
    """DQN RLModule whose Q-network is the Keras Transformer from `rllib_rec.agent.model`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Skip DefaultDQNTorchRLModule.__init__, which forces DQNCatalog: that catalog cannot handle a
        # Dict observation space (it only logs a warning, but we build our own network anyway).
        kwargs.pop("catalog_class", None)
        super(DefaultDQNTorchRLModule, self).__init__(*args, catalog_class=None, **kwargs)

    def setup(self) -> None:
        backend = keras.backend.backend()
        if backend != "torch" or os.environ.get("KERAS_BACKEND", "torch") != "torch":
            raise RuntimeError(
                f"TransformerDQNModule needs KERAS_BACKEND=torch set before anything imports ray.rllib "
                f"(Keras backend is {backend!r}, env {os.environ.get('KERAS_BACKEND')!r})."
            )
        if not isinstance(self.observation_space, gym.spaces.Dict) or set(_OBS_KEYS) - set(
            self.observation_space.spaces
        ):
            raise ValueError(
                f"observation space must be a Dict with keys {_OBS_KEYS}, got {self.observation_space}"
            )
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ValueError(f"action space must be Discrete, got {self.action_space}")

        cfg = dict(self.model_config or {})
        if MODEL_CONFIG_KEY not in cfg:
            raise ValueError(f"model_config needs {MODEL_CONFIG_KEY!r}: a QNetSpec as a dict (see build_algo_config)")
        num_atoms = int(cfg.get("num_atoms", 1) or 1)
        if num_atoms != 1:
            raise ValueError("TransformerDQNModule supports expectation DQN only (num_atoms=1).")
        self.num_atoms = 1
        self.spec = QNetSpec.from_dict(cfg[MODEL_CONFIG_KEY])
        self.uses_dueling = self.spec.dueling
        self.uses_double_q = bool(cfg.get("double_q", True))
        self.epsilon_schedule = Scheduler(
            fixed_value_or_schedule=cfg.get("epsilon", [(0, 1.0), (10000, 0.05)]), framework=self.framework
        )

        obs = self.observation_space
        spaces = (int(self.action_space.n), int(obs["items"].shape[0]), int(obs["candidates"].shape[0]),
                  int(obs["candidate_mask"].shape[0]))
        expected = (self.spec.n_candidates, self.spec.history_length, self.spec.n_candidates, self.spec.n_candidates)
        if spaces != expected:
            raise ValueError(f"spaces (actions, history, candidates, mask) {spaces} do not fit the model spec "
                             f"{expected} (n_candidates, history_length)")
        self.uses_reward_head = bool(cfg.get(REWARD_HEAD_KEY, False))
        if self.uses_reward_head:
            self.qnet, self._train_net = build_q_and_reward_models(self.spec, name="q_net")
        else:
            self.qnet = build_q_model(self.spec, name="q_net")
        self._use_trace = bool(cfg.get("jit_trace", True)) and self.spec.dropout == 0.0
        self._training_forward = False
        # Traced callables live in a plain dict so nn.Module does not register them (no state_dict
        # entries, no duplicate parameters for the optimizer).
        self._traced: dict[str, Any] = {}
        self._helper: ThreadPoolExecutor | None = None  # runs the next-obs passes of a training forward

    def __getstate__(self) -> dict:
        # Traced graphs are a cache; never pickle them (they are rebuilt on first use).
        state = super().__getstate__()
        state["_traced"] = {}
        state["_helper"] = None
        return state

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _prep_obs(obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Casts the observation dict to the int32 tensors the Keras inputs are declared with."""
        return {k: torch.as_tensor(obs[k]).to(torch.int32) for k in _OBS_KEYS}

    def _call_net(self, key: str, net: keras.Model, obs: dict[str, Any]) -> torch.Tensor | list[torch.Tensor]:
        x = self._prep_obs(obs)
        if not self._use_trace:
            return net(x, training=self._training_forward)  # [B, A]
        fn = self._traced.get(key)
        if fn is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = torch.jit.trace(net, (x,), strict=False, check_trace=False)
            self._traced[key] = fn
        return fn(x)  # [B, A]

    # ---------------------------------------------------------------- QNetAPI / TargetNetworkAPI
    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {QF_PREDS: self._call_net("online", self.qnet, batch[Columns.OBS])}

    def forward_target(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {QF_PREDS: self._call_net("target", self._target_qnet, batch[Columns.OBS])}

    def make_target_networks(self) -> None:
        # Rebuild + load_state_dict: `copy.deepcopy` of a Keras model goes through Keras pickling (slow).
        self._target_qnet = build_q_model(self.spec, name="q_net_target")
        self._target_qnet.load_state_dict(self.qnet.state_dict())
        self._target_qnet.requires_grad_(False)
        self._traced.pop("target", None)

    def get_target_network_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """The trainable parameters of both nets, paired by name (views, not copies). RLlib's target update
        averages whole state dicts: with the constant item table in them that cost ~90 ms an update at a
        million items; the table is the same in both nets, so leaving it out changes nothing."""
        target = dict(self._target_qnet.named_parameters())
        online = [(name, p) for name, p in self.qnet.named_parameters() if p.requires_grad]
        return [(torch.nn.ParameterList([p for _, p in online]), torch.nn.ParameterList([target[n] for n, _ in online]))]

    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_qnet", "_train_net"]

    def get_initial_state(self) -> dict:
        return {}

    # ---------------------------------------------------------------- forwards
    # Acting needs no gradient (RLlib's own forwards say so too): without it every env step's forward
    # recorded an autograd graph.
    @torch.no_grad()
    def _forward_inference(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        q = self.compute_q_values(batch)[QF_PREDS]  # [B, A]
        actions, _ = masked_epsilon_greedy(q, batch[Columns.OBS]["candidate_mask"], 0.0)
        return {Columns.ACTIONS: actions}

    @torch.no_grad()
    def _forward_exploration(self, batch: dict[str, Any], t: int = 0, **kwargs) -> dict[str, torch.Tensor]:
        q = self.compute_q_values(batch)[QF_PREDS]  # [B, A]
        self.epsilon_schedule.update(t)
        eps = float(self.epsilon_schedule.get_current_value())
        actions, probs = masked_epsilon_greedy(q, batch[Columns.OBS]["candidate_mask"], eps)
        return {Columns.ACTIONS: actions, Columns.ACTION_PROB: probs}

    def _forward_train(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Q(obs) with gradients; the double-Q argmax pass over next_obs and the target pass without.

        The stock module runs the online net on cat(obs, next_obs) with autograd on, so the backward pass
        walks both halves although only Q(obs) has a gradient (the argmax is not differentiable): twice the
        backward work for the same update."""
        if self.inference_only:
            raise RuntimeError("an inference-only module cannot be trained")
        self._training_forward = True
        try:
            next_obs = {Columns.OBS: batch[Columns.NEXT_OBS]}
            # The next-obs passes need no gradient and do not depend on Q(obs): once both nets are traced
            # (tracing and eager Keras calls are not thread-safe) they run on a helper thread while this one
            # runs Q(obs); torch releases the GIL in its kernels, so a second core shortens the update.
            traced = {"online", "target", "train"} if self.uses_reward_head else {"online", "target"}
            if not (self._use_trace and traced <= self._traced.keys()):
                out_next = self._next_obs_passes(next_obs)
                return {**self._obs_pass(batch[Columns.OBS]), **out_next}
            next_passes = self._helper_thread().submit(self._next_obs_passes, next_obs)
            try:
                out = self._obs_pass(batch[Columns.OBS])
            finally:
                out_next = next_passes.result()
            return {**out, **out_next}
        finally:
            self._training_forward = False

    def _obs_pass(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Q(obs) [B, K] with gradients, and the reward head's predictions [B, K] when it has one."""
        if not self.uses_reward_head:
            return {QF_PREDS: self.compute_q_values({Columns.OBS: obs})[QF_PREDS]}
        q, reward = self._call_net("train", self._train_net, obs)
        return {QF_PREDS: q, REWARD_PREDS: reward}

    def _next_obs_passes(self, next_obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # grad mode is per thread
            out = {QF_TARGET_NEXT_PREDS: self.forward_target(next_obs)[QF_PREDS]}  # [B, K]
            if self.uses_double_q:
                out[QF_NEXT_PREDS] = self.compute_q_values(next_obs)[QF_PREDS]  # [B, K]
        return out

    def _helper_thread(self) -> ThreadPoolExecutor:
        if self._helper is None:
            self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rllib-rec-next-obs")
        return self._helper
