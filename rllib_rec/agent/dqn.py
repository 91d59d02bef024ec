"""The project's DQN algorithm: RLlib's DQN, plus a pipelined training step over :class:`TransitionReplay`.

With RLlib's episode buffers (``replay_buffer_config.type`` an ``...EpisodeReplayBuffer``) every step is
RLlib's own: sample, store, then update. With a :class:`~rllib_rec.agent.replay.TransitionReplay`
(``run.training_loop: pipelined``) a training step

1. starts sampling the next round on a second thread (the env runners keep the weights synced at the end of
   the previous step, so the behaviour policy lags the learner by one round, as in RLlib's own step);
2. meanwhile runs the replay updates the previous round's steps earned (replay ratio x steps / batch size,
   fractions carried over): draw a batch of flat transitions, update the learner on it directly (no
   episode-to-batch connector), write the new priorities;
3. joins the sampler, stores its transitions and syncs the new weights to the env runners.

Nothing runs between two training steps, so checkpoints, evaluation and ``stop()`` see a quiet algorithm.
The two threads overlap because the network's kernels and the env runners' remote calls release the GIL:
on 2 cores the env steps and the learner's updates then share the machine instead of taking turns.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.algorithms.dqn import DQN, DQNConfig
from ray.rllib.core import ALL_MODULES, DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    LEARNER_RESULTS,
    NUM_AGENT_STEPS_SAMPLED_LIFETIME,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    TD_ERROR_KEY,
)
from ray.rllib.utils.numpy import convert_to_numpy
from ray.rllib.utils.replay_buffers.utils import update_priorities_in_episode_replay_buffer

from rllib_rec.agent.replay import TransitionReplay

__all__ = ["RecDQN", "RecDQNConfig"]


class RecDQNConfig(DQNConfig):
    """RLlib's DQNConfig for :class:`RecDQN`. Tune's config-dict round trip turns the replay buffer's dotted
    path into a class, and RLlib accepts a path for any buffer but a class only for its own episode buffers
    (its validation refuses others; creating the buffer does ``"EpisodeReplayBuffer" in type``, a TypeError
    for a class): a class is turned back into its path when the config is validated, before either."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or RecDQN)

    def validate(self) -> None:
        buffer_type = (self.replay_buffer_config or {}).get("type")
        if isinstance(buffer_type, type):
            self.replay_buffer_config["type"] = f"{buffer_type.__module__}.{buffer_type.__qualname__}"
        super().validate()


