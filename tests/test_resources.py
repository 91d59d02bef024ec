"""A run or sweep that asks Ray for more CPUs than the cluster has, with no autoscaler to add them, is refused
in one line within seconds, naming what it needs, what there is and which keys to change (issue 18, item 16:
`--set run.num_env_runners=1 --set run.num_learners=2` on 2 CPUs waited for ever)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from rllib_rec.agent import runtime
from rllib_rec.config import load_config
from rllib_rec.errors import ResourceError

ROOT = pathlib.Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
CPUS = os.cpu_count() or 1


def _cli(*args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", runtime.AUTOSCALER_ENV)}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rllib_rec", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout, env=env)
    return out, time.monotonic() - t0


def _error_line(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # starts Ray (20-50 s on 2 busy cores); the wiring tests below are the fast version
def test_train_asking_for_more_cpus_than_there_are_fails_in_seconds(tmp_path) -> None:
    # One env runner more than this machine has CPUs, plus two learners (the case on 2 CPUs).
    out, seconds = _cli("train", "--config", DEBUG, "--set", f"run.num_env_runners={CPUS}",
                        "--set", "run.num_learners=2", "--set", f"run.output_dir={tmp_path}", "--no-tracking")
    line = _error_line(out)
    assert f"needs {CPUS + 2} CPUs" in line and f"has {CPUS}" in line, line
    assert "run.num_env_runners" in line and "run.num_learners" in line, line
    assert seconds < 150, seconds  # imports + Ray start-up, ~20-30 s on 2 idle cores; before: no end at all
    assert not list(tmp_path.glob("debug-*"))  # refused before the run directory was made


@pytest.mark.slow
def test_sweep_whose_single_trial_cannot_fit_fails_in_seconds(tmp_path) -> None:
    out, seconds = _cli("tune", "--config", str(ROOT / "configs" / "sweep.yaml"), "--no-tracking",
                        "--set", f"sweep.cpus_per_trial={CPUS + 1}", "--set", f"sweep.storage_path={tmp_path}",
                        "--set", f"run.output_dir={tmp_path}")
    line = _error_line(out)
    assert f"one sweep trial needs {CPUS + 1} CPUs" in line and "sweep.cpus_per_trial" in line, line
    assert seconds < 150, seconds


@pytest.mark.parametrize("runners, learners, trial_cpus", [(0, 0, None), (1, 2, None), (3, 0, None),
                                                            (0, 0, 1.0), (2, 0, 0.5), (1, 2, 1.0), (0, 1, 2.0)])
def test_cpu_need_matches_what_rllib_reserves(runners: int, learners: int, trial_cpus: float | None) -> None:
    """The arithmetic of runtime.run_cpu_need / trial_cpu_need against RLlib's own placement bundles for the
    DQNConfig that agent/algo.py builds (a Tune trial reserves all of them; a train run all but the main
    process, which is the driver itself)."""
    # The parts Algorithm.default_resource_request (what Tune reserves per trial) is made of.
    from ray.rllib.algorithms.utils import (
        _get_env_runner_bundles,
        _get_learner_bundles,
        _get_main_process_bundle,
    )

    from rllib_rec.agent.algo import build_algo_config

    cfg = load_config(DEBUG, [f"run.num_env_runners={runners}", f"run.num_learners={learners}"])
    algo_cfg = build_algo_config(cfg, trial_cpus=trial_cpus)
    actors = sum(b["CPU"] for b in _get_env_runner_bundles(algo_cfg) + _get_learner_bundles(algo_cfg))
    if trial_cpus is None:
        assert runtime.run_cpu_need(cfg)[0] == actors
    else:
        assert runtime.trial_cpu_need(cfg, trial_cpus)[0] == _get_main_process_bundle(algo_cfg)["CPU"] + actors


def test_autoscaler_switch_and_concurrency_note(monkeypatch) -> None:
    cfg = load_config(DEBUG, ["run.num_env_runners=1", "run.num_learners=2"])
    monkeypatch.setattr(runtime, "_cluster_cpus", lambda: 2.0)
    monkeypatch.setenv(runtime.AUTOSCALER_ENV, "0")
    with pytest.raises(ResourceError, match=r"needs 3 CPUs .* has 2 and no autoscaler"):
        runtime.check_run_resources(cfg)
    monkeypatch.setenv(runtime.AUTOSCALER_ENV, "1")  # the cluster can grow: Ray will get the CPUs
    runtime.check_run_resources(cfg)
    monkeypatch.setenv(runtime.AUTOSCALER_ENV, "0")
    lines: list[str] = []
    runtime.check_sweep_resources(load_config(DEBUG), 1.0, 4, lines.append)  # 1 CPU per trial, 2 fit
    assert len(lines) == 1 and "at most 2 trial(s) run at once" in lines[0], lines
    runtime.check_sweep_resources(load_config(DEBUG), 1.0, 2, lines.append)
    assert len(lines) == 1


def test_train_and_tune_check_right_after_ray_starts(monkeypatch, tmp_path) -> None:
    """Wiring, without starting Ray: both commands call the check after init_ray and before any algorithm,
    Tuner or run directory exists."""
    from rllib_rec.training import train as train_mod
    from rllib_rec.tuning import sweep as sweep_mod

    monkeypatch.setattr(train_mod, "init_ray", lambda: None)
    monkeypatch.setattr(sweep_mod, "init_ray", lambda: None)
    monkeypatch.setattr(runtime, "_cluster_cpus", lambda: 2.0)
    monkeypatch.setenv(runtime.AUTOSCALER_ENV, "0")
    with pytest.raises(ResourceError, match=r"the run needs 3 CPUs .*run.num_env_runners and/or run.num_learners"):
        train_mod.train(DEBUG, ["run.num_env_runners=1", "run.num_learners=2", f"run.output_dir={tmp_path}"],
                        track=False, log=lambda s: None)
    with pytest.raises(ResourceError, match=r"one sweep trial needs 3 CPUs .*sweep.cpus_per_trial"):
        sweep_mod.run_sweep(str(ROOT / "configs" / "sweep.yaml"),
                            ["sweep.cpus_per_trial=3", f"sweep.storage_path={tmp_path}", f"run.output_dir={tmp_path}"],
                            track=False, log=lambda s: None)
    assert not any(tmp_path.iterdir())


def test_a_local_ray_that_misses_its_start_up_wait_is_retried_then_one_line(monkeypatch) -> None:
    """Ray gives a starting node a fixed 30 s; on a busy machine it raises a bare Exception with a traceback."""
    import ray

    calls: list[str] = []
    timeout = Exception("The current node timed out during startup. This could happen because ...")

    def init(fails: int):
        def _init(**kwargs):
            calls.append(kwargs["address"])
            if calls.count("local") <= fails:
                raise timeout
        return _init

    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "init", init(fails=2))
    runtime._start_local_ray(num_cpus=1)
    assert calls == ["local", "shutdown", "local", "shutdown", "local"]

    calls.clear()
    monkeypatch.setattr(ray, "init", init(fails=99))
    with pytest.raises(ResourceError, match="did not start in 3 tries") as err:
        runtime._start_local_ray(num_cpus=1)
    assert "\n" not in str(err.value) and calls.count("local") == runtime.LOCAL_RAY_TRIES

    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ValueError("another problem")))
    with pytest.raises(ValueError, match="another problem"):  # anything else is not retried or reworded
        runtime._start_local_ray(num_cpus=1)
