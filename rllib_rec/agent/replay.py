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

from ray.rllib.utils.replay_buffers.episode_replay_buffer import EpisodeReplayBuffer
from ray.rllib.utils.replay_buffers.prioritized_episode_buffer import PrioritizedEpisodeReplayBuffer

__all__ = [
    "PRIORITIZED_BUFFER",
    "UNIFORM_BUFFER",
    "ActionProbEpisodeReplayBuffer",
    "ActionProbPrioritizedEpisodeReplayBuffer",
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
