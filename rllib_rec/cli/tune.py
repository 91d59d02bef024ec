"""``rllib-rec tune``: a Ray Tune sweep.

Each command imports what it runs when it runs: ``rllib-rec --help`` and ``rllib-rec serve`` must not load
torch, TensorFlow, Keras, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys

from rllib_rec.cli.common import (
    add_config_args,
)
from rllib_rec.console import echo
from rllib_rec.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep with Ray Tune (ASHA), every trial in MLflow, best checkpoint -> best.json",
        description="Run tune.Tuner on the DQN config of the sweep file's base experiment with sweep.search_space "
        "sampled into it; every checkpoint is scored by its greedy return on validation seeds; print the trials "
        "sorted by their best checkpoint's sweep.metric and write <storage_path>/<name>/best.json "
        "(consumed by `rllib-rec export --best`). --resume continues an interrupted sweep without rerunning "
        "finished trials.",
    )
    add_config_args(p, config_help="sweep YAML: an experiment plus a sweep section (e.g. configs/sweep.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in <storage_path>/<name>")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.add_argument("--no-tracking", action="store_true", help="sweep without MLflow (trials, best.json and "
                   "trials.txt are still written)")
    p.set_defaults(func=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> None:
    from rllib_rec.config.sweep import load_sweep_config

    if args.no_tracking and args.tracking_uri:
        raise UsageError("--no-tracking and --tracking-uri contradict each other; give one")
    load_sweep_config(args.config, args.overrides)  # the whole search space, in a second, before Ray/RLlib load
    from rllib_rec.tuning.sweep import best_lines, run_sweep

    res = run_sweep(args.config, args.overrides, resume=args.resume, tracking_uri=args.tracking_uri,
                    log=lambda s: echo(s, file=sys.stderr), track=not args.no_tracking)
    print("\n".join(best_lines(res)))
