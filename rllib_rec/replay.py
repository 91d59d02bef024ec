"""Replay buffers that keep the module's extra outputs (the behaviour probability) through replay.

RLlib's episode buffers drop `extra_model_outputs` unless `sample(include_extra_model_outputs=True)`,
and DQN's training step never passes it. These subclasses force it on so that `Columns.ACTION_PROB`
(emitted by `TransformerDQNModule._forward_exploration`) reaches the learner for IPS weighting.

Give them to RLlib as dotted-path strings (`PRIORITIZED_BUFFER` / `UNIFORM_BUFFER`): RLlib checks
`"EpisodeReplayBuffer" in config["replay_buffer_config"]["type"]`, so a class object crashes.
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
    """`PrioritizedEpisodeReplayBuffer` (alpha/beta as usual) that always returns extra model outputs."""

    def sample(self, *args: Any, **kwargs: Any):
        kwargs["include_extra_model_outputs"] = True
        return super().sample(*args, **kwargs)


class ActionProbEpisodeReplayBuffer(EpisodeReplayBuffer):
    """Uniform `EpisodeReplayBuffer` that always returns extra model outputs (weights are all 1)."""

    def sample(self, *args: Any, **kwargs: Any):
        kwargs["include_extra_model_outputs"] = True
        return super().sample(*args, **kwargs)


PRIORITIZED_BUFFER = f"{__name__}.{ActionProbPrioritizedEpisodeReplayBuffer.__name__}"
UNIFORM_BUFFER = f"{__name__}.{ActionProbEpisodeReplayBuffer.__name__}"
