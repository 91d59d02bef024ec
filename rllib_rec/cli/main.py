"""``rllib-rec``: one CLI for the whole workflow. Thin: parse, call the command, turn a user error into one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from rllib_rec.cli.parser import build_parser
from rllib_rec.console import VERBOSE_ENV, configure
from rllib_rec.errors import RllibRecError
from rllib_rec.training.tracking import redact

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure(args.verbose or os.environ.get(VERBOSE_ENV) == "1")  # before any command imports Ray/TF/MLflow
    try:
        rc = args.func(args)
    except RllibRecError as e:
        # redact: a config error may quote the offending value, and a value may be a credentialed URL
        print(f"rllib-rec {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rllib-rec {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
