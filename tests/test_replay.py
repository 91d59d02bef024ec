"""Tests for rllib_rec.agent.replay.TransitionReplay: n-step rows, ring order, proportional sampling, weights."""

import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_rec.agent.replay import TransitionReplay


def episode(start: int, steps: int, terminated: bool, numpy: bool = True) -> SingleAgentEpisode:
    """Observation t holds t + start in every leaf; action t = t, reward t = 10 ** t, behaviour prob 1 / (t+2)."""
    obs = [{"items": np.full(3, start + t, np.int32), "candidate_mask": np.full(4, (start + t) % 2, np.int8)}
           for t in range(steps + 1)]
    ep = SingleAgentEpisode(observations=obs, actions=list(range(steps)), rewards=[10.0**t for t in range(steps)],
                            extra_model_outputs={Columns.ACTION_PROB: [1 / (t + 2) for t in range(steps)]},
                            terminated=terminated, len_lookback_buffer=0)
    return ep.to_numpy() if numpy else ep


def rows_in_order(buffer: TransitionReplay) -> np.ndarray:
    return np.arange(len(buffer))


@pytest.mark.parametrize("numpy", [True, False])
def test_n_step_rows_of_an_ended_episode(numpy: bool) -> None:
    buffer = TransitionReplay(10, alpha=0.0)
    buffer.add([episode(0, 4, terminated=True, numpy=numpy)], n_step=2, gamma=0.5)
    assert len(buffer) == 4
    rows = rows_in_order(buffer)
    assert buffer._obs["items"][rows, 0].tolist() == [0, 1, 2, 3]
    # Row t spans rewards t and t+1 (the last row only its own) and bootstraps from observation t + steps.
    assert buffer._rewards[rows].tolist() == [1 + 0.5 * 10, 10 + 0.5 * 100, 100 + 0.5 * 1000, 1000]
    assert buffer._steps[rows].tolist() == [2, 2, 2, 1]
    assert buffer._next_obs["items"][rows, 0].tolist() == [2, 3, 4, 4]
    assert buffer._terminated[rows].tolist() == [False, False, True, True]
    assert buffer._actions[rows].tolist() == [0, 1, 2, 3]
    assert np.allclose(buffer._probs[rows], [1 / 2, 1 / 3, 1 / 4, 1 / 5])


def test_a_chunk_that_does_not_end_its_episode_bootstraps_from_its_last_observation() -> None:
    buffer = TransitionReplay(10, alpha=0.0)
    buffer.add([episode(5, 3, terminated=False)], n_step=3, gamma=1.0)
    rows = rows_in_order(buffer)
    assert buffer._steps[rows].tolist() == [3, 2, 1]
    assert buffer._next_obs["items"][rows, 0].tolist() == [8, 8, 8]
    assert not buffer._terminated[rows].any()
    assert buffer._rewards[rows].tolist() == [111.0, 110.0, 100.0]


def test_the_ring_keeps_the_newest_transitions() -> None:
    buffer = TransitionReplay(5, alpha=0.0)
    buffer.add([episode(0, 3, terminated=True), episode(100, 4, terminated=True)], n_step=1, gamma=0.9)
    assert len(buffer) == 5
    assert sorted(buffer._obs["items"][:, 0].tolist()) == [2, 100, 101, 102, 103]


def test_sampling_follows_priorities_and_weights_correct_for_them() -> None:
    buffer = TransitionReplay(4, alpha=1.0, beta=0.5, seed=0)
    buffer.add([episode(0, 4, terminated=True)], n_step=1, gamma=0.9)
    batch, rows = buffer.sample(4)
    buffer.update_priorities(rows, np.zeros(4))  # every sampled row to the floor ...
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))  # ... then known priorities
    batch, rows = buffer.sample(40_000)
    freq = np.bincount(rows, minlength=4) / len(rows)
    assert np.allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    expected = (4 * p[rows]) ** -0.5 / (4 * p.min()) ** -0.5
    assert np.allclose(batch["weights"], expected, rtol=1e-5)
    assert batch["weights"].max() <= 1.0
    # The columns the learner reads line up with the drawn rows.
    assert (batch[Columns.OBS]["items"][:, 0] == rows).all()
    assert (batch[Columns.NEXT_OBS]["items"][:, 0] == rows + 1).all()
    assert (batch[Columns.ACTIONS] == rows).all() and (batch["n_step"] == 1).all()
    assert np.allclose(batch[Columns.ACTION_PROB], 1 / (rows + 2))


def test_new_transitions_get_the_largest_priority_seen() -> None:
    buffer = TransitionReplay(8, alpha=1.0, seed=0)
    buffer.add([episode(0, 2, terminated=True)], n_step=1, gamma=0.9)
    buffer.update_priorities(np.arange(2), np.array([0.5, 7.0]))
    buffer.add([episode(10, 2, terminated=True)], n_step=1, gamma=0.9)
    assert buffer._priority[:4].tolist() == [0.5, 7.0, 7.0, 7.0]


def test_alpha_zero_samples_uniformly_with_unit_weights() -> None:
    buffer = TransitionReplay(16, alpha=0.0, beta=0.4, seed=1)
    buffer.add([episode(0, 8, terminated=True)], n_step=1, gamma=0.9)
    buffer.update_priorities(np.arange(8), np.arange(1.0, 9.0))
    batch, rows = buffer.sample(16_000)
    assert np.allclose(np.bincount(rows, minlength=8) / len(rows), 1 / 8, atol=0.01)
    assert (batch["weights"] == 1.0).all()


def test_bytes_per_transition_count_both_observations_and_the_scalars() -> None:
    buffer = TransitionReplay(4)
    buffer.add([episode(0, 2, terminated=True)], n_step=1, gamma=0.9)
    leaves = 2 * (3 * 4 + 4 * 1)  # items int32[3] and candidate_mask int8[4], obs and next obs
    assert buffer.bytes_per_transition() == leaves + 8 + 4 + 1 + 8 + 4 + 8


def test_an_empty_buffer_refuses_to_sample() -> None:
    with pytest.raises(ValueError, match="empty"):
        TransitionReplay(4).sample(2)


def test_priorities_must_match_the_rows() -> None:
    buffer = TransitionReplay(4)
    buffer.add([episode(0, 2, terminated=True)], n_step=1, gamma=0.9)
    with pytest.raises(ValueError, match="TD errors"):
        buffer.update_priorities(np.arange(2), np.zeros((1, 2)))
