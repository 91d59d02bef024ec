"""The online loop: each iteration is one ``algo.train()`` (sample the simulator, replay, update)."""

from __future__ import annotations

import math
from typing import Any

from rllib_rec.config import ExperimentConfig

__all__ = ["OnlineLoop", "iteration_metrics", "epsilon_at"]


def _get(d: dict, *path: str, default: float = math.nan) -> float:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    try:
        return float(d)
    except (TypeError, ValueError):
        return default


def iteration_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The few numbers worth a progress line and an MLflow metric, from RLlib's result dict."""
    metrics = {
        "env_steps": _get(result, "env_runners", "num_env_steps_sampled_lifetime"),
        "episode_return_mean": _get(result, "env_runners", "episode_return_mean"),
        "episode_len_mean": _get(result, "env_runners", "episode_len_mean"),
        "qf_loss": _get(result, "learners", "default_policy", "qf_loss"),
        "qf_mean": _get(result, "learners", "default_policy", "qf_mean"),
        "sample_weight_max": _get(result, "learners", "default_policy", "sample_weight_max"),
        "trained_steps": _get(result, "learners", "__all_modules__", "num_env_steps_trained_lifetime"),
        # Env steps that raised (or hit run.env_step_timeout_s) and were survived by recreating the env.
        "env_step_failures": _get(result, "env_runners", "num_env_step_failures", default=0.0),
    }
    reward_loss = _get(result, "learners", "default_policy", "reward_loss")  # only with dqn.reward_loss_weight
    if not math.isnan(reward_loss):
        metrics["reward_loss"] = reward_loss
    return metrics


def epsilon_at(cfg: ExperimentConfig, step: float) -> float:
    d = cfg.dqn
    frac = min(1.0, max(0.0, step / d.epsilon_timesteps))
    return d.epsilon_start + frac * (d.epsilon_end - d.epsilon_start)


class OnlineLoop:
    """Iterations of online DQN; ``step_key`` is the metric that counts progress (MLflow's step)."""

    step_key = "env_steps"

    def __init__(self, algo: Any, cfg: ExperimentConfig) -> None:
        self.algo, self.cfg = algo, cfg

    def run_iteration(self) -> dict[str, float]:
        m = iteration_metrics(self.algo.train())
        group = getattr(self.algo, "env_runner_group", None)  # remote EnvRunners recreated after dying
        m["env_runner_restarts"] = float(group.num_remote_worker_restarts()) if group is not None else 0.0
        m["epsilon"] = epsilon_at(self.cfg, m["env_steps"])
        return m

    def progress(self, m: dict[str, float]) -> str:
        faults = m["env_step_failures"] + m["env_runner_restarts"]
        fault_note = (f"  env failures {m['env_step_failures']:.0f} runner restarts {m['env_runner_restarts']:.0f}"
                      if faults else "")
        return (f"steps {m['env_steps']:>8,.0f}  return {m['episode_return_mean']:6.2f}  loss {m['qf_loss']:7.4f}  "
                f"eps {m['epsilon']:.2f}  {m['rate']:6,.0f} steps/s{fault_note}")

    def closing_note(self, last: dict[str, float]) -> str | None:
        if last.get("env_step_failures", 0) + last.get("env_runner_restarts", 0) > 0:
            return (f"faults survived: {last['env_step_failures']:.0f} env step failures (env recreated), "
                    f"{last['env_runner_restarts']:.0f} env runner restarts")
        return None
