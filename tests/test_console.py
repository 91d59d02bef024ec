"""What a person sees (issue 18, items 12 and 15): third-party start-up noise hidden unless --verbose,
progress of long work with an ETA, `evaluate` naming its checkpoint, and the learning curve's greedy return
per checkpoint beside the training return."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rllib_rec import console

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")

# Lines of Ray, RLlib, Tune, TensorFlow/absl and MLflow that every command used to print (8-10 a command).
NOISE = re.compile(r"absl::InitializeLog|cudart_stub|cpu_feature_guard|\t(INFO|WARNING) \S+\.py:\d+ -- "
                   r"|INFO mlflow|DeprecationWarning|Started a local Ray instance|new API stack|gputil")


# ---------------------------------------------------------------------------------------------- units
def test_progress_off_a_terminal_is_a_periodic_line_with_an_eta(monkeypatch, capsys) -> None:
    """Not a terminal (CI, a log file): one plain line per period, with tqdm's count, rate and ETA; no
    carriage returns or cursor moves; nothing for work shorter than the period; the ticker keeps the
    elapsed time moving while nothing can be counted (one long call such as algo.train())."""
    monkeypatch.setenv(console.PROGRESS_ENV, "0.3")
    with console.progress(4, "work", unit="step") as bar, console.ticking(bar):
        bar.update(1)
        time.sleep(1.0)  # a long call: only the ticker shows anything
        bar.update(3)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) >= 2 and "\r" not in err and "\x1b" not in err, err
    assert all(line.startswith("work: ") and "1/4" in line for line in lines), err
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/step|step/s)\]", lines[-1]), lines[-1]  # elapsed<ETA
    with console.progress(4, "quick") as bar:  # ends before the first period: silent
        bar.update(4)
    assert capsys.readouterr().err == ""


def test_held_native_stderr_hides_what_native_code_prints_unless_it_fails(monkeypatch, capfd) -> None:
    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    with console.held_native_stderr():
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(ImportError), console.held_native_stderr():
        os.write(2, b"why the import failed\n")
        raise ImportError("boom")
    assert "why the import failed" in capfd.readouterr().err  # replayed: it may explain the error
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    with console.held_native_stderr():
        os.write(2, b"shown when verbose\n")
    assert "shown when verbose" in capfd.readouterr().err


def test_verbose_is_accepted_before_and_after_the_command() -> None:
    from rllib_rec.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "show-config", "-c", DEBUG]).verbose is True
    assert parser.parse_args(["show-config", "-c", DEBUG, "--verbose"]).verbose is True
    assert parser.parse_args(["show-config", "-c", DEBUG]).verbose is False
    assert parser.parse_args(["head", "status", "-v"]).verbose is True  # after a nested command too


def test_learning_curve_draws_the_greedy_return_of_each_checkpoint(tmp_path) -> None:
    """Issue 18, item 15: the PNG plotted the training return (epsilon-greedy, with stock-outs) against the
    greedy oracles. The greedy return of each checkpoint is drawn beside it, with the history baseline."""
    from rllib_rec.training.plots import plot_learning_curve

    history = [{"env_steps": 100.0 * i, "episode_return_mean": 1.0 + 0.1 * i, "validation_return": math.nan}
               for i in range(1, 5)]
    history[1]["validation_return"], history[3]["validation_return"] = 2.5, 3.0
    evaluation = {"agent (greedy)": {"return_mean": 3.1}, "random": {"return_mean": 1.5},
                  "history": {"return_mean": 2.9}, "myopic_oracle": {"return_mean": 4.5}}
    drawn = plot_learning_curve(history, evaluation, tmp_path / "c.png", "t")
    assert drawn["greedy_return"] == ([200.0, 400.0], [2.5, 3.0])
    assert drawn["training_return"][1] == [1.1, 1.2, 1.3, 1.4]
    assert drawn["history"] == 2.9 and drawn["greedy_heldout"] == 3.1 and drawn["myopic_oracle"] == 4.5
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli_train(tmp_path_factory):
    """`rllib-rec train` as a user runs it (2 iterations, a checkpoint each, validation off), with progress
    lines every second (stderr is not a terminal here)."""
    out = tmp_path_factory.mktemp("console_runs")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", console.VERBOSE_ENV)}
    env[console.PROGRESS_ENV] = "1"
    sets = [f"run.output_dir={out}", "run.iterations=2", "run.checkpoint_every=1", "run.eval_episodes=10",
            "run.curve_episodes=8"]
    proc = subprocess.run([sys.executable, "-m", "rllib_rec", "train", "--config", DEBUG,
                           *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(re.search(r"^run directory : (.+)$", proc.stdout, re.M).group(1))
    return proc, run_dir


def test_train_prints_no_third_party_noise(cli_train) -> None:
    """Issue 18, item 12: every command printed 8-10 lines of Ray/TF/absl/MLflow warnings."""
    proc, _ = cli_train
    noise = [line for line in (proc.stdout + proc.stderr).splitlines() if NOISE.search(line)]
    assert not noise, noise


def test_train_announces_the_warm_up_and_shows_progress_within_seconds(cli_train) -> None:
    """Issue 18, item 12: a `large` iteration was silent for more than 4 minutes."""
    proc, _ = cli_train
    assert "iteration 1 first fills the replay buffer: 200 env steps (dqn.learning_starts)" in proc.stdout
    ticks = [line for line in proc.stderr.splitlines() if line.startswith("train: ")]
    assert ticks and all(re.search(r"\d/2 \[\d\d:\d\d<", line) for line in ticks), proc.stderr[-2000:]
    assert any(" 0/2 " in line for line in ticks)  # shown during the first iteration, before any result


def test_every_checkpoint_gets_a_greedy_return_for_the_curve(cli_train) -> None:
    """Issue 18, item 15: with run.validation_episodes 0, each checkpoint is still scored greedily on
    run.curve_episodes validation users (the learning curve's greedy points); nothing is selected."""
    proc, run_dir = cli_train
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["validation_return"]) for r in rows)
    assert len(re.findall(r"ckpt iter_00000\d  greedy \d+\.\d\d", proc.stdout)) == 2
    assert not (run_dir / "best.json").exists()
    assert (run_dir / "learning_curve.png").is_file()


def test_evaluate_says_which_checkpoint_it_evaluated(cli_train, capsys) -> None:
    """Issue 18, item 12: `evaluate` did not say which checkpoint it evaluated."""
    from rllib_rec.cli import main

    _, run_dir = cli_train
    assert main(["evaluate", "--checkpoint", str(run_dir), "--episodes", "4"]) == 0
    err = capsys.readouterr().err
    ckpt = run_dir / "checkpoints" / "iter_000002"
    assert (f"evaluating checkpoint {ckpt} (iteration 2, the latest of run {run_dir}) on 4 episodes, "
            "seeds 1000000..1000003") in err, err
