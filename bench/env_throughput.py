"""Env steps per second for each preset: a single env, and a gymnasium SyncVectorEnv.

    python bench/env_throughput.py [--seconds 3] [--num-envs 8] [--presets default large xl] [--items 10000000]

``--items N`` adds a row for a shop of N items (the ``xl`` preset with ``catalog.n_items = N`` and N / 1,000
categories, K = 100). Each row also gives the catalog's build time (a process-wide cached build: the vector
env's eight copies share it). Actions are drawn uniformly among each step's valid candidate slots (a flatnonzero
and a pre-drawn uniform, as in any rollout loop; its cost is included). Episodes end by churn or truncation and
the env is reset without a seed, as RLlib's env runners do. Run it pinned to one core for the single-core
figure: ``taskset -c 0 python bench/env_throughput.py``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np

from envs import GYM_IDS, Catalog, ECommerceEnv, make_env_config
from rllib_rec.tables import format_table

TARGETS = {"default": 10_000, "large": 10_000, "xl": 10_000}  # single-env steps/s (the issue asks >= 10k at 1M)


def single_env(config: dict[str, Any], seconds: float) -> float:
    env = ECommerceEnv(config)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for u in rng.random(200).tolist():  # the policy's randomness, drawn in bulk
            slots = np.flatnonzero(obs["candidate_mask"])
            obs, _, term, trunc, _ = env.step(int(slots[int(u * len(slots))]))
            if term or trunc:
                obs, _ = env.reset()
        steps += 200
    return steps / (time.perf_counter() - t0)


def vector_env(config: dict[str, Any], seconds: float, num_envs: int) -> float:
    envs = gym.make_vec(GYM_IDS["default"], num_envs=num_envs, vectorization_mode="sync", config=config)
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            mask = obs["candidate_mask"].astype(bool)  # [E, K]
            # one uniformly random valid slot per env: argmax of random keys over the mask
            actions = np.argmax(np.where(mask, rng.random(mask.shape), -1.0), axis=1)
            obs, *_ = envs.step(actions)  # autoreset handles episode ends
        steps += 50 * num_envs
    envs.close()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per cell")
    ap.add_argument("--num-envs", type=int, default=8, help="envs in the vector env")
    ap.add_argument("--presets", nargs="*", default=list(GYM_IDS), help=f"presets to measure (of {list(GYM_IDS)})")
    ap.add_argument("--items", type=int, nargs="*", default=[], help="extra rows: an xl shop with this many items")
    args = ap.parse_args()
    rows_cfg: list[tuple[str, dict[str, Any], int | None]] = [(p, {"preset": p}, TARGETS.get(p)) for p in args.presets]
    for n in args.items:
        cfg = {"preset": "xl", "catalog": {"n_items": n, "n_categories": max(1, min(n // 1_000, 100_000))}}
        rows_cfg.append((f"xl n_items={n:,}", cfg, TARGETS["xl"]))
    rows = []
    for name, cfg, target in rows_cfg:
        resolved = make_env_config(cfg)
        t0 = time.perf_counter()
        Catalog.shared(resolved.catalog)
        build = time.perf_counter() - t0
        single = single_env(cfg, args.seconds)
        vec = vector_env(cfg, args.seconds, args.num_envs)
        verdict = "-" if target is None else ("ok" if single >= target else "BELOW")
        rows.append([name, f"{resolved.catalog.n_items:,}", f"{resolved.n_slots:,}", f"{build:.2f}",
                     f"{single:,.0f}", f"{vec:,.0f}", f"{target:,}" if target else "-", verdict])
    print(format_table(["preset", "items N", "candidates K", "catalog build s", "single env steps/s",
                        f"vector x{args.num_envs} steps/s", "target (single)", ""], rows))


if __name__ == "__main__":
    main()
