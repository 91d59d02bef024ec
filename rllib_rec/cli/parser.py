"""The ``rllib-rec`` argument parser: the top level here, each command group's subcommands in its module."""

from __future__ import annotations

import argparse
from typing import NoReturn

from rllib_rec.cli import deploy, offpolicy, run, tune

__all__ = ["build_parser"]

VERBOSE_HELP = ("also show the start-up warnings and logs of Ray, RLlib, TensorFlow/absl and MLflow, and Ray "
                "workers' output (hidden by default)")
EPILOG = """\
Config files are YAML with sections env, model, dqn, run and faults, plus sweep for `tune` (see configs/
and README). Override any key with --set section.key=value (repeatable), e.g. --set dqn.lr=1e-3.
"""


class OneLineErrorParser(argparse.ArgumentParser):
    """A usage error is one line, like every other error of the CLI (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rllib-rec",
        description="Long-term-engagement recommender: Transformer-DQN on Ray RLlib in a simulated shop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (run, tune, deploy, offpolicy):
        group.add_parsers(sub)
    # submit checks the job's command line with a fresh parser, handed over so cli.deploy needs no cli.parser
    sub.choices["submit"].set_defaults(build_parser=build_parser)
    _accept_verbose_after_commands(parser)
    return parser


def _accept_verbose_after_commands(parser: argparse.ArgumentParser) -> None:
    """-v also after a command and after a nested one: `rllib-rec train ... -v`, `rllib-rec head status -v`."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for command in action.choices.values():
            command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
            _accept_verbose_after_commands(command)
