"""The one place that turns an :class:`ExperimentConfig` into an RLlib ``DQNConfig`` (new API stack)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from rllib_rec.agent.registry import RUNTIME_KEY, register_rllib_env
from rllib_rec.agent.runtime import import_rllib_quietly, set_torch_threads, use_torch_keras_backend
from rllib_rec.agent.spec import MODEL_CONFIG_KEY, REWARD_HEAD_KEY, QNetSpec
from rllib_rec.config import ExperimentConfig
from rllib_rec.config.schema import to_dict

if TYPE_CHECKING:
    from ray.rllib.algorithms.dqn import DQNConfig

__all__ = ["TRIAL_TORCH_THREADS_ENV", "build_algo_config", "module_model_config", "learner_config"]

TRIAL_TORCH_THREADS_ENV = "RLLIB_REC_TORCH_THREADS"  # torch threads of a Tune trial process (set by the sweep)


def module_model_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """``model_config`` of :class:`~rllib_rec.agent.module.TransformerDQNModule`: the network's spec."""
    return {MODEL_CONFIG_KEY: QNetSpec.from_experiment(cfg).to_dict(),
            REWARD_HEAD_KEY: cfg.dqn.reward_loss_weight > 0}


def env_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The training envs' config: the env section (with ``dqn.explore_item_dropout`` folded into its
    ``item_dropout``), plus the watchdog and injected faults under ``RUNTIME_KEY`` (see registry.py)."""
    f = cfg.faults
    runtime = {"env_step_timeout_s": cfg.run.env_step_timeout_s, "env_crash_rate": f.env_crash_rate,
               "env_hang_rate": f.env_hang_rate, "env_hang_seconds": f.env_hang_seconds, "seed": cfg.run.seed,
               "trial_error_at_iteration": f.trial_error_at_iteration}  # read by trainable.TunedDQN
    env = to_dict(cfg.env)
    if cfg.dqn.explore_item_dropout:
        # Temporally consistent exploration: whole sessions without some items (e.g. some clickbait), which
        # per-step epsilon never plays out. Training only; measured effect in README Benchmarks.
        kept = (1.0 - env["item_dropout"]) * (1.0 - cfg.dqn.explore_item_dropout)
        env["item_dropout"] = min(1.0 - kept, 0.95)
    return {**env, RUNTIME_KEY: runtime}


def learner_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """``learner_config_dict`` for :class:`rllib_rec.agent.learner.WeightedDQNTorchLearner`."""
    d = cfg.dqn
    return {"use_per": d.prioritized_replay, "use_ips": d.ips_weights, "ips_clip": d.ips_clip, "normalize": "mean",
            "reward_loss_weight": d.reward_loss_weight}


def _one_torch_thread_per_trial(algorithm: Any = None, **_: Any) -> None:
    """RLlib ``on_algorithm_init`` hook of a Tune trial: its process's torch threads (DESIGN: one thread is
    ~10x faster than two for this net on 2 cores), read from the environment the sweep sets."""
    set_torch_threads(int(os.environ.get(TRIAL_TORCH_THREADS_ENV, "1")))


def build_algo_config(cfg: ExperimentConfig, trial_cpus: float | None = None) -> DQNConfig:
    """Build the DQNConfig: env runners, replay ratio, n-step, double-Q, target sync, epsilon, lr, gamma,
    learners/threads — all from ``cfg``; nothing else in the project constructs an AlgorithmConfig.

    ``trial_cpus`` (a Tune trial): the main process's CPUs, one torch thread per trial, and the module's
    ``model_config`` at the algorithm level, where Tune resolves search spaces (it does not look inside
    the ``RLModuleSpec`` object; RLlib merges both levels into the same dict)."""
    use_torch_keras_backend()
    import_rllib_quietly()
    # Imported only now: ray.rllib imports TensorFlow, which imports Keras and freezes its backend.
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rllib_rec.agent.dqn import RecDQNConfig
    from rllib_rec.agent.learner import WeightedDQNTorchLearner
    from rllib_rec.agent.module import TransformerDQNModule

    r = cfg.run
    training = _training_settings(cfg)
    model_config = module_model_config(cfg)
    config = (
        RecDQNConfig()
        .environment(register_rllib_env(), env_config=env_config(cfg))
        # WeightedDQNTorchLearner.apply_gradients checks finiteness itself, once per update.
        .framework("torch", torch_skip_nan_gradients=True)
        .env_runners(
            num_env_runners=r.num_env_runners,
            num_envs_per_env_runner=r.num_envs_per_env_runner,
            rollout_fragment_length=cfg.dqn.rollout_fragment_length,
            num_cpus_per_env_runner=1,
        )
        .learners(
            num_learners=r.num_learners,
            learner_class=WeightedDQNTorchLearner,
            learner_config_dict=learner_config(cfg),
        )
        # model_config=None would replace RLlib's default model_config dict (its validate() then fails), so
        # the algorithm-level one is given only for a trial.
        .rl_module(rl_module_spec=RLModuleSpec(module_class=TransformerDQNModule,
                                                model_config=None if trial_cpus else model_config),
                   **({"model_config": model_config} if trial_cpus else {}))
        .training(**training)
        .reporting(min_sample_timesteps_per_iteration=r.steps_per_iteration, metrics_num_episodes_for_smoothing=100)
        .fault_tolerance(
            restart_failed_env_runners=r.restart_failed_env_runners,
            max_num_env_runner_restarts=r.max_env_runner_restarts,
            restart_failed_sub_environments=r.restart_failed_sub_environments,
        )
        .debugging(seed=r.seed)
    )
    if trial_cpus:
        config.resources(num_cpus_for_main_process=trial_cpus)
        config.callbacks(on_algorithm_init=_one_torch_thread_per_trial)
    return config


def _training_settings(cfg: ExperimentConfig) -> dict[str, Any]:
    """``DQNConfig.training`` keyword arguments: optimisation, targets, replay buffer, exploration."""
    from rllib_rec.agent.replay import (  # after the RLlib import
        PRIORITIZED_BUFFER,
        TRANSITION_BUFFER,
        UNIFORM_BUFFER,
    )

    d = cfg.dqn
    replay: dict[str, Any] = {"capacity": d.replay_capacity}
    if cfg.run.training_loop == "pipelined":  # RecDQN pipelines its training step over this buffer
        replay.update(type=TRANSITION_BUFFER, alpha=d.per_alpha if d.prioritized_replay else 0.0, beta=d.per_beta,
                      seed=cfg.run.seed)
    elif d.prioritized_replay:
        replay.update(type=PRIORITIZED_BUFFER, alpha=d.per_alpha, beta=d.per_beta)
    else:
        replay.update(type=UNIFORM_BUFFER)
    training: dict[str, Any] = dict(
        # A linear decay settles Q-learning's late oscillations (greedy return swinging between checkpoints).
        lr=d.lr if d.lr_end is None else [[0, d.lr], [cfg.lr_decay_env_steps, d.lr_end]],
        gamma=d.gamma,
        n_step=d.n_step,
        double_q=d.double_q,
        dueling=cfg.model.dueling,
        target_network_update_freq=d.target_update_freq,
        tau=d.tau,
        train_batch_size_per_learner=d.train_batch_size,
        replay_buffer_config=replay,
        epsilon=[(0, d.epsilon_start), (d.epsilon_timesteps, d.epsilon_end)],
        num_steps_sampled_before_learning_starts=d.learning_starts,
        grad_clip=d.grad_clip,
        grad_clip_by="global_norm",
        td_error_loss_fn="huber",
    )
    if d.training_intensity is not None:
        training["training_intensity"] = d.training_intensity
    return training
