"""Validate the OPE estimators on simulated logs, where the true value is known. Prints two tables.

    python bench/ope.py [--reps 50] [--rows 2000] [--n-bootstrap 200] [--skip-sequential] [--skip-scale]

1. Single-step bandit (``configs/seed.yaml`` with ``env.max_steps=1``): for each (logging policy, target)
   pair, ``--reps`` independent logs of ``--rows`` episodes are collected through ``collect_logs`` (the
   Parquet path a user runs) and each estimator's 95% bootstrap CI is checked against the true value:
   E_users[E[r | user, target action]], computed exactly per user from the simulator's response
   probabilities and averaged over ``--truth-users`` held-out users. Coverage should be near 0.95.
2. Sequential (full episodes of ``seed`` and ``default``): per-step IPS/DR (times the mean logged episode
   length, the naive bandit answer), per-decision IPS and trajectory-wise IPS of the episode return,
   against the target's true mean return from on-simulator rollouts. Shows that per-step (myopic)
   estimates are biased for the sequential value and that the unbiased importance-sampling ones pay with
   variance that grows with the horizon.
3. Scale (``large``: 10,000 items and ``xl``: 1,000,000 items, K = 100 candidates per step): the cost of
   collecting ``--scale-episodes`` episodes of epsilon-greedy(history, 0.3), reading the log, the history
   target's distribution and ``ope``'s estimators with 1,000 bootstrap samples, and the estimators' peak
   memory (tracemalloc). Nothing in a row or an estimator is sized by the catalog, so the two should match.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from envs import ECommerceEnv, EnvConfig
from envs.baselines import BASELINES, run_episodes
from rllib_rec.config import load_config
from rllib_rec.offpolicy.collect import collect_logs, make_behaviour
from rllib_rec.offpolicy.estimators import evaluate_logs, target_distribution
from rllib_rec.offpolicy.logs import LogArrays, log_arrays, read_logs
from rllib_rec.tables import format_table

ROOT = Path(__file__).parent.parent
TRUTH_SEED = 10**8  # held-out users for the true values, disjoint from the logs' seeds


def one_step_truth(env_config: EnvConfig, target: str, n_users: int, seed: int = TRUTH_SEED) -> tuple[float, float]:
    """Exact expected first-step reward of ``target`` per user, averaged over users: (mean, standard error)."""
    env = ECommerceEnv(env_config)
    policy, rng = BASELINES[target], np.random.default_rng(0)
    v = np.empty(n_users)
    for i in range(n_users):
        obs, _ = env.reset(seed=seed + i)
        item = obs["candidates"][policy(obs, env, rng)]  # the policy picks a candidate slot
        v[i] = env.response.expected_reward(env.user, np.array([item]), env.t)[0]
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(n_users))


def collect(env_config: EnvConfig, logging: tuple[str, float | None, str], episodes: int, seed: int,
            tmp: Path) -> LogArrays:
    """Logs of one replication, through the same code as ``rllib-rec collect``."""
    policy, eps, base = logging
    behaviour = make_behaviour(policy, ECommerceEnv(env_config), epsilon=eps, base=base)
    path = tmp / f"logs-{seed}.parquet"
    collect_logs(path, env_config, behaviour, episodes, seed=seed)
    arrays = log_arrays(read_logs(path))
    path.unlink()
    return arrays


LOGGING = {
    "random": ("random", None, "history"),
    "eps-greedy(popularity,0.5)": ("epsilon-greedy", 0.5, "popularity"),
}


def coverage_table(args: argparse.Namespace, tmp: Path) -> str:
    cfg = load_config(ROOT / "configs" / "seed.yaml", ["env.max_steps=1"]).env
    env = ECommerceEnv(cfg)
    rows = []
    for target in ("history", "popularity"):
        truth, se = one_step_truth(cfg, target, args.truth_users)
        for log_name, logging in LOGGING.items():
            per: dict[str, list[tuple[float, float, float, float]]] = {}
            for r in range(args.reps):
                arrays = collect(cfg, logging, args.rows, r * args.rows, tmp)
                pi = target_distribution(arrays, target, env)
                for e in evaluate_logs(arrays, pi, n_bootstrap=args.n_bootstrap, seed=r)[:4]:
                    per.setdefault(e.name, []).append((e.covers(truth), e.value, e.ci_high - e.ci_low, e.ess or 0))
            for name, vals in per.items():
                v = np.array(vals)
                rows.append([log_name, target, f"{truth:.4f}±{se:.4f}", name, f"{v[:, 0].mean():.2f}",
                             f"{v[:, 1].mean() - truth:+.4f}", f"{v[:, 1].std(ddof=1):.4f}", f"{v[:, 2].mean():.4f}",
                             "-" if name == "DM" else f"{v[:, 3].mean():.0f}"])
            print(f"  coverage: {log_name} -> {target} done", file=sys.stderr)
    head = ["logging", "target", "true value±SE", "estimator", "coverage", "bias", "sd", "CI width", "ESS"]
    return format_table(head, rows)


def sequential_table(args: argparse.Namespace, tmp: Path) -> str:
    rows = []
    target = "history"
    for preset, logging_name, logging in (
        ("seed", "eps-greedy(history,0.3)", ("epsilon-greedy", 0.3, "history")),
        ("seed", "eps-greedy(history,0.1)", ("epsilon-greedy", 0.1, "history")),
        ("default", "eps-greedy(history,0.1)", ("epsilon-greedy", 0.1, "history")),
    ):
        cfg = load_config(ROOT / "configs" / f"{preset}.yaml").env
        env = ECommerceEnv(cfg)
        true = run_episodes(cfg, BASELINES[target], args.truth_episodes, seed=TRUTH_SEED).summary()
        truth = true["return_mean"]
        per: dict[str, list[tuple[float, float]]] = {}
        for r in range(args.seq_reps):
            arrays = collect(cfg, logging, args.seq_episodes, r * args.seq_episodes, tmp)
            pi = target_distribution(arrays, target, env)
            ests = {e.name: e for e in evaluate_logs(arrays, pi, n_bootstrap=args.n_bootstrap, seed=r)}
            n_ep = len(np.unique(arrays.episode_id))
            mean_len = arrays.n_rows / n_ep
            for name in ("IPS", "DR"):  # the naive answer: per-step value x logged episode length
                e = ests[name]
                per.setdefault(f"{name} per step x mean length", []).append(
                    (e.value * mean_len, float(e.ci_low * mean_len <= truth <= e.ci_high * mean_len)))
            for name in ("PDIS (episode return)", "trajectory IS (episode return)",
                         "logged (behaviour) episode return"):
                e = ests[name]
                per.setdefault(name, []).append((e.value, float(e.covers(truth))))
                if name.startswith("trajectory"):
                    per.setdefault("ESS of trajectory weights", []).append((e.ess or 0.0, float("nan")))
        for name, vals in per.items():
            v = np.array(vals)
            if name.startswith("ESS"):
                rows.append([preset, logging_name, f"{truth:.3f}", name, f"{v[:, 0].mean():.1f}", "-", "-", "-"])
                continue
            rows.append([preset, logging_name, f"{truth:.3f}", name, f"{v[:, 0].mean():.3f}",
                         f"{v[:, 0].mean() - truth:+.3f}", f"{v[:, 0].std(ddof=1):.3f}", f"{np.nanmean(v[:, 1]):.2f}"])
        print(f"  sequential: {preset} {logging_name} done", file=sys.stderr)
    head = ["preset", "logging", f"true return ({target})", "estimator", "mean estimate", "bias", "sd", "coverage"]
    return format_table(head, rows)


def scale_table(args: argparse.Namespace, tmp: Path) -> str:
    rows = []
    for preset in ("large", "xl"):
        cfg = load_config(ROOT / "configs" / "large.yaml", [f"env.preset={preset}"]).env
        env = ECommerceEnv(cfg)
        path = tmp / f"{preset}.parquet"
        t0 = time.perf_counter()
        collected = collect_logs(path, cfg, make_behaviour("epsilon-greedy", env, epsilon=0.3), args.scale_episodes)
        t1 = time.perf_counter()
        arrays = log_arrays(read_logs(path))
        t2 = time.perf_counter()
        pi = target_distribution(arrays, "history", env)
        t3 = time.perf_counter()
        tracemalloc.start()
        evaluate_logs(arrays, pi, n_bootstrap=1000)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t4 = time.perf_counter()
        rows.append([preset, f"{env.n_items:,}", env.n_candidates, f"{collected.rows:,}",
                     f"{path.stat().st_size / collected.rows:,.0f}", f"{t1 - t0:.1f}", f"{t2 - t1:.2f}",
                     f"{t3 - t2:.2f}", f"{t4 - t3:.1f}", f"{peak / 2**20:.0f}"])
        path.unlink()
        print(f"  scale: {preset} done", file=sys.stderr)
    head = ["preset", "items", "K", "rows", "file B/row", "collect s", "read s", "target s", "ope s (1000 boot)",
            "ope peak MiB"]
    return format_table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50, help="single-step replications per (logging, target)")
    ap.add_argument("--rows", type=int, default=2000, help="logged single-step episodes per replication")
    ap.add_argument("--n-bootstrap", type=int, default=200, help="bootstrap samples per CI")
    ap.add_argument("--truth-users", type=int, default=20000, help="held-out users for the single-step truth")
    ap.add_argument("--seq-reps", type=int, default=20, help="sequential replications")
    ap.add_argument("--seq-episodes", type=int, default=500, help="logged episodes per sequential replication")
    ap.add_argument("--truth-episodes", type=int, default=5000, help="rollouts for the sequential truth")
    ap.add_argument("--skip-sequential", action="store_true")
    ap.add_argument("--skip-coverage", action="store_true")
    ap.add_argument("--scale-episodes", type=int, default=300, help="logged episodes per preset for the scale table")
    ap.add_argument("--skip-scale", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_coverage:
            print(f"Single-step (seed preset, max_steps=1): {args.reps} replications x {args.rows} rows, "
                  f"{args.n_bootstrap} bootstrap samples; coverage of the 95% CI")
            print(coverage_table(args, Path(d)))
        if not args.skip_sequential:
            print(f"\nSequential (full episodes): {args.seq_reps} replications x {args.seq_episodes} episodes; "
                  "target = history baseline (greedy)")
            print(sequential_table(args, Path(d)))
        if not args.skip_scale:
            print(f"\nScale: {args.scale_episodes} logged episodes per preset; target = history baseline (greedy)")
            print(scale_table(args, Path(d)))
    print(f"\n({time.perf_counter() - t0:.0f}s)")


if __name__ == "__main__":
    main()
