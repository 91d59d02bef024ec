"""The simulated shop: pure gymnasium + numpy (never imports Ray, Keras, torch or rllib_rec).

A candidate-set environment: each step offers K candidate slots (``obs["candidates"]`` item ids with
``obs["candidate_mask"]``) beside the user's clickstream (``obs["items"]``, ``obs["events"]``), and the action is
a slot index (``Discrete(K)``); ``env.item_of(action)`` / ``info["item"]`` give the item. ``n_candidates: 0``
makes every item a candidate (K = N, slot index == item id). A step costs O(K + history length) whatever the
catalog size (up to 10,000,000 items); see :mod:`envs.ecommerce`.

Gymnasium ids: ``ecommerce/Seed-v0``, ``ecommerce/Default-v0``, ``ecommerce/Large-v0`` (10,000 items, K = 100),
``ecommerce/XL-v0`` (1,000,000 items, K = 100)
(``gymnasium.make("ecommerce/Default-v0", config={...overrides})``).
"""

from __future__ import annotations

import gymnasium as gym

from envs.catalog import POPULARITY_BANDS, PRICE_BANDS, Catalog
from envs.config import PRESETS, EnvConfig, EnvConfigError, make_env_config
from envs.ecommerce import OBS_KEYS, ECommerceEnv, InvalidActionError
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
    "OBS_KEYS",
    "POPULARITY_BANDS",
    "PRESETS",
    "PRICE_BANDS",
    "make_env_config",
]

GYM_IDS = {
    "seed": "ecommerce/Seed-v0",
    "default": "ecommerce/Default-v0",
    "large": "ecommerce/Large-v0",
    "xl": "ecommerce/XL-v0",
}


def _register() -> None:
    for preset, gym_id in GYM_IDS.items():
        if gym_id not in gym.registry:
            gym.register(id=gym_id, entry_point="envs.ecommerce:ECommerceEnv", kwargs={"config": preset})


_register()
