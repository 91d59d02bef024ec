"""Replay buffers that keep the module's extra outputs (the behaviour probability) through replay.

RLlib's episode buffers drop `extra_model_outputs` unless `sample(include_extra_model_outputs=True)`,
and DQN's training step never passes it. These subclasses force it on so that `Columns.ACTION_PROB`
(emitted by `TransformerDQNModule._forward_exploration`) reaches the learner for IPS weighting.

Give them to RLlib as dotted-path strings (`PRIORITIZED_BUFFER` / `UNIFORM_BUFFER`): RLlib checks
`"EpisodeReplayBuffer" in config["replay_buffer_config"]["type"]`, so a class object crashes.

Pitfall handled here: `DQNConfig.training(replay_buffer_config=...)` *replaces* the whole default dict
when "type" changes, so DQN's alpha=0.6 / beta=0.4 defaults are lost (the base class would use
alpha=1.0 and DQN would pass beta=None, which asserts). The prioritized subclass therefore defaults to
alpha=0.6, beta=0.4 itself and uses its own beta whenever the caller passes None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.rllib.core.columns import Columns
from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer

__all__ = [
    "PRIORITIZED_BUFFER",
    "UNIFORM_BUFFER",
    "ActionProbEpisodeReplayBuffer",
    "ActionProbPrioritizedEpisodeReplayBuffer",
    "TRANSITION_BUFFER",
    "TransitionReplay",
]


class ActionProbPrioritizedEpisodeReplayBuffer(PrioritizedEpisodeReplayBuffer):
    """`PrioritizedEpisodeReplayBuffer` that always returns extra model outputs.

    alpha: priority exponent (0 = uniform sampling); beta: importance-weight exponent used when the
    caller's `replay_buffer_config` has no "beta" (DQN passes ``config.replay_buffer_config.get("beta")``).
    """

    def __init__(self, capacity: int = 50000, *, alpha: float = 0.6, beta: float = 0.4, **kwargs: Any):
        super().__init__(capacity, alpha=alpha, **kwargs)
        self.beta = float(beta)

    def sample(self, *args: Any, **kwargs: Any):
        kwargs["include_extra_model_outputs"] = True
        if kwargs.get("beta") is None:
            kwargs["beta"] = self.beta
        return super().sample(*args, **kwargs)


class ActionProbEpisodeReplayBuffer(EpisodeReplayBuffer):
    """Uniform `EpisodeReplayBuffer` that always returns extra model outputs (weights are all 1)."""

    def sample(self, *args: Any, **kwargs: Any):
        kwargs["include_extra_model_outputs"] = True
        return super().sample(*args, **kwargs)


PRIORITIZED_BUFFER = f"{__name__}.{ActionProbPrioritizedEpisodeReplayBuffer.__name__}"
UNIFORM_BUFFER = f"{__name__}.{ActionProbEpisodeReplayBuffer.__name__}"


class TransitionReplay:
    """Prioritised replay of single (n-step) transitions in preallocated numpy arrays.

    RLlib's episode buffers keep whole episodes and rebuild a one-step ``SingleAgentEpisode`` per sampled
    transition, which the learner connector then turns back into a batch: ~22 ms of Python per batch of 64
    on one core, more than the network's forward and backward pass. Here a transition is one row of flat
    arrays (observation and next observation leaves, action, n-step reward, terminated, steps, behaviour
    probability), so a batch is a fancy-index of each array and a proportional draw is a cumulative sum and
    a binary search.

    Sampling is the proportional prioritisation of Schaul et al. (2016), as in RLlib's
    ``PrioritizedEpisodeReplayBuffer``: P(i) = p_i^alpha / sum p^alpha, a new transition gets the largest
    priority seen so far, and the importance weight (N P(i))^-beta is divided by the buffer's largest one.
    ``alpha=0`` samples uniformly (every weight 1).

    n-step returns are computed when a chunk of an episode is added, inside that chunk: the last steps of a
    chunk that does not end its episode get shorter windows (``n_step`` holds the steps each row really
    spans, so the learner's target discounts by gamma**steps and stays exact).
    """

    def __init__(self, capacity: int = 50000, *, alpha: float = 0.6, beta: float = 0.4,
                 seed: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.alpha, self.beta = int(capacity), float(alpha), float(beta)
        self._rng = np.random.default_rng(seed)
        self._obs: dict[str, np.ndarray] = {}
        self._next_obs: dict[str, np.ndarray] = {}
        self._actions = np.zeros(self.capacity, np.int64)
        self._rewards = np.zeros(self.capacity, np.float32)
        self._terminated = np.zeros(self.capacity, np.bool_)
        self._steps = np.zeros(self.capacity, np.int64)
        self._probs = np.full(self.capacity, np.nan, np.float32)
        self._priority = np.zeros(self.capacity, np.float64)  # p_i ** alpha
        self._max_priority = 1.0
        self._next, self._size = 0, 0

    def __len__(self) -> int:
        return self._size

    def get_num_timesteps(self) -> int:
        """Transitions held (RLlib's buffer API name)."""
        return self._size

    def bytes_per_transition(self) -> int:
        """Numpy bytes one stored transition takes (observation leaves twice, scalars, priority)."""
        leaves = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in (*self._obs.values(), *self._next_obs.values()))
        scalars = sum(a.itemsize for a in (self._actions, self._rewards, self._terminated, self._steps, self._probs,
                                           self._priority))
        return leaves + scalars

    def add(self, episodes: list[Any], *, n_step: int = 1, gamma: float = 0.99) -> None:
        """Adds every step of each (chunk of an) episode as one transition with its n-step reward."""
        for episode in episodes:
            if len(episode) > 0:
                self._add_chunk(episode, int(n_step), float(gamma))

    def _add_chunk(self, episode: Any, n_step: int, gamma: float) -> None:
        steps = len(episode)
        obs = episode.get_observations()  # leaves [steps + 1, ...]; a list of dicts before `to_numpy()`
        if isinstance(obs, list):
            obs = {key: np.stack([o[key] for o in obs]) for key in obs[0]}
        rewards = np.asarray(episode.get_rewards(), dtype=np.float64)  # [steps]
        start = np.arange(steps)
        end = np.minimum(start + n_step, steps)  # exclusive end of each row's reward window
        returns = np.zeros(steps)
        for j in range(n_step):
            inside = start + j < end
            returns[inside] += gamma**j * rewards[(start + j)[inside]]
        rows = (self._next + start) % self.capacity
        if not self._obs:
            self._allocate(obs)
        for key, leaf in obs.items():
            leaf = np.asarray(leaf)
            self._obs[key][rows] = leaf[:steps]
            self._next_obs[key][rows] = leaf[end]
        self._actions[rows] = np.asarray(episode.get_actions())
        self._rewards[rows] = returns
        self._terminated[rows] = bool(episode.is_terminated) & (end == steps)
        self._steps[rows] = end - start
        self._probs[rows] = self._behaviour_probs(episode, steps)
        self._priority[rows] = self._max_priority**self.alpha
        self._next = int((self._next + steps) % self.capacity)
        self._size = min(self._size + steps, self.capacity)

    def _allocate(self, obs: dict[str, Any]) -> None:
        for key, leaf in obs.items():
            leaf = np.asarray(leaf)
            self._obs[key] = np.zeros((self.capacity, *leaf.shape[1:]), leaf.dtype)
            self._next_obs[key] = np.zeros((self.capacity, *leaf.shape[1:]), leaf.dtype)

    @staticmethod
    def _behaviour_probs(episode: Any, steps: int) -> np.ndarray:
        if Columns.ACTION_PROB not in episode.extra_model_outputs:
            return np.full(steps, np.nan, np.float32)
        return np.asarray(episode.get_extra_model_outputs(Columns.ACTION_PROB), dtype=np.float32).reshape(steps)

    def sample(self, batch_size: int, beta: float | None = None) -> tuple[dict[str, Any], np.ndarray]:
        """A batch of ``batch_size`` transitions drawn in proportion to priority, and their row indices.

        The batch has RLlib's column names: obs and new_obs (dicts of leaves), actions, rewards (n-step),
        terminateds, n_step, weights (importance weights in (0, 1]) and action_prob (if the episodes had it)."""
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        beta = self.beta if beta is None else float(beta)
        priority = self._priority[: self._size]
        cdf = np.cumsum(priority)
        total = cdf[-1]
        rows = np.minimum(np.searchsorted(cdf, self._rng.random(batch_size) * total, side="right"), self._size - 1)
        p_min = priority[priority > 0].min() / total
        weights = ((priority[rows] / total) / p_min) ** -beta  # (N P(i))^-beta / (N p_min)^-beta
        batch = {
            Columns.OBS: {k: v[rows] for k, v in self._obs.items()},
            Columns.NEXT_OBS: {k: v[rows] for k, v in self._next_obs.items()},
            Columns.ACTIONS: self._actions[rows],
            Columns.REWARDS: self._rewards[rows],
            Columns.TERMINATEDS: self._terminated[rows],
            "n_step": self._steps[rows],
            "weights": weights.astype(np.float32),
        }
        probs = self._probs[rows]
        if not np.isnan(probs).all():
            batch[Columns.ACTION_PROB] = probs
        return batch, rows

    def update_priorities(self, rows: np.ndarray, td_errors: np.ndarray) -> None:
        """New priorities |TD error| for the rows of the last batch."""
        td_errors = np.asarray(td_errors, dtype=np.float64)
        if td_errors.shape != np.shape(rows):
            raise ValueError(f"{td_errors.shape} TD errors for {np.shape(rows)} rows")
        priority = np.maximum(np.abs(td_errors), 1e-12)
        self._priority[rows] = priority**self.alpha
        self._max_priority = max(self._max_priority, float(priority.max()))


TRANSITION_BUFFER = f"{__name__}.{TransitionReplay.__name__}"
