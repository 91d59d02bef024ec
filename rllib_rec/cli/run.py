"""Commands that run the simulator or train: baselines, show-config, train, evaluate, demo.

Each command imports what it runs when it runs: ``rllib-rec --help`` and ``rllib-rec serve`` must not load
torch, TensorFlow, Keras, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys
import time

import yaml

from envs.baselines import BASELINES, run_episodes
from rllib_rec.cli.common import (
    add_config_args,
)
from rllib_rec.config import load_config
from rllib_rec.console import echo
from rllib_rec.errors import UsageError
from rllib_rec.tables import policy_table

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for add in (_add_baselines, _add_show_config, _add_train, _add_evaluate, _add_demo):
        add(sub)


def _add_baselines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baselines",
        help="evaluate the baseline policies (random, popularity, history, myopic/planning oracles)",
        description="Run every baseline policy on seeded episodes of the config's env and print a table: "
        "mean return ± 95% CI, episode length, clicks, purchases and churn per episode.",
    )
    add_config_args(p)
    p.add_argument("--episodes", type=int, default=1000, help="episodes per policy (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: run.eval_seed)")
    p.add_argument("--policies", nargs="+", default=None, help="subset of policies to run (default: all)")
    p.set_defaults(func=_cmd_baselines)


def _add_show_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show-config", help="print the resolved config (after presets and --set) as YAML",
        description="Print the config a command would run with: the defaults and the env preset's settings, "
        "with the file's values and each --set on top, validated as every command validates it. Nothing is "
        "trained or written.")
    add_config_args(p)
    p.set_defaults(func=_cmd_show_config)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the Transformer-DQN locally (single node), tracked in MLflow, checkpointed",
        description="Train with RLlib DQN on the config's shop. Prints a progress line per iteration, "
        "checkpoints every run.checkpoint_every iterations and at the end, evaluates the greedy policy "
        "beside the baselines, and records params, metrics, the config, a learning-curve PNG and the "
        "checkpoint path in MLflow (local sqlite store under run.output_dir unless MLFLOW_TRACKING_URI "
        "or --tracking-uri says otherwise).",
    )
    add_config_args(p, required=False)
    p.add_argument("--resume", metavar="RUN", help="continue RUN (run directory or name under run.output_dir) "
                   "from its last complete checkpoint; --set run.iterations=N extends it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.add_argument("--no-tracking", action="store_true", help="train without MLflow (metrics.jsonl, checkpoints "
                   "and evaluation are still written to the run directory)")
    p.add_argument("--offline", metavar="LOGS", help="learn from a Parquet interaction log (`rllib-rec collect`) "
                   "instead of the simulator: the replay buffer is filled once from the log (behaviour "
                   "probabilities drive the IPS weights) and no env step is taken; the simulator only "
                   "evaluates the result, beside the logging policy's own return")
    p.add_argument("--init-from", metavar="CKPT", help="start a new run from the network weights of CKPT (a "
                   "checkpoint or run directory with the same model and shop), e.g. an --offline run's, to "
                   "fine-tune it online; the optimiser, replay buffer and exploration schedule start fresh")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint's greedy policy beside the baselines on held-out seeds",
        description="Greedy rollouts of a trained checkpoint on held-out episode seeds, in the same table "
        "format as `baselines` and on the same seeds.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its latest)")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's run.eval_episodes)")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: the run's run.eval_seed)")
    p.set_defaults(func=_cmd_evaluate)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on embedded defaults: train configs/debug.yaml, export + check TFLite, recommend",
        description="Train the debug config locally, export the final checkpoint to TFLite through the parity "
        "gate, answer one recommendation with LiteRT, and print where the run, checkpoint, MLflow store and "
        "model are. This is what `make demo` runs.",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a debug-config key, e.g. --set run.output_dir=/tmp/runs",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.set_defaults(func=_cmd_demo)


def _cmd_baselines(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    if args.episodes < 2:
        raise UsageError(f"--episodes must be >= 2 for a confidence interval, got {args.episodes}")
    names = args.policies or list(BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UsageError(f"unknown policy {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    seed = cfg.run.eval_seed if args.seed is None else args.seed
    print(f"env preset={cfg.env.preset} items={cfg.env.catalog.n_items} episodes={args.episodes} "
          f"seeds={seed}..{seed + args.episodes - 1}", file=sys.stderr)
    summaries = {}
    for name in names:
        t0 = time.perf_counter()
        summaries[name] = run_episodes(cfg.env, BASELINES[name], args.episodes, seed=seed).summary()
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(policy_table(summaries))


def _cmd_show_config(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def _cmd_train(args: argparse.Namespace) -> None:
    from rllib_rec.training.train import summary_lines, train

    if not args.config and not args.resume:
        raise UsageError("give --config FILE (or --resume RUN)")
    if args.no_tracking and args.tracking_uri:
        raise UsageError("--no-tracking and --tracking-uri contradict each other; give one")
    result = train(args.config, args.overrides, resume=args.resume, tracking_uri=args.tracking_uri,
                   offline=args.offline, track=not args.no_tracking, log=echo, init_from=args.init_from)
    print("\n".join(summary_lines(result)))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from rllib_rec.training.evaluate import evaluate_checkpoint

    if args.episodes is not None and args.episodes < 2:
        raise UsageError(f"--episodes must be >= 2 for a confidence interval, got {args.episodes}")
    print(policy_table(evaluate_checkpoint(args.checkpoint, args.episodes, args.seed,
                                           log=lambda s: echo(s, file=sys.stderr))))


def _cmd_demo(args: argparse.Namespace) -> None:
    from rllib_rec.cli.demo import run_demo

    print("\n".join(run_demo(args.overrides, args.tracking_uri)))
