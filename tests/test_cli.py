"""The CLI as a user runs it: exit codes, one-line errors, the baselines table."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from conftest import short

ROOT = pathlib.Path(__file__).parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rllib_rec", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_help_lists_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    assert "baselines" in out.stdout and "--set" in out.stdout


def test_every_subcommand_help_renders_cleanly() -> None:
    """argparse %-formats `help=` strings but prints `description=` as written, so a "%%" typed for one shows
    up doubled in the other; every page is rendered here (in-process: a format error would raise)."""
    import argparse

    from rllib_rec.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subs) >= 10
    for name, sub in subs.items():
        text = sub.format_help()
        assert "%%" not in text and "%(" not in text, (name, text)
    assert "100% top-1" in subs["export"].format_help()


def test_baselines_default_config_prints_table() -> None:
    out = run_cli("baselines", "--config", "configs/default.yaml")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["policy", "return", "±95%"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"random", "popularity", "history", "myopic_oracle", "planning_oracle"}
    assert all(r[3] == "1000" for r in rows.values())  # episodes column
    assert float(rows["planning_oracle"][1]) > float(rows["myopic_oracle"][1])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("baselines", "--config", "configs/missing.yaml"), "configs/missing.yaml: file not found"),
        (("baselines", "--config", "configs/debug.yaml", "--set", "env.catalog.n_items=-1"),
         "env.catalog.n_items: must be >= 2, got -1"),
        (("baselines", "--config", "configs/debug.yaml", "--set", "dqn.nope=1"), "dqn.nope: unknown key"),
        (("baselines", "--config", "configs/debug.yaml", "--set", "run.iterations=many"),
         "run.iterations: expected an integer"),
        (("baselines", "--config", "configs/debug.yaml", "--policies", "genius"), "unknown policy 'genius'"),
        (("baselines", "--config", "configs/debug.yaml", "--episodes", "ten"),
         "argument --episodes: invalid int value: 'ten' (see rllib-rec baselines --help)"),
        (("head", "bogus"), "invalid choice: 'bogus'"),
        (("demo", "--set", "run.iterationz=2"), "run.iterationz: unknown key"),  # before the first stage's banner
    ],
)
@pytest.mark.hostile("CLI", describe=lambda args, needle: (f"`rllib-rec {short(' '.join(args))}`",
                                                           f"one line: `{short(needle)}`"))
def test_bad_input_exits_nonzero_with_one_line(args, needle) -> None:
    out = run_cli(*args)
    assert out.returncode == 2
    err = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and needle in err[0], out.stderr


def test_show_config_applies_overrides() -> None:
    out = run_cli("show-config", "--config", "configs/seed.yaml", "--set", "dqn.lr=0.01")
    assert out.returncode == 0 and "lr: 0.01" in out.stdout and "model: notebook" in out.stdout
