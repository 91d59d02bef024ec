"""Record the simulator's behaviour as a frozen reference (``env_reference.npz``) for
``tests/test_env_scale.py::test_full_catalog_reproduces_the_frozen_reference``.

It was run once on the item-indexed simulator (commit e9e961d, before the candidate-set observation),
``python tests/data/record_env_reference.py``; the candidate-set env with ``n_candidates: 0`` (K = N,
slot index == item id) must reproduce every recorded step. Actions: uniformly random among the step's
candidates, or the myopic oracle, so both the tail and the head of the catalog are exercised.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from envs import ECommerceEnv  # noqa: E402
from envs.baselines import myopic_oracle  # noqa: E402

CASES = {  # name -> env config
    "seed": "seed",
    "default": "default",
    "default_dropout": {"preset": "default", "item_dropout": 0.4},
}
EPISODES = 6


def record() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, config in CASES.items():
        env = ECommerceEnv(config)
        rng = np.random.default_rng(2024)
        rows: dict[str, list] = {k: [] for k in ("episode", "action", "reward", "event", "terminated",
                                                 "truncated", "items", "events", "mask")}
        resets: dict[str, list] = {k: [] for k in ("items", "events", "mask")}
        for ep in range(EPISODES):
            obs, _ = env.reset(seed=1000 + ep)
            resets["items"].append(obs["items"])
            resets["events"].append(obs["events"])
            resets["mask"].append(obs["action_mask"])
            done = False
            while not done:
                if ep % 2:
                    action = myopic_oracle(obs, env, rng)
                else:
                    cands = np.flatnonzero(obs["action_mask"])
                    action = int(cands[rng.integers(len(cands))])
                obs, r, term, trunc, info = env.step(action)
                for k, v in (("episode", ep), ("action", action), ("reward", r), ("event", info["event"]),
                             ("terminated", term), ("truncated", trunc), ("items", obs["items"]),
                             ("events", obs["events"]), ("mask", obs["action_mask"])):
                    rows[k].append(v)
                done = term or trunc
        for k, v in rows.items():
            out[f"{name}/{k}"] = np.array(v)
        for k, v in resets.items():
            out[f"{name}/reset_{k}"] = np.array(v)
        for attr in ("category", "popularity", "price", "quality", "is_clickbait", "appeal"):
            out[f"{name}/catalog_{attr}"] = getattr(env.catalog, attr)
    return out


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(__file__), "env_reference.npz")
    np.savez_compressed(path, **record())
    print(f"wrote {path}")
