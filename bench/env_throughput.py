"""Env steps per second for each preset: a single env, and a gymnasium SyncVectorEnv.

    python bench/env_throughput.py [--seconds 3] [--num-envs 8]

Actions are drawn uniformly among each step's candidates (the cost of the policy is excluded by
pre-computing nothing: drawing an action is a couple of numpy calls, as in any rollout loop).
Run it pinned to one core for the single-core figure: ``taskset -c 0 python bench/env_throughput.py``.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

from envs import GYM_IDS, ECommerceEnv
from rllib_rec.tables import format_table


def single_env(preset: str, seconds: float) -> float:
    env = ECommerceEnv(preset)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(200):
            cands = np.flatnonzero(obs["action_mask"])
            obs, _, term, trunc, _ = env.step(int(cands[rng.integers(len(cands))]))
            if term or trunc:
                obs, _ = env.reset()
        steps += 200
    return steps / (time.perf_counter() - t0)


def vector_env(preset: str, seconds: float, num_envs: int) -> float:
    envs = gym.make_vec(GYM_IDS[preset], num_envs=num_envs, vectorization_mode="sync")
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            mask = obs["action_mask"].astype(bool)  # [E, N]
            # one uniformly random candidate per env: argmax of random keys over the mask
            actions = np.argmax(np.where(mask, rng.random(mask.shape), -1.0), axis=1)
            obs, *_ = envs.step(actions)  # autoreset handles episode ends
        steps += 50 * num_envs
    envs.close()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    ap.add_argument("--num-envs", type=int, default=8, help="envs in the vector env")
    ap.add_argument("--presets", nargs="+", default=list(GYM_IDS))
    args = ap.parse_args()
    targets = {"default": 10_000, "large": 2_000}
    rows = []
    for preset in args.presets:
        single = single_env(preset, args.seconds)
        vec = vector_env(preset, args.seconds, args.num_envs)
        target = targets.get(preset)
        verdict = "-" if target is None else ("ok" if single >= target else "BELOW")
        rows.append([preset, f"{single:,.0f}", f"{vec:,.0f}", f"{target:,}" if target else "-", verdict])
    print(format_table(["preset", "single env steps/s", f"vector x{args.num_envs} steps/s", "target (single)", ""], rows))


if __name__ == "__main__":
    main()