class RecDQN(DQN):
    """DQN whose training step is pipelined when its replay buffer is a :class:`TransitionReplay`."""

    _sampler: ThreadPoolExecutor | None = None
    _owed_updates = 0.0  # fractional updates carried to the next round (pipelined step)
    _updates_due = 0  # updates the next pipelined step runs

    @classmethod
    def get_default_config(cls) -> RecDQNConfig:
        return RecDQNConfig(cls)

    def training_step(self) -> None:
        if not isinstance(self.local_replay_buffer, TransitionReplay):
            return super().training_step()
        return self._pipelined_training_step()

    def store_episodes(self, episodes: list[Any]) -> None:
        """Adds sampled or logged episodes to the replay buffer (a transition replay computes their n-step
        rewards as they come in)."""
        if isinstance(self.local_replay_buffer, TransitionReplay):
            self.local_replay_buffer.add(episodes, n_step=self.config.n_step, gamma=self.config.gamma)
        else:
            self.local_replay_buffer.add(episodes)

    def replay_update(self, timesteps: dict[str, Any]) -> list[dict[str, Any]]:
        """One replay update: draw a batch, update the learner on it, write the new priorities. Returns the
        learner's results without their TD errors (RLlib's results, ready for ``metrics.aggregate``)."""
        buffer, config = self.local_replay_buffer, self.config
        if isinstance(buffer, TransitionReplay):
            data, rows = self._transition_batch()
            results = self.learner_group.update(batch=data, timesteps=timesteps)
            buffer.update_priorities(rows, _pop_td_errors(results)[DEFAULT_MODULE_ID])
            return results
        beta = config.replay_buffer_config.get("beta")
        episodes = buffer.sample(num_items=config.total_train_batch_size, n_step=config.n_step, gamma=config.gamma,
                                 beta=beta, sample_episodes=True, batch_length_T=0, lookback=0, min_batch_length_T=0)
        results = self.learner_group.update(episodes=episodes, timesteps=timesteps)
        td_errors = _pop_td_errors(results)
        update_priorities_in_episode_replay_buffer(
            replay_buffer=buffer, td_errors={m: {TD_ERROR_KEY: v} for m, v in td_errors.items()})
        return results

    def _transition_batch(self) -> tuple[MultiAgentBatch, np.ndarray]:
        """A prioritised batch from the transition replay, as torch tensors (zero-copy views: the learner
        then skips its numpy-to-torch tree walk), and the buffer rows it came from."""
        config = self.config
        batch, rows = self.local_replay_buffer.sample(config.total_train_batch_size,
                                                      beta=config.replay_buffer_config.get("beta"))
        tensors = tree.map_structure(torch.from_numpy, batch)
        return MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(tensors)}, env_steps=len(rows)), rows

    def _replay_updates(self, count: int, timesteps: dict[str, Any]) -> list[dict[str, Any]]:
        """``count`` updates from the transition replay, their results aggregated into the algorithm's
        metrics; returns the last learner results (empty when ``count`` is 0). A local learner reduces its
        metrics once for all of them, as RLlib's IMPALA learner thread does (a reduce costs ~5 ms, a tenth of
        an update at a million items); the TD errors each update logs are taken out as it ends."""
        if not self.learner_group.is_local:
            results: list[dict[str, Any]] = []
            for _ in range(count):
                results = self.replay_update(timesteps)
                self.metrics.aggregate(results, key=LEARNER_RESULTS)
            return results
        if count == 0:
            return []
        learner = self.learner_group._learner  # the local learner (no public handle)
        td_key = (DEFAULT_MODULE_ID, TD_ERROR_KEY)
        for _ in range(count):
            data, rows = self._transition_batch()
            learner.update(batch=data, timesteps=timesteps, _no_metrics_reduce=True)
            td_errors = np.concatenate(convert_to_numpy(learner.metrics.peek(td_key)), axis=0)
            learner.metrics.delete(*td_key)
            self.local_replay_buffer.update_priorities(rows, td_errors)
        results = [learner.metrics.reduce()]
        self.metrics.aggregate(results, key=LEARNER_RESULTS)
        return results

    def _pipelined_training_step(self) -> None:
        if self._sampler is None:
            self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rllib-rec-sampler")
        sampling = self._sampler.submit(
            synchronous_parallel_sample, worker_set=self.env_runner_group, concat=True,
            sample_timeout_s=self.config.sample_timeout_s, _uses_new_env_runners=True, _return_metrics=True)
        try:
            sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
            timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: sampled,
                         NUM_AGENT_STEPS_SAMPLED_LIFETIME: {DEFAULT_MODULE_ID: sampled}}
            learner_results = self._replay_updates(self._updates_due, timesteps)
        finally:
            episodes, env_runner_results = sampling.result()  # never leave the sampler running
        self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
        self.store_episodes(episodes)
        self._owe_updates(sum(len(e) for e in episodes))
        if learner_results:
            self._sync_sampling_weights(set(learner_results[0]) - {ALL_MODULES})

    def _sync_sampling_weights(self, policies: set[str]) -> None:
        """The learner's trainable weights into the env runner's module. When both live in this process (no
        remote learners or env runners) they are copied tensor to tensor: RLlib's sync converts the whole
        state, the constant item table too (16 MB per million items: 22 ms a round at 1M, 3 ms at 1k)."""
        group = self.env_runner_group
        runner = group.local_env_runner
        if not (self.learner_group.is_local and group.num_remote_env_runners() == 0 and runner is not None):
            group.sync_weights(from_worker_or_learner_group=self.learner_group, policies=policies,
                               global_vars=None, inference_only=True)
            return
        source = self.learner_group._learner.module[DEFAULT_MODULE_ID]  # the local learner's (no public handle)
        target = dict(runner.module.named_parameters())
        trainable = [(name, p) for name, p in source.named_parameters() if p.requires_grad]
        missing = [name for name, _ in trainable if name not in target]
        if missing:
            raise RuntimeError(f"the env runner's module has no parameters {missing[:3]} of the learner's")
        pairs = [(target[name], p) for name, p in trainable]
        with torch.no_grad():
            torch._foreach_copy_([t for t, _ in pairs], [p for _, p in pairs])

    def _owe_updates(self, new_steps: int) -> None:
        """The next step's update count: exactly the replay ratio over the steps sampled since learning
        started (a round returns more steps than asked for when sessions end in it, so a fixed count of
        updates per round, RLlib's way, trains less than the ratio says)."""
        c = self.config
        sampled = self.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0)
        if sampled < c.num_steps_sampled_before_learning_starts:
            return
        round_steps = c.get_rollout_fragment_length() * c.num_envs_per_env_runner * max(1, c.num_env_runners)
        ratio = c.training_intensity or c.total_train_batch_size / round_steps  # trained / sampled env steps
        self._owed_updates += new_steps * ratio / c.total_train_batch_size
        self._updates_due = int(self._owed_updates)
        self._owed_updates -= self._updates_due

    def cleanup(self) -> None:
        if self._sampler is not None:
            self._sampler.shutdown(wait=True)
            self._sampler = None
        super().cleanup()


def _pop_td_errors(results: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Takes the per-sample TD errors out of the learners' results (too large to log): module id -> [B]."""
    found: dict[str, list[np.ndarray]] = {}
    for result in results:
        for module_id, module_results in result.items():
            if TD_ERROR_KEY in module_results:
                # peek() gives the logged window: a list holding the batch's [B] array.
                found.setdefault(module_id, []).extend(convert_to_numpy(module_results.pop(TD_ERROR_KEY).peek()))
    return {m: np.concatenate(v, axis=0) for m, v in found.items()}
