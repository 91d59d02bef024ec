"""Registers the simulator with RLlib/Tune (kept here so that ``envs/`` never imports Ray)."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import gymnasium as gym

from envs import ECommerceEnv
from envs.faults import FaultInjection, StepWatchdog

__all__ = ["RLLIB_ENV_NAME", "RUNTIME_KEY", "register_rllib_env"]

RLLIB_ENV_NAME = "rllib_rec/ECommerce-v0"
# env_config key for what is not part of the shop itself (watchdog, injected faults); popped before the
# rest reaches ECommerceEnv.
RUNTIME_KEY = "_rllib_rec_runtime"
_ENV_INSTANCES = itertools.count()


class _OneLineEnvFailures(logging.Filter):
    """RLlib logs every failed env step with a full traceback; with restarts on, a crash is expected
    and handled, so one line (the exception's message) is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "Environment step failed" in str(record.msg):
            exc = record.exc_info[1]
            record.msg, record.args = f"env step failed, env recreated: {type(exc).__name__}: {exc}", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"  # handled, not fatal
        return True


def _quiet_env_failure_logs() -> None:
    logger = logging.getLogger("ray.rllib")  # the logger env_runner.py uses
    if not any(isinstance(f, _OneLineEnvFailures) for f in logger.filters):
        logger.addFilter(_OneLineEnvFailures())


def _make_env(env_config: Any) -> gym.Env:
    _quiet_env_failure_logs()  # runs in every EnvRunner process (local or remote)
    cfg = dict(env_config)
    runtime = cfg.pop(RUNTIME_KEY, None) or {}
    env: gym.Env = ECommerceEnv(cfg)
    crash, hang = runtime.get("env_crash_rate", 0.0), runtime.get("env_hang_rate", 0.0)
    if crash or hang:
        # Seeded per env instance (worker, vector index, and how many this process built before): every
        # sub-env fails at different episodes, and a recreated env does not replay the crash it replaced.
        seed = [runtime.get("seed", 0), getattr(env_config, "worker_index", 0), getattr(env_config, "vector_index", 0),
                next(_ENV_INSTANCES)]
        env = FaultInjection(env, crash, hang, runtime.get("env_hang_seconds", 3600.0),
                             horizon=env.unwrapped.config.max_steps, seed=seed)
    if runtime.get("env_step_timeout_s"):
        env = StepWatchdog(env, runtime["env_step_timeout_s"])
    return env


def register_rllib_env() -> str:
    """Register ``ECommerceEnv`` under :data:`RLLIB_ENV_NAME`; the env_config is the env section dict."""
    from ray.tune.registry import register_env

    register_env(RLLIB_ENV_NAME, _make_env)
    return RLLIB_ENV_NAME
