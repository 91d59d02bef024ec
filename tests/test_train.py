"""Training end to end on the debug config: MLflow records, checkpoint/restore, resume, clear failures.

One short run (2 iterations) is shared by the module; each failure case runs the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from rllib_rec.training.checkpoints import (
    checkpoint_config,
    complete_checkpoints,
    latest_checkpoint,
    load_module,
)
from rllib_rec.training.train import train

ROOT = pathlib.Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = train(DEBUG, [f"run.output_dir={out}", "run.iterations=2", "run.checkpoint_every=1",
                        "run.eval_episodes=20"], log=lambda s: None)
    yield res
    import ray

    ray.shutdown()


def _tree_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _obs_batch(env_config, n: int = 32) -> dict[str, np.ndarray]:
    from envs import ECommerceEnv

    env = ECommerceEnv(env_config)
    rows = []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        for _ in range(seed % 4):
            obs, *_ = env.step(int(np.flatnonzero(obs["candidate_mask"])[0]))
        rows.append(obs)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _q(module, obs) -> np.ndarray:
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        batch = {Columns.OBS: {k: torch.from_numpy(v) for k, v in obs.items()}}
        return module.compute_q_values(batch)["qf_preds"].numpy()


def test_mlflow_run_has_params_metrics_png_and_checkpoint(run) -> None:
    client = mlflow.MlflowClient(run.tracking_uri)
    r = client.get_run(run.mlflow_run_id)
    assert r.data.params["dqn.lr"] == "0.001" and r.data.params["env.catalog.n_items"] == "10"
    assert r.data.tags["checkpoint_path"] == str(run.checkpoint)
    history = client.get_metric_history(run.mlflow_run_id, "episode_return_mean")
    assert len(history) == 2
    assert "eval/agent/return_mean" in r.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.mlflow_run_id)}
    assert {"learning_curve.png", "experiment.yaml", "debug.yaml", "evaluation.txt"} <= artifacts
    png = run.run_dir / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_does_not_leak_its_store_into_the_environment(run) -> None:
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; a leak would send every later
    # subprocess, Ray worker or Ray job started from this process to this one run's store.
    assert os.environ.get("MLFLOW_TRACKING_URI") != run.tracking_uri


def test_checkpoints_every_n_and_at_end(run) -> None:
    names = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert names == ["iter_000001", "iter_000002"]
    assert latest_checkpoint(run.run_dir) == run.checkpoint
    assert checkpoint_config(run.checkpoint).config_hash() == checkpoint_config(
        run.run_dir / "checkpoints" / "iter_000001").config_hash()


def test_complete_checkpoints_are_listed_oldest_first_without_partial_ones(run, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir / "checkpoints", copy / "checkpoints")
    (copy / "checkpoints" / "iter_000010").mkdir()  # a checkpoint whose write never finished
    assert [p.name for p in complete_checkpoints(copy)] == ["iter_000001", "iter_000002"]
    assert latest_checkpoint(copy) == copy / "checkpoints" / "iter_000002"


def test_snapshot_bench_combines_the_last_checkpoints(run) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "snapshots.py"), str(run.run_dir), "--last", "2",
                           "--episodes", "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Deprecat" not in proc.stderr, proc.stderr[-2000:]  # RLlib's notices on loading a module are hidden
    rows = [line.split()[0] for line in proc.stdout.splitlines()]
    assert rows[2:5] == ["last", "weights", "Q-values"], proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "snapshots.py"), str(run.run_dir), "--last", "3"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--last 3: the run has 2 checkpoints" in bad.stderr, bad.stderr[-2000:]


def test_q_value_ensemble_of_one_module_acts_like_it(run) -> None:
    from rllib_rec.training.evaluate import QValueEnsemble, _greedy_actions

    module = load_module(run.checkpoint)
    obs = _obs_batch(checkpoint_config(run.checkpoint).env)
    assert np.array_equal(_greedy_actions(QValueEnsemble([module, module]), obs), _greedy_actions(module, obs))


def test_ensemble_bench_measures_ensembles_and_members_on_the_same_users(run) -> None:
    bench = [sys.executable, str(ROOT / "bench" / "ensembles.py")]
    first = str(run.run_dir / "checkpoints" / "iter_000001")
    proc = subprocess.run([*bench, "--agent", str(run.run_dir), first, "--episodes", "4"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Deprecat" not in proc.stderr, proc.stderr[-2000:]
    out = proc.stdout
    assert "members alone" in out and out.count("  0+0  ") == 2, out  # two member rows of ensemble 0+0
    assert "ensembles of 2: 1 ensemble(s), each on 4 held-out users" in out, out
    for args, message in (([str(run.run_dir)], "1 runs do not split into ensembles of --size 2"),
                          ([str(run.run_dir), first, "--one-step", str(run.run_dir), first],
                           "every run there must have dqn.gamma 0"),
                          ([str(run.run_dir / "missing"), first], "no such checkpoint or run directory")):
        bad = subprocess.run([*bench, "--agent", *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr


def test_restore_reproduces_identical_q_values(run) -> None:
    """The learner's module, restored into a fresh Algorithm and loaded alone, gives identical Q."""
    from rllib_rec.agent.algo import build_algo_config

    cfg = checkpoint_config(run.checkpoint)
    obs = _obs_batch(cfg.env)
    q_module = _q(load_module(run.checkpoint), obs)
    algo = build_algo_config(cfg).build_algo()
    try:
        algo.restore_from_path(str(run.checkpoint))
        q_algo = _q(algo.get_module(), obs)
    finally:
        algo.stop()
    assert np.array_equal(q_module, q_algo)
    assert np.isfinite(q_module[obs["candidate_mask"] == 1]).all()
    # and the weights are the trained ones, not a fresh init
    q_prev = _q(load_module(run.run_dir / "checkpoints" / "iter_000001"), obs)
    assert not np.array_equal(q_module, q_prev)


