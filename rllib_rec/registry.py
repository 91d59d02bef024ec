"""Registers the simulator with RLlib/Tune (kept here so that ``envs/`` never imports Ray)."""

from __future__ import annotations

from typing import Any

from envs import ECommerceEnv

__all__ = ["RLLIB_ENV_NAME", "register_rllib_env"]

RLLIB_ENV_NAME = "rllib_rec/ECommerce-v0"


def _make_env(env_config: Any) -> ECommerceEnv:
    return ECommerceEnv(dict(env_config))


def register_rllib_env() -> str:
    """Register ``ECommerceEnv`` under :data:`RLLIB_ENV_NAME`; the env_config is the env section dict."""
    from ray.tune.registry import register_env

    register_env(RLLIB_ENV_NAME, _make_env)
    return RLLIB_ENV_NAME
