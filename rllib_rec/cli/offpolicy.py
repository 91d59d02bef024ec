"""Commands on interaction logs: collect, ope.

Each command imports what it runs when it runs: ``rllib-rec --help`` and ``rllib-rec serve`` must not load
torch, TensorFlow, Keras, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rllib_rec.cli.common import (
    add_config_args,
    check_module_fits,
    load_checkpoint_module,
    resolve_env_config,
)
from rllib_rec.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="roll a behaviour policy in the simulator and write an interaction log (Parquet) for OPE / offline RL",
        description="Run --episodes seeded episodes (seeds --seed, --seed+1, ...) of the config's env with a "
        "behaviour policy and write one row per step to --out (schema: rllib_rec/offpolicy/logs.py: the step's "
        "candidates, the chosen slot and item, the behaviour distribution over the candidates). Behaviour "
        "probabilities are exact: random = 1/|candidates|; epsilon-greedy = (1-eps)*1[a == greedy] + "
        "eps/|candidates|. The file appears only when complete; an existing file is never overwritten "
        "unless --overwrite.",
    )
    add_config_args(p, required=False)
    p.add_argument("--policy", required=True, metavar="POLICY",
                   help="random | epsilon-greedy (over --checkpoint if given, else over --base) | checkpoint | "
                   "a baseline name (popularity, history, myopic_oracle, planning_oracle; epsilon-greedy with "
                   "--epsilon)")
    p.add_argument("--checkpoint", help="checkpoint (or run) directory for --policy checkpoint/epsilon-greedy; "
                   "its config's env is used unless --config is given")
    p.add_argument("--base", default="history", help="baseline under --policy epsilon-greedy without "
                   "--checkpoint (default history)")
    p.add_argument("--epsilon", type=float, default=None, help="exploration rate (default 0.1 for "
                   "epsilon-greedy, 0 otherwise)")
    p.add_argument("--episodes", type=int, required=True, help="episodes to log")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: run.seed)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_collect)

    p = sub.add_parser(
        "ope",
        help="off-policy evaluation (IPS, SNIPS, DM, DR with bootstrap CIs and ESS) on logs or the Open Bandit Dataset",
        description="Estimate a target policy's value from an interaction log written by `collect`: per-step "
        "IPS, SNIPS, DM and DR (reward model: mean reward per candidate item x history-feature cell), 95% percentile-"
        "bootstrap intervals and the effective sample size of the importance weights; for multi-step episodes "
        "also per-decision and trajectory-wise IPS of the episode return. With --obd DIR: evaluate the "
        "Bernoulli-TS policy on the Open Bandit Dataset's uniform-random logs and the uniform-random policy on "
        "its Bernoulli-TS logs (DIR: obp's CSV layout or the compact copy in tests/data/obd).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logs", help="interaction log (.parquet) written by `rllib-rec collect`")
    src.add_argument("--obd", metavar="DIR", help="Open Bandit Dataset directory")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--checkpoint", help="target: this checkpoint's epsilon-greedy policy (greedy by default)")
    tgt.add_argument("--policy", help="target: random, popularity or history (observation-only policies)")
    p.add_argument("--epsilon", type=float, default=0.0, help="target exploration rate (default 0: greedy)")
    add_config_args(p, required=False)
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap samples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount of the episode-return estimators, in [0, 1] "
                   "(default 1)")
    p.set_defaults(func=_cmd_ope)


def _cmd_collect(args: argparse.Namespace) -> None:
    from envs import ECommerceEnv
    from envs.baselines import BASELINES
    from rllib_rec.offpolicy.collect import collect_logs, make_behaviour

    choices = ["random", "epsilon-greedy", "checkpoint", *[b for b in BASELINES if b != "random"]]
    if args.policy not in choices:
        raise UsageError(f"unknown --policy {args.policy!r} (choose from {', '.join(choices)})")
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    if args.policy == "checkpoint" and not args.checkpoint:
        raise UsageError("--policy checkpoint needs --checkpoint")
    if args.checkpoint and args.policy not in ("checkpoint", "epsilon-greedy"):
        raise UsageError(f"--checkpoint applies to --policy checkpoint or epsilon-greedy, not {args.policy!r}")
    if not args.config and not args.checkpoint:
        raise UsageError("give --config FILE (or --checkpoint CKPT to use its config)")
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before any expensive work
        raise UsageError(f"{out}: already exists; refusing to overwrite it (use --overwrite or another --out)")
    module = ckpt = ckpt_cfg = None
    if args.checkpoint:
        ckpt, ckpt_cfg, module = load_checkpoint_module(args.checkpoint)
    cfg = resolve_env_config(args.config, args.overrides, ckpt_cfg)
    env = ECommerceEnv(cfg.env)
    if module is not None:
        check_module_fits(module, env.n_items, env.n_candidates, env.history_length, "the config's env")
    seed = cfg.run.seed if args.seed is None else args.seed
    try:
        behaviour = make_behaviour(args.policy, env, epsilon=args.epsilon, base=args.base, module=module,
                                   checkpoint=str(ckpt) if ckpt else None, seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"collect: policy={behaviour.policy_id} env preset={cfg.env.preset} items={env.n_items} "
          f"candidates={env.n_candidates} episodes={args.episodes} seeds={seed}..{seed + args.episodes - 1}",
          file=sys.stderr)
    try:
        res = collect_logs(out, cfg.env, behaviour, args.episodes, seed=seed, overwrite=args.overwrite,
                           log=lambda s: print(s, file=sys.stderr))
    except (FileExistsError, IsADirectoryError) as e:
        raise UsageError(str(e)) from None
    print(res.summary())


def _cmd_ope(args: argparse.Namespace) -> None:
    if args.n_bootstrap < 2:
        raise UsageError(f"--n-bootstrap must be >= 2, got {args.n_bootstrap}")
    if not 0.0 <= args.gamma <= 1.0:  # NaN fails this too
        raise UsageError(f"--gamma must be in [0, 1], got {args.gamma:g}")
    if args.obd:
        from rllib_rec.offpolicy.obd import evaluate_obd

        if args.checkpoint or args.policy or args.config:
            raise UsageError("--obd evaluates its own two policies; --checkpoint/--policy/--config do not apply")
        results = evaluate_obd(args.obd, n_bootstrap=args.n_bootstrap, seed=args.seed)
        for i, (name, ests) in enumerate(results.items()):
            print(("\n" if i else "") + f"Open Bandit Dataset: {name} (reward = click)")
            _print_estimates(ests, advice="a fixed dataset: read the estimate with its CI, or evaluate a policy "
                             "closer to the logging one")
            ratio = ests[0].value / ests[-1].value
            print(f"IPS / logged click rate = {ratio:.6f}")
        return
    _ope_logs(args)


def _ope_logs(args: argparse.Namespace) -> None:
    from envs import ECommerceEnv, make_env_config
    from rllib_rec.offpolicy.estimators import evaluate_logs, target_distribution
    from rllib_rec.offpolicy.logs import log_arrays, read_logs, read_metadata

    if not args.checkpoint and not args.policy:
        raise UsageError("give the target policy: --checkpoint CKPT or --policy random|popularity|history")
    if not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    meta = read_metadata(args.logs)  # validates the file before anything expensive
    dims = (meta["n_items"], meta["n_candidates"], meta["history_length"])
    env = module = None
    if args.policy:
        if args.policy not in ("random", "popularity", "history"):
            raise UsageError(f"--policy {args.policy!r} cannot be evaluated on logs (choose random, popularity or "
                           "history; the oracles read hidden state that logs do not record)")
        if args.config:
            env_cfg = resolve_env_config(args.config, args.overrides).env
        elif meta["env_config"] is not None:
            env_cfg = make_env_config(meta["env_config"], "env")
        else:
            raise UsageError(f"{args.logs}: no env config in the log's metadata; give --config")
        env = ECommerceEnv(env_cfg)
        if (env.n_items, env.n_candidates, env.history_length) != dims:
            raise UsageError(f"env has {env.n_items} items, {env.n_candidates} candidate slots and history "
                             f"{env.history_length}, the log has {dims[0]}, {dims[1]} and {dims[2]}")
        target = args.policy if args.epsilon == 0 or args.policy == "random" else \
            f"epsilon-greedy({args.policy},eps={args.epsilon:g})"
    else:
        _, _, module = load_checkpoint_module(args.checkpoint)
        check_module_fits(module, *dims, "the log")
        target = f"checkpoint {args.checkpoint}" + (f" (epsilon {args.epsilon:g})" if args.epsilon else " (greedy)")
    arrays = log_arrays(read_logs(args.logs))
    pi = target_distribution(arrays, args.policy, env, module, args.epsilon)
    ests = evaluate_logs(arrays, pi, n_bootstrap=args.n_bootstrap, seed=args.seed, gamma=args.gamma)
    n_ep = len(set(arrays.episode_id.tolist()))
    print(f"target: {target}; logs: {args.logs} ({arrays.n_rows:,} rows, {n_ep:,} episodes, behaviour "
          f"{', '.join(sorted(set(arrays.policy_id.tolist())))})")
    print("IPS/SNIPS/DM/DR estimate the expected reward per decision on the logged states"
          + ("; PDIS / trajectory IS estimate the episode return" if (arrays.step > 0).any() else ""))
    _print_estimates(ests)


def _print_estimates(ests, advice: str | None = None) -> None:  # noqa: ANN001
    from rllib_rec.offpolicy.estimators import LOG_AGAIN_ADVICE, estimates_table, low_ess_warnings

    print(estimates_table(ests))
    for line in low_ess_warnings(ests, advice or LOG_AGAIN_ADVICE):  # beside the table, on stdout with it
        print(line)
