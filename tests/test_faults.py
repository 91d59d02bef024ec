"""Worker faults, injected: envs that crash or hang at a configured rate must cost episodes, not the run.

Unit tests pin the injection itself (``envs/faults.py``); the training tests run `rllib-rec train` with
``faults.env_crash_rate`` / ``faults.env_hang_rate`` and check that the run completes, that the failures
are counted in the progress output, metrics.jsonl and MLflow, and that switching the recovery off makes
the same fault fatal (so the recovery, not luck, is what saved the run)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from envs import ECommerceEnv, make_env_config
from envs.faults import EnvStepTimeout, FaultInjection, InjectedEnvCrash, StepWatchdog
from rllib_rec.config import ConfigError, load_config

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")


def _env() -> ECommerceEnv:
    return ECommerceEnv(make_env_config("default", "env"))


def _episodes_until_fault(env: FaultInjection, n: int) -> tuple[int, int]:
    """Run ``n`` episodes with random masked actions; count crashed and completed ones."""
    rng = np.random.default_rng(0)
    crashed = completed = 0
    for i in range(n):
        obs, _ = env.reset(seed=i)
        try:
            while True:
                a = rng.choice(np.flatnonzero(obs["candidate_mask"]))
                obs, _, term, trunc, _ = env.step(int(a))
                if term or trunc:
                    completed += 1
                    break
        except InjectedEnvCrash:
            crashed += 1
    return crashed, completed


def test_crash_rate_is_per_episode_and_seeded() -> None:
    # horizon=1: the fault (if drawn) fires on the first step, so the crashed fraction is the rate itself.
    env = FaultInjection(_env(), crash_rate=0.25, horizon=1, seed=3)
    crashed, completed = _episodes_until_fault(env, 800)
    assert crashed + completed == 800 and env.crashes == crashed
    assert 0.2 < crashed / 800 < 0.3
    again = FaultInjection(_env(), crash_rate=0.25, horizon=1, seed=3)
    assert _episodes_until_fault(again, 800) == (crashed, completed)
    assert _episodes_until_fault(FaultInjection(_env(), crash_rate=0.0, seed=3), 50) == (0, 50)


def test_watchdog_turns_a_hang_into_an_exception() -> None:
    env = StepWatchdog(FaultInjection(_env(), hang_rate=1.0, hang_seconds=60.0, horizon=1, seed=0), timeout_s=0.3)
    obs, _ = env.reset(seed=0)
    t0 = time.perf_counter()
    with pytest.raises(EnvStepTimeout, match="run.env_step_timeout_s"):
        env.step(int(np.flatnonzero(obs["candidate_mask"])[0]))
    assert time.perf_counter() - t0 < 5.0 and env.timeouts == 1
    env.env.hang_rate = 0.0
    obs, _ = env.reset(seed=1)  # the env is usable again, and the alarm is off after a normal step
    env.step(int(np.flatnonzero(obs["candidate_mask"])[0]))
    time.sleep(0.5)


def test_fault_rates_are_validated() -> None:
    with pytest.raises(ConfigError, match="faults.env_hang_rate"):
        load_config(DEBUG, ["faults.env_crash_rate=0.7", "faults.env_hang_rate=0.5"])
    with pytest.raises(ConfigError, match="faults.env_crash_rate"):
        load_config(DEBUG, ["faults.env_crash_rate=1.5"])


def _train(tmp: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    sets = ["run.iterations=2", "run.eval_episodes=5", f"run.output_dir={tmp}", *overrides]
    return subprocess.run([sys.executable, "-m", "rllib_rec", "train", "--config", DEBUG,
                           *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _run_dir(tmp: Path) -> Path:
    (run_dir,) = [p for p in tmp.glob("debug-*") if p.is_dir()]
    return run_dir


def test_training_survives_crashing_envs_and_counts_them(tmp_path: Path) -> None:
    proc = _train(tmp_path, "faults.env_crash_rate=0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    failures = rows[-1]["env_step_failures"]
    assert failures >= 1
    assert f"faults survived: {failures:.0f} env step failures" in out
    assert "env failures" in out and "InjectedEnvCrash" in out
    assert "Traceback" not in out  # one line per handled crash, not a stack dump
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["env_step_failures"] == failures


@pytest.mark.slow  # ~40 s: trains until the fault kills the run
def test_without_env_recreation_the_same_fault_is_fatal(tmp_path: Path) -> None:
    proc = _train(tmp_path, "faults.env_crash_rate=0.2", "run.restart_failed_sub_environments=false")
    assert proc.returncode != 0
    assert "InjectedEnvCrash" in proc.stderr


@pytest.mark.slow
def test_hung_env_in_a_remote_runner_is_cut_off_by_the_watchdog(tmp_path: Path) -> None:
    t0 = time.time()
    proc = _train(tmp_path, "faults.env_hang_rate=0.1", "faults.env_hang_seconds=3600",
                  "run.env_step_timeout_s=1", "run.num_env_runners=1", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["env_step_failures"] >= 1
    assert time.time() - t0 < 300  # hangs of an hour each were cut to a second
