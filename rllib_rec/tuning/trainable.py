"""The Tune trainable: the project's DQN (:class:`~rllib_rec.agent.dqn.RecDQN`) with a greedy score for
every checkpoint, and placement reporting (which Ray node ran the trial and its env runners — the only way to
see a sweep spread over a cluster, since simulated or NAT'd nodes can share an IP).

Checkpoint scores: at every checkpoint iteration (``sweep.checkpoint_every``, and the trial's last
iteration) the trial plays its current greedy policy on the validation seeds and reports the mean return as
``validation/return_mean`` in that iteration's result, and asks Tune for a checkpoint of exactly that state
(``should_checkpoint``). Tune stores each checkpoint with its result, so every validated checkpoint carries
its own score: the sweep ranks checkpoints, not trials' last values.

Tune turns the DQNConfig into a dict, and RLlib's ``update_from_dict`` resolves the replay buffer's dotted
path into a class: :class:`~rllib_rec.agent.dqn.RecDQNConfig` turns it back when it validates.
"""

from __future__ import annotations

import time
from pathlib import Path

from rllib_rec.agent.runtime import import_rllib_quietly, use_torch_keras_backend

use_torch_keras_backend()
import_rllib_quietly()

from rllib_rec.agent.dqn import RecDQN  # noqa: E402
from rllib_rec.agent.registry import RUNTIME_KEY  # noqa: E402

__all__ = ["PLACEMENT_KEY", "RUNNING_KEY", "VALIDATION_KEY", "InjectedTrialError", "TunedDQN"]

PLACEMENT_KEY = "placement"  # a trial result's entry: {"trial_node": id, "env_runner_nodes": [ids]}
# A result's entry at checkpoint iterations: {"return_mean", "episodes", "seed", "seconds"}; the runtime
# dict's entry (set by search_space.build_param_space): {"episodes", "seed", "every", "last", "env"}.
VALIDATION_KEY = "validation"
# A result's entry {"since": t, "until": t} (time.time()): the trial's actor set up at `since`, the iteration
# ended at `until`. Tune's own `timestamp` is whole seconds and leaves out the set-up, which for a short trial
# is most of the time it holds its CPUs, so concurrency is judged from these.
RUNNING_KEY = "running"


class InjectedTrialError(RuntimeError):
    """Raised on purpose by ``faults.trial_error_at_iteration``."""


class TunedDQN(RecDQN):
    """The project's DQN with validation scores, placement reports and injected trial errors."""

    def setup(self, config: dict) -> None:
        self._set_up_at = time.time()
        super().setup(config)

    def step(self) -> dict:
        self._maybe_inject_error()
        result = super().step()
        result[PLACEMENT_KEY] = {"trial_node": _node_id(), "env_runner_nodes": self._env_runner_nodes()}
        self._maybe_validate(result)
        result[RUNNING_KEY] = {"since": self._set_up_at, "until": time.time()}
        return result

    def _maybe_validate(self, result: dict) -> None:
        """At a checkpoint iteration: the greedy return of the current weights on the validation seeds, in
        the result, and a checkpoint of those weights requested (see the module docstring)."""
        from ray.tune.result import SHOULD_CHECKPOINT

        from envs import make_env_config
        from rllib_rec.training.evaluate import learner_greedy_return

        spec = ((self.config.env_config or {}).get(RUNTIME_KEY) or {}).get(VALIDATION_KEY)
        it = self.iteration + 1  # Trainable counts the iteration after step() returns
        if not spec or not (it % int(spec["every"]) == 0 or it >= int(spec["last"])):
            return
        t0 = time.perf_counter()
        env = make_env_config(spec["env"], "env")
        value = learner_greedy_return(self, env, int(spec["episodes"]), int(spec["seed"]))
        result[VALIDATION_KEY] = {"return_mean": value, "episodes": int(spec["episodes"]), "seed": int(spec["seed"]),
                                  "seconds": time.perf_counter() - t0}
        result[SHOULD_CHECKPOINT] = True

    def _maybe_inject_error(self) -> None:
        """``faults.trial_error_at_iteration``: fail once at that iteration, so that Tune's retry (from the
        trial's last checkpoint) is exercised; a marker in the trial directory makes the retry pass."""
        runtime = (self.config.env_config or {}).get(RUNTIME_KEY) or {}
        at = int(runtime.get("trial_error_at_iteration") or 0)
        if not at or self.iteration + 1 != at:
            return
        marker = Path(self.logdir) / f".injected_error_at_{at}"
        if marker.exists():
            return
        marker.touch()
        raise InjectedTrialError(f"injected trial error at iteration {at} (faults.trial_error_at_iteration)")

    def _env_runner_nodes(self) -> list[str]:
        group = getattr(self, "env_runner_group", None)
        if group is None or group.num_remote_env_runners() == 0:
            return []
        return sorted(set(group.foreach_env_runner(lambda _runner: _node_id(), local_env_runner=False)))


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()
