"""The ``rllib-rec`` argument parser: the top level here, each command group's subcommands in its module."""

from __future__ import annotations

import argparse

from rllib_rec.cli import deploy, offpolicy, run, tune

__all__ = ["build_parser"]

EPILOG = """\
Config files are YAML with sections env, model, dqn, run (see configs/ and README). Override any key
with --set section.key=value (repeatable), e.g. --set env.preset=seed --set dqn.lr=1e-3.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib-rec",
        description="Long-term-engagement recommender: Transformer-DQN on Ray RLlib in a simulated shop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (run, tune, deploy, offpolicy):
        group.add_parsers(sub)
    return parser
