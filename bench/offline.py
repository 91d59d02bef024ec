"""Offline-training benchmark: log a behaviour policy in the simulator, train the Transformer-DQN from the
log alone (`train --offline`, no env steps), then roll every policy on the same held-out seeds.

    python bench/offline.py [--config configs/default.yaml] [--episodes 3000] [--base history]
                            [--epsilon 0.3] [--iterations 40] [--online CKPT] [--set KEY=VALUE ...]

The table shows each policy's on-simulator return beside the logging policy's and the myopic oracle's:
random, the logging policy (epsilon-greedy over ``--base``, rolled on the held-out seeds, not read from the
log), two offline agents trained on the same log (loss weighted by clipped 1/p, ``dqn.ips_weights=true``,
and unweighted), the online agent of ``--online`` when given (e.g. bench/learning.py's checkpoint), and
the oracles. ~8 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rllib_rec.agent.runtime import use_torch_keras_backend

use_torch_keras_backend()

import numpy as np  # noqa: E402

from envs import ECommerceEnv  # noqa: E402
from envs.baselines import BASELINES, run_episodes  # noqa: E402
from rllib_rec.config import load_config  # noqa: E402
from rllib_rec.offpolicy.collect import collect_logs, make_behaviour, rollout  # noqa: E402
from rllib_rec.tables import format_table  # noqa: E402
from rllib_rec.training.checkpoints import checkpoint_config, load_module, resolve_checkpoint  # noqa: E402
from rllib_rec.training.evaluate import evaluate_module  # noqa: E402
from rllib_rec.training.train import train  # noqa: E402

ROOT = Path(__file__).parent.parent


def _summary(returns: np.ndarray) -> tuple[float, float]:
    return float(returns.mean()), float(1.96 * returns.std(ddof=1) / np.sqrt(len(returns)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"), help="experiment YAML")
    p.add_argument("--episodes", type=int, default=3000, help="logged episodes (default 3000)")
    p.add_argument("--base", default="history", help="greedy part of the logging policy (a baseline name)")
    p.add_argument("--epsilon", type=float, default=0.3, help="logging policy's exploration rate (default 0.3)")
    p.add_argument("--iterations", type=int, default=40, help="offline training iterations (default 40)")
    p.add_argument("--eval-episodes", type=int, default=500, help="held-out episodes per policy (default 500)")
    p.add_argument("--online", metavar="CKPT", help="an online-trained checkpoint to compare with")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", help="working directory (default: a temp dir)")
    args = p.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-offline-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, args.set)
    online = resolve_checkpoint(args.online) if args.online else None  # fail before any work
    if online is not None and checkpoint_config(online).env != cfg.env:
        p.error(f"--online {args.online}: trained on a different env config than {args.config}")
    env = ECommerceEnv(cfg.env)
    behaviour = make_behaviour("epsilon-greedy", env, epsilon=args.epsilon, base=args.base, seed=cfg.run.seed)

    # Logged users (seeds from run.seed) never overlap the held-out evaluation users (run.eval_seed+).
    logs = out / "logs.parquet"
    t0 = time.perf_counter()
    collected = collect_logs(logs, cfg.env, behaviour, args.episodes, seed=cfg.run.seed, overwrite=True)
    print(f"logged {args.episodes} episodes ({collected.rows:,} rows) of {behaviour.policy_id} "
          f"in {time.perf_counter() - t0:.0f}s -> {logs}", flush=True)

    trained = {}
    for label, ips in (("offline agent, 1/p-weighted", True), ("offline agent, unweighted", False)):
        t0 = time.perf_counter()
        res = train(args.config, [f"run.output_dir={out / 'runs'}", f"run.iterations={args.iterations}",
                                  "run.eval_episodes=50", *args.set, f"dqn.ips_weights={ips}"],
                    offline=str(logs), log=lambda s: print(f"  {s}", flush=True) if s.startswith("iter") else None)
        trained[label] = (res.checkpoint, time.perf_counter() - t0)

    n, seed = args.eval_episodes, cfg.run.eval_seed
    values: dict[str, tuple[float, float]] = {}
    for name in ("random", "myopic_oracle", "planning_oracle"):
        s = run_episodes(cfg.env, BASELINES[name], n, seed=seed).summary()
        values[name] = (s["return_mean"], s["return_ci95"])
    logged_returns = np.array([sum(r["reward"] for r in ep) for ep in rollout(cfg.env, behaviour, n, seed=seed)])
    values[f"logging: {behaviour.policy_id}"] = _summary(logged_returns)
    for label, (ckpt, _) in trained.items():
        s = evaluate_module(load_module(ckpt), cfg.env, n, seed).summary()
        values[label] = (s["return_mean"], s["return_ci95"])
    if online is not None:
        s = evaluate_module(load_module(online), cfg.env, n, seed).summary()
        values["online agent (greedy)"] = (s["return_mean"], s["return_ci95"])

    logging_value = values[f"logging: {behaviour.policy_id}"][0]
    myopic = values["myopic_oracle"][0]
    order = ["random", f"logging: {behaviour.policy_id}", *trained, "online agent (greedy)",
             "myopic_oracle", "planning_oracle"]
    rows = [[k, f"{values[k][0]:.2f} ± {values[k][1]:.2f}", f"{100 * values[k][0] / logging_value:.0f}%",
             f"{100 * values[k][0] / myopic:.1f}%"] for k in order if k in values]
    print(format_table(["policy", "return", "% logging", "% myopic"], rows))
    print(f"{cfg.name}: {n} held-out episodes (seeds {seed}+), greedy agents; offline: {collected.rows:,} logged "
          f"transitions, {args.iterations} iterations each, 0 env steps")
    for label, (ckpt, secs) in trained.items():
        print(f"  {label}: {secs:.0f}s  {ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
