"""`rllib-rec tune`: sweep-config validation (fast) and real Ray Tune sweeps (slow: ~1-3 min each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import short

from rllib_rec.config.schema import ConfigError
from rllib_rec.config.sweep import SWEEPABLE, load_sweep_config
from rllib_rec.tuning.sweep import max_overlap

ROOT = Path(__file__).parent.parent
SWEEP = ROOT / "configs" / "sweep.yaml"
TINY = ["run.iterations=2", "run.steps_per_iteration=200", "dqn.learning_starts=100", "run.checkpoint_every=1"]


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "debug.yaml").write_text((ROOT / "configs" / "debug.yaml").read_text())
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_sweep_yaml_loads() -> None:
    s = load_sweep_config(SWEEP)
    assert s.experiment.name == "debug" and s.sweep.scheduler == "asha"
    assert set(s.sweep.search_space) <= set(SWEEPABLE)
    assert s.sweep.search_space["dqn.lr"].loguniform == [1e-4, 3e-3]  # YAML strings coerced to floats
    assert s.sweep_dir.is_absolute()


@pytest.mark.parametrize(("space", "key", "problem"), [
    ("dqn.lr: {normal: [0, 1]}", "sweep.search_space.dqn.lr.normal", "unknown key"),
    ("dqn.lr: {uniform: [0.01, 0.001]}", "sweep.search_space.dqn.lr.uniform", "lo must be < hi"),
    ("dqn.lr: {loguniform: [0, 0.1]}", "sweep.search_space.dqn.lr.loguniform", "lo must be > 0"),
    ("dqn.lr: {uniform: [0.1]}", "sweep.search_space.dqn.lr.uniform", "must be [lo, hi]"),
    ("dqn.lr: {grid: []}", "sweep.search_space.dqn.lr.grid", "at least one value"),
    ("dqn.lr: {grid: [0.1], choice: [0.2]}", "sweep.search_space.dqn.lr.choice", "exactly one"),
    ("dqn.lr: {}", "sweep.search_space.dqn.lr", "give one of"),
    ("dqn.learning_rate: {grid: [0.1]}", "sweep.search_space.dqn.learning_rate", "unknown experiment key"),
    ("env.preset: {choice: [seed]}", "sweep.search_space.env.preset", "not sweepable"),
    ("dqn.gamma: {grid: [0.9, 1.5]}", "sweep.search_space.dqn.gamma", "value 1.5 is invalid"),
    ("model.embed_dim: {uniform: [2, 64]}", "sweep.search_space.model.embed_dim", "is invalid"),
    ("model.embed_dim: {uniform: [8, 64]}", "sweep.search_space.model.embed_dim.uniform",
     "is invalid for an integer key"),
    # Each value is valid with the base experiment (embed_dim 16, num_heads 1); one combination is not.
    ("model.embed_dim: {grid: [16, 18]}\n    model.num_heads: {choice: [1, 4]}", "sweep.search_space",
     "the combination model.embed_dim=18, model.num_heads=4 gives an invalid experiment: model.embed_dim: "
     "must be divisible by model.num_heads (4), got 18"),
    ("model.num_heads: {grid: [3]}", "sweep.search_space.model.num_heads", "must be divisible"),
    ("dqn.n_step: {grid: [1, 10]}", "sweep.search_space.dqn.n_step", "must be <= dqn.rollout_fragment_length"),
    ("dqn.train_batch_size: {choice: [32, 8192]}", "sweep.search_space.dqn.train_batch_size",
     "must be <= dqn.replay_capacity"),
])
@pytest.mark.hostile("config", describe=lambda space, key, problem: (
    f"sweep file, `search_space: {short(space, 110)}`", f"one line naming `{key}`: {short(problem, 110)}"))
def test_bad_search_space_is_one_line_error(tmp_path: Path, space: str, key: str, problem: str) -> None:
    p = _write(tmp_path, f"base: debug.yaml\nsweep:\n  search_space:\n    {space}\n")
    with pytest.raises(ConfigError) as e:
        load_sweep_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and key in msg and problem in msg, msg


@pytest.mark.parametrize(("text", "key"), [
    ("base: debug.yaml\n", "sweep"),
    ("base: debug.yaml\nsweep: {scheduler: hyperband}\n", "sweep.scheduler"),
    ("base: debug.yaml\nsweep: {max_concurrent_trials: 0}\n", "sweep.max_concurrent_trials"),
    ("base: debug.yaml\nsweep: {mode: biggest}\n", "sweep.mode"),
    ("base: debug.yaml\nsweep: {max_t: 99}\n", "sweep.max_t"),
    ("base: debug.yaml\ndqn: {prioritized_replay: false}\nsweep:\n  search_space: {dqn.per_alpha: {grid: [0.5]}}\n",
     "sweep.search_space.dqn.per_alpha"),
    ("base: debug.yaml\ndqn: {lr: -1}\nsweep: {}\n", "dqn.lr"),
    ("base: nothere.yaml\nsweep: {}\n", "nothere.yaml"),
    ("base: debug.yaml\nsweep: {grace_period: 4}\n", "sweep.grace_period"),  # > run.iterations (3)
])
@pytest.mark.hostile("config", describe=lambda text, key: (f"sweep file `{short(text, 110)}`",
                                                             f"one line naming `{key}`"))
def test_bad_sweep_settings(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_sweep_config(_write(tmp_path, text))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_overrides_reach_sweep_and_experiment() -> None:
    s = load_sweep_config(SWEEP, ["sweep.num_samples=3", "run.iterations=2", "sweep.storage_path=/tmp/x"])
    assert s.sweep.num_samples == 3 and s.experiment.run.iterations == 2 and str(s.sweep_dir) == "/tmp/x/debug-sweep"


def test_max_overlap() -> None:
    assert max_overlap([(0, 2), (1, 3), (2.5, 4), (5, 6)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1  # touching intervals do not overlap
    assert max_overlap([]) == 0


def test_summary_marks_trials_the_scheduler_stopped_early() -> None:
    from rllib_rec.tuning.sweep import _table

    row = {"trial": "t0", "status": "OK", "iterations": 3, "best_iteration": 3, "value": 1.0, "training_return": 1.0,
           "params": {}, "node": ""}
    rows = [row, {**row, "trial": "t1", "iterations": 2}, {**row, "trial": "t2", "status": "ERROR", "iterations": 1}]
    lines = _table(rows, "validation/return_mean", iterations=3).splitlines()[2:]
    assert [line.split()[2] for line in lines] == ["OK", "stopped", "ERROR"], lines


def test_search_space_combinations_beyond_the_cap_are_checked_pairwise(tmp_path: Path, monkeypatch) -> None:
    from rllib_rec.config import sweep

    monkeypatch.setattr(sweep, "MAX_COMBINATIONS", 3)  # 2 x 2 x 2 = 8 combinations > 3: pairs
    p = _write(tmp_path, "base: debug.yaml\nsweep:\n  search_space:\n    model.embed_dim: {grid: [16, 18]}\n"
                         "    model.num_heads: {choice: [1, 4]}\n    dqn.lr: {grid: [0.001, 0.002]}\n")
    with pytest.raises(ConfigError, match="model.embed_dim=18, model.num_heads=4 gives an invalid"):
        load_sweep_config(p)


@pytest.mark.hostile("config", rows=[(
    "`tune` with `model.embed_dim: {grid: [16, 32]}` x `model.num_heads: {choice: [3]}`",
    "one line, before Ray starts and before any sweep directory exists")])
def test_tune_refuses_an_invalid_combination_before_ray_starts(tmp_path: Path, capsys, monkeypatch) -> None:
    """Issue 18, item 1: the whole search space is checked before any trial (and before Ray starts)."""
    from rllib_rec.cli import main
    from rllib_rec.tuning import sweep

    ray_starts: list[int] = []
    monkeypatch.setattr(sweep, "init_ray", lambda *a, **k: ray_starts.append(1))

    p = _write(tmp_path, "base: debug.yaml\nsweep:\n  search_space:\n    model.embed_dim: {grid: [16, 32]}\n"
                         "    model.num_heads: {choice: [3]}\n")
    assert main(["tune", "--config", str(p), "--set", f"sweep.storage_path={tmp_path / 'sweeps'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.num_heads" in err and "divisible" in err, err
    assert not (tmp_path / "sweeps").exists()
    assert ray_starts == []  # another test in this process may have started Ray; this one must not


def test_cli_refuses_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rllib_rec.cli import main

    p = _write(tmp_path, "base: debug.yaml\nsweep:\n  search_space:\n    dqn.lr: {gaussian: [1, 2]}\n")
    assert main(["tune", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dqn.lr.gaussian" in err


# --------------------------------------------------------------------------------------------- real sweeps
def _cmd(tmp: Path, *extra: str) -> list[str]:
    sets = [*TINY, f"sweep.storage_path={tmp / 'sweeps'}", f"run.output_dir={tmp}", *extra]
    return [sys.executable, "-m", "rllib_rec", "tune", "--config", str(SWEEP), *[a for s in sets for a in ("--set", s)]]


def _env() -> dict[str, str]:
    # The test reads the sweep's local store, so a store chosen by the caller's environment is dropped.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "KERAS_BACKEND": "torch", "RAY_AIR_NEW_OUTPUT": "1"}


def _trial_rows(sweep_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for f in sorted(sweep_dir.glob("trial_*/result.json")):
        out[f.parent.name] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


@pytest.mark.slow
def test_tiny_asha_sweep_best_checkpoint_and_concurrency(tmp_path: Path) -> None:
    t0 = time.time()
    proc = subprocess.run(_cmd(tmp_path), env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "debug-sweep"
    best = json.loads((sweep_dir / "best.json").read_text())

    # The table is sorted by each trial's best checkpoint (best first).
    table = (sweep_dir / "trials.txt").read_text().splitlines()[2:]
    values = [float(line.split()[5]) for line in table]
    assert len(values) == 4 and values == sorted(values, reverse=True)

    # Issue 18, item 6: the winner is a checkpoint, ranked by its greedy return on validation seeds, and
    # best.json, best_checkpoint/ and the summary all name the same checkpoint, iteration and value.
    rows = _trial_rows(sweep_dir)
    scored = [(r["validation"]["return_mean"], t, r["training_iteration"]) for t, rs in rows.items() for r in rs
              if "validation" in r]
    assert len(scored) == sum(len(rs) for rs in rows.values())  # checkpoint_every=1: every iteration scored
    assert best["metric"] == "validation/return_mean" and best["value"] == pytest.approx(max(scored)[0])
    winner = [r for r in rows[Path(best["trial_dir"]).name] if r["training_iteration"] == best["iteration"]]
    assert len(winner) == 1 and winner[0]["validation"]["return_mean"] == pytest.approx(best["value"])
    assert winner[0]["validation"]["episodes"] == best["validation_episodes"] == 50
    meta = json.loads((sweep_dir / "best_checkpoint" / "rllib_rec.json").read_text())
    assert (meta["iteration"], meta["trial"], meta["trial_checkpoint"]) == (best["iteration"], best["trial"],
                                                                          best["trial_checkpoint"])
    assert meta["value"] == pytest.approx(best["value"])
    assert (f"best trial {best['trial']}: validation/return_mean={best['value']:.4g} at iteration "
            f"{best['iteration']}") in proc.stdout
    assert proc.stdout.count("best.json:") == 1 and "best.json" not in proc.stderr  # printed once

    from ray import tune

    from rllib_rec.tuning.trainable import TunedDQN

    grid = tune.Tuner.restore(str(sweep_dir), trainable=TunedDQN).get_results()
    assert len(grid) == 4 and grid.num_errors == 0
    (ckpt_metrics,) = [m for r in grid for c, m in r.best_checkpoints if c.path == best["trial_checkpoint"]]
    assert ckpt_metrics["training_iteration"] == best["iteration"]  # the copied checkpoint is that iteration's
    assert ckpt_metrics["validation"]["return_mean"] == pytest.approx(best["value"])
    src, dst = Path(best["trial_checkpoint"]), sweep_dir / "best_checkpoint"
    for f in src.rglob("module_state*"):
        assert (dst / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert set(best["config"]) == {"dqn.lr", "model.embed_dim", "dqn.per_alpha", "dqn.gamma"}

    # Concurrency: two trials' [set-up, last iteration's end] intervals overlap (Tune ran 2 at once on 2 CPUs).
    rows = _trial_rows(sweep_dir)
    intervals = [(r[0]["running"]["since"], r[-1]["running"]["until"]) for r in rows.values()]
    assert max_overlap(intervals) == 2
    assert "max trials running at once (from trials' set-up and end times): 2" in proc.stderr

    # The best checkpoint is a complete project checkpoint carrying the trial's sampled config.
    from rllib_rec.training.checkpoints import checkpoint_config, resolve_checkpoint

    ck = resolve_checkpoint(best["checkpoint"])
    assert checkpoint_config(ck).model.embed_dim == best["config"]["model.embed_dim"]
    assert checkpoint_config(ck).dqn.lr == pytest.approx(best["config"]["dqn.lr"])

    # Every trial and the best-of-sweep run are in MLflow, under the run's experiment.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rllib-rec")
    runs = client.search_runs([exp.experiment_id])
    names = [r.info.run_name for r in runs]
    assert "debug-sweep-best" in names and len(runs) == 5, names
    for run in (r for r in runs if r.info.run_name != "debug-sweep-best"):  # the trials, as train runs are
        assert run.info.status == "FINISHED" and run.data.tags["sweep"] == "debug-sweep"
        assert {"dqn.lr", "model.embed_dim", "env.preset"} <= set(run.data.params)
        assert "env_steps" in run.data.metrics and "episode_return_mean" in run.data.metrics
        assert not any(k.startswith("replay_buffer_config") for k in run.data.params)
    print(f"sweep wall time {time.time() - t0:.0f}s; intervals {intervals}")

    # `rllib-rec export --best best.json` consumes it.
    exp_proc = subprocess.run([sys.executable, "-m", "rllib_rec", "export", "--best", str(sweep_dir / "best.json"),
                               "--no-mlflow", "--out", str(tmp_path / "export")], env=_env(), capture_output=True,
                              text=True, timeout=300, cwd=ROOT)
    assert exp_proc.returncode == 0, exp_proc.stderr[-3000:]
    assert list((tmp_path / "export").glob("*.tflite"))
    sidecar = json.loads((tmp_path / "export" / "model.json").read_text())
    assert sidecar["source_iteration"] == best["iteration"]  # the export says the same iteration too
    eval_cfg = checkpoint_config(ck).run  # validation seeds are disjoint from the evaluation seeds
    assert best["validation_seed"] >= eval_cfg.eval_seed + eval_cfg.eval_episodes


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweeps" / "debug-sweep"
    proc = subprocess.Popen(_cmd(tmp_path, "sweep.scheduler=fifo"), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    try:
        while time.time() < deadline:  # interrupt (Ctrl-C) once two trials have finished
            done = [t for t, r in _trial_rows(sweep_dir).items() if r and r[-1]["training_iteration"] == 2]
            if len(done) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.5)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in err
    assert not (sweep_dir / "best.json").exists()
    before = _trial_rows(sweep_dir)
    finished = {t: r for t, r in before.items() if r and r[-1]["training_iteration"] == 2}
    assert 2 <= len(finished) < 4, {t: len(r) for t, r in before.items()}
    mtimes = {t: (sweep_dir / t / "result.json").stat().st_mtime for t in finished}

    res = subprocess.run([*_cmd(tmp_path, "sweep.scheduler=fifo"), "--resume"], env=_env(), capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _trial_rows(sweep_dir)
    assert len(after) == 4
    for t, r in after.items():  # every trial complete, no iteration reported twice
        its = [row["training_iteration"] for row in r]
        assert its[-1] == 2 and len(its) == len(set(its)), (t, its)
    for t, r in finished.items():  # finished trials were not rerun: results untouched
        assert after[t] == r
        assert (sweep_dir / t / "result.json").stat().st_mtime == mtimes[t]
    assert json.loads((sweep_dir / "best.json").read_text())["trial"] in {r[0]["trial_id"] for r in after.values()}


@pytest.mark.slow
def test_a_trial_that_errors_is_retried_and_the_sweep_completes(tmp_path: Path) -> None:
    # Every trial raises once at iteration 2; with sweep.max_failures=1 Tune retries each from its
    # iteration-1 checkpoint, and the sweep finishes with all four trials and a best checkpoint.
    proc = subprocess.run(_cmd(tmp_path, "faults.trial_error_at_iteration=2", "sweep.max_failures=1",
                                "sweep.scheduler=fifo"), env=_env(),
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "sweeps" / "debug-sweep"
    assert (sweep_dir / "best.json").is_file()
    table = (sweep_dir / "trials.txt").read_text().splitlines()[2:]
    assert len(table) == 4 and all(" OK " in f" {line} " for line in table), table
    retried = next(x for x in proc.stderr.splitlines() if "trial errors retried:" in x)
    assert retried.count(" x1") == 4, retried
    rows = _trial_rows(sweep_dir)
    assert all(r[-1]["training_iteration"] == 2 for r in rows.values())
