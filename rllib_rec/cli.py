"""``rllib-rec``: one CLI for the whole workflow. Thin: parse, load config, call one function."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from envs.schema import ConfigError

__all__ = ["main", "build_parser"]

EPILOG = """\
Config files are YAML with sections env, model, dqn, run (see configs/ and README). Override any key
with --set section.key=value (repeatable), e.g. --set env.preset=seed --set dqn.lr=1e-3.
"""


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="experiment YAML (e.g. configs/default.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set dqn.lr=1e-3 (repeatable; validated like the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib-rec",
        description="Long-term-engagement recommender: Transformer-DQN on Ray RLlib in a simulated shop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "baselines",
        help="evaluate the baseline policies (random, popularity, history, myopic/planning oracles)",
        description="Run every baseline policy on seeded episodes of the config's env and print a table: "
        "mean return ± 95%% CI, episode length, clicks, purchases and churn per episode.",
    )
    _add_config_args(p)
    p.add_argument("--episodes", type=int, default=1000, help="episodes per policy (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: run.eval_seed)")
    p.add_argument("--policies", nargs="+", default=None, help="subset of policies to run (default: all)")

    p = sub.add_parser("show-config", help="print the resolved config (after presets and --set) as YAML")
    _add_config_args(p)
    return parser


def _cmd_baselines(args: argparse.Namespace) -> None:
    from envs.baselines import BASELINES, run_episodes
    from rllib_rec.config import load_config
    from rllib_rec.report import policy_table

    cfg = load_config(args.config, args.overrides)
    if args.episodes < 2:
        raise CLIError(f"--episodes must be >= 2 for a confidence interval, got {args.episodes}")
    names = args.policies or list(BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise CLIError(f"unknown policy {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    seed = cfg.run.eval_seed if args.seed is None else args.seed
    print(f"env preset={cfg.env.preset} items={cfg.env.catalog.n_items} episodes={args.episodes} seeds={seed}..",
          file=sys.stderr)
    summaries = {}
    for name in names:
        t0 = time.perf_counter()
        summaries[name] = run_episodes(cfg.env, BASELINES[name], args.episodes, seed=seed).summary()
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(policy_table(summaries))


def _cmd_show_config(args: argparse.Namespace) -> None:
    import yaml

    from rllib_rec.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


COMMANDS = {"baselines": _cmd_baselines, "show-config": _cmd_show_config}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command](args)
    except (ConfigError, CLIError) as e:
        print(f"rllib-rec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rllib-rec {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
