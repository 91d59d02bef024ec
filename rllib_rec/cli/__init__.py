"""``rllib-rec``: one CLI for the whole workflow."""

from rllib_rec.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