def test_resume_continues_iteration_count_and_mlflow_run(run) -> None:
    res = train(None, ["run.iterations=3"], resume=str(run.run_dir), log=lambda s: None)
    assert res.mlflow_run_id == run.mlflow_run_id
    names = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert names == ["iter_000001", "iter_000002", "iter_000003"]
    lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]
    client = mlflow.MlflowClient(run.tracking_uri)
    steps = [m.step for m in client.get_metric_history(run.mlflow_run_id, "episode_return_mean")]
    assert len(steps) == 3 and steps == sorted(steps) and len(set(steps)) == 3


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllib_rec", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, **(env or {})})


def _one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    last = [line for line in out.stderr.splitlines() if line.strip()][-1]
    assert "error:" in last and needle in last, out.stderr[-2000:]


@pytest.mark.hostile("file", rows=[("`evaluate --checkpoint` a path that does not exist", "one line: no such checkpoint")])
def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    _one_line_error(_cli("evaluate", "--checkpoint", str(tmp_path / "nope")), "no such checkpoint")


@pytest.mark.hostile("file", rows=[("`evaluate` a checkpoint with garbage weights", "one line: unreadable checkpoint; untouched")])
def test_corrupt_checkpoint_is_a_clear_error_and_untouched(run, tmp_path) -> None:
    bad = tmp_path / "iter_bad"
    shutil.copytree(run.checkpoint, bad)
    for p in bad.rglob("module_state.pkl"):
        p.write_bytes(b"\x00garbage" * 10)
    before = _tree_digest(bad)
    _one_line_error(_cli("evaluate", "--checkpoint", str(bad)), "unreadable checkpoint")
    assert _tree_digest(bad) == before


@pytest.mark.hostile("config", rows=[("`train --resume RUN --set model.embed_dim=64`",
                                     "one line: does not match the checkpoint's config; checkpoints untouched")])
