"""The simulated shop: pure gymnasium + numpy (never imports Ray, Keras, torch or rllib_rec).

Gymnasium ids: ``ecommerce/Seed-v0``, ``ecommerce/Default-v0``, ``ecommerce/Large-v0``
(``gymnasium.make("ecommerce/Default-v0", config={...overrides})``).
"""

from __future__ import annotations

import gymnasium as gym

from envs.catalog import Catalog
from envs.config import PRESETS, EnvConfig, EnvConfigError, make_env_config
from envs.ecommerce import ECommerceEnv, InvalidActionError
from envs.response import EVENT_NAMES, N_EVENT_TYPES

__all__ = [
    "Catalog",
    "ECommerceEnv",
    "EnvConfig",
    "EnvConfigError",
    "EVENT_NAMES",
    "GYM_IDS",
    "InvalidActionError",
    "N_EVENT_TYPES",
    "PRESETS",
    "make_env_config",
]

GYM_IDS = {"seed": "ecommerce/Seed-v0", "default": "ecommerce/Default-v0", "large": "ecommerce/Large-v0"}


def _register() -> None:
    for preset, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point="envs.ecommerce:ECommerceEnv", kwargs={"config": preset})


_register()