def test_resume_with_a_different_model_is_refused(run, tmp_path) -> None:
    before = _tree_digest(run.run_dir / "checkpoints")
    out = _cli("train", "--config", DEBUG, "--resume", str(run.run_dir), "--set", "model.embed_dim=64")
    _one_line_error(out, "model.embed_dim: does not match the checkpoint's config")
    assert _tree_digest(run.run_dir / "checkpoints") == before


@pytest.mark.hostile("config", rows=[("`train --resume RUN` of a run that is complete (trained and evaluated)",
                                     "one line: complete, nothing to resume, how to train on; run untouched")])
def test_resume_of_a_complete_run_is_refused(run) -> None:
    before = _tree_digest(run.run_dir)
    out = _cli("train", "--resume", str(run.run_dir), "--set", "run.iterations=1")
    _one_line_error(out, "nothing to resume; to train on, raise run.iterations (e.g. --set run.iterations=")
    assert _tree_digest(run.run_dir) == before


def test_init_from_starts_a_new_run_with_the_checkpoint_network(run, tmp_path) -> None:
    """`train --init-from RUN`: the learner (online and target networks) and the acting env runner start from
    the checkpoint's weights, in a new run directory at iteration 1, with the optimiser fresh."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    from rllib_rec.training.checkpoints import module_path, resolve_checkpoint
    from rllib_rec.training.run_dir import plan_run
    from rllib_rec.training.train import _build_algo

    plan = plan_run(DEBUG, [f"run.output_dir={tmp_path}"], None, None, lambda s: None, init_from=str(run.run_dir))
    assert plan.init_checkpoint == resolve_checkpoint(run.run_dir) and plan.first_iteration == 1
    assert not plan.run_dir.is_relative_to(run.run_dir)
    saved = load_module(plan.init_checkpoint)
    obs = _obs_batch(plan.cfg.env)
    algo = _build_algo(plan)
    try:
        learner = algo.learner_group._learner
        module = learner.module[DEFAULT_MODULE_ID]
        with open(module_path(plan.init_checkpoint) / "module_state.pkl", "rb") as f:
            theirs = pickle.load(f)  # what the checkpoint stored: online and target networks
        ours = module.state_dict()
        assert set(ours) == set(theirs) and any("target" in k for k in ours)
        assert all(np.array_equal(ours[k].cpu().numpy(), np.asarray(theirs[k])) for k in ours)
        assert np.array_equal(_q(algo.env_runner.module, obs), _q(saved, obs))
        assert not any(learner.get_optimizer().state.values())  # no Adam moments carried over
    finally:
        algo.stop()


def test_init_from_cli_trains_and_records_the_source(run, tmp_path) -> None:
    out = _cli("train", "--config", DEBUG, "--init-from", str(run.checkpoint), "--no-tracking",
               "--set", f"run.output_dir={tmp_path}", "--set", "run.iterations=1", "--set", "run.eval_episodes=5")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"starting from the network of {run.checkpoint}" in out.stdout + out.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["init_from"] == str(run.checkpoint) and state["iteration"] == 1


@pytest.mark.hostile("config", rows=[
    ("`train --init-from CKPT --set model.embed_dim=64` (another network)", "one line naming the field; no run"),
    ("`train --init-from CKPT --resume RUN`", "one line: give one of them")])
def test_init_from_a_different_network_or_with_resume_is_refused(run, tmp_path) -> None:
    out = _cli("train", "--config", DEBUG, "--init-from", str(run.checkpoint), "--set", "model.embed_dim=64",
               "--set", f"run.output_dir={tmp_path}")
    _one_line_error(out, "its network differs from this config's in embed_dim")
    out = _cli("train", "--config", DEBUG, "--init-from", str(run.checkpoint), "--resume", str(run.run_dir))
    _one_line_error(out, "--resume continues a run (give one of them)")
    assert not any(tmp_path.iterdir())


@pytest.mark.hostile("config", rows=[("`MLFLOW_TRACKING_URI=http://127.0.0.1:9` (nothing listening)",
                                     "one line before training; no run directory")])
def test_unreachable_tracking_uri_fails_before_training(tmp_path) -> None:
    out = _cli("train", "--config", DEBUG, "--set", f"run.output_dir={tmp_path}",
               env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    _one_line_error(out, "MLflow tracking URI http://127.0.0.1:9 is unreachable")
    assert not any(tmp_path.glob("debug-*"))  # no run directory was created


def test_local_run_starts_a_private_ray_instead_of_joining_a_ray_start_cluster(monkeypatch) -> None:
    """Without RAY_ADDRESS, Ray's own default (address=None) joins the cluster `ray start` last left in
    /tmp/ray/ray_current_cluster; a local run must start its own instance instead."""
    import ray

    from rllib_rec.agent import runtime

    calls: list[dict] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    runtime.init_ray(num_cpus=2)
    assert len(calls) == 1 and calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # an explicit cluster is still joined
    runtime.init_ray()
    assert "address" not in calls[1]


def test_validation_selects_the_best_checkpoint_and_survives_resume(tmp_path) -> None:
    """run.validation_episodes > 0: every checkpoint is scored on validation seeds; best.json names the
    best one, the final evaluation, `evaluate`/`export` of the run dir and TrainResult use it; a resume
    keeps the earlier scores."""
    from rllib_rec.training.checkpoints import resolve_checkpoint

    sets = [f"run.output_dir={tmp_path}", "run.iterations=3", "run.checkpoint_every=1",
            "run.validation_episodes=8", "run.eval_episodes=8"]
    lines: list[str] = []
    res = train(DEBUG, sets, log=lines.append, track=False)
    scores = json.loads((res.run_dir / "state.json").read_text())["validation"]
    assert sorted(scores) == ["iter_000001", "iter_000002", "iter_000003"]
    best_name = max(scores, key=lambda k: (scores[k], k))
    best = json.loads((res.run_dir / "best.json").read_text())
    assert best["checkpoint"] == f"checkpoints/{best_name}" and best["value"] == scores[best_name]
    assert res.checkpoint == resolve_checkpoint(res.run_dir) == res.run_dir / "checkpoints" / best_name
    assert res.last_checkpoint == res.run_dir / "checkpoints" / "iter_000003"
    assert any(line.startswith(f"selected {best_name} on validation") for line in lines)

    res2 = train(None, ["run.iterations=4"], resume=str(res.run_dir), log=lambda s: None, track=False)
    scores2 = json.loads((res.run_dir / "state.json").read_text())["validation"]
    assert {k: scores2[k] for k in scores} == scores and "iter_000004" in scores2
    assert res2.checkpoint.name == max(scores2, key=lambda k: (scores2[k], k))


@pytest.mark.hostile("config", rows=[("`--set run.validation_seed=1000005` (overlaps the evaluation seeds)",
                                     "one line naming run.validation_seed")])
def test_validation_seeds_overlapping_eval_seeds_are_refused(tmp_path) -> None:
    out = _cli("train", "--config", DEBUG, "--set", f"run.output_dir={tmp_path}", "--set",
               "run.validation_episodes=10", "--set", "run.validation_seed=1000005")
    _one_line_error(out, "run.validation_seed")
    assert not any(tmp_path.iterdir())


@pytest.mark.hostile("file", rows=[("run directory whose best.json names a missing checkpoint",
                                   "one line: not a complete checkpoint")])
def test_corrupt_best_json_is_a_clear_error(tmp_path) -> None:
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "best.json").write_text('{"checkpoint": "checkpoints/iter_000009"}')
    _one_line_error(_cli("evaluate", "--checkpoint", str(run_dir)), "not a complete checkpoint")
