"""`rllib-rec train --offline LOGS`: the same Transformer-DQN learned from Parquet logs, no env steps."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from envs import OBS_KEYS
from rllib_rec.cli import main
from rllib_rec.offpolicy.logs import log_arrays, read_logs

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
FAST = ["run.iterations=2", "run.steps_per_iteration=200", "run.eval_episodes=5", "run.checkpoint_every=1"]


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(scope="module")
def random_logs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("offline") / "random.parquet"
    assert main(["collect", "--config", DEBUG, "--policy", "random", "--episodes", "60", "--seed", "5",
                 "--out", str(out)]) == 0
    return out


def test_logged_episodes_become_replay_episodes(random_logs: Path) -> None:
    from ray.rllib.core.columns import Columns

    from rllib_rec.training.offline import logging_policy_stats, logs_to_episodes

    a = log_arrays(read_logs(random_logs))
    episodes = logs_to_episodes(a)
    assert len(episodes) == 60 and sum(len(e) for e in episodes) == a.n_rows
    first = episodes[0]
    n = len(first)
    np.testing.assert_array_equal(first.get_actions(), a.action[:n])
    np.testing.assert_allclose(first.get_rewards(), a.reward[:n])
    np.testing.assert_allclose(first.get_extra_model_outputs(Columns.ACTION_PROB), a.behaviour_prob[:n])
    obs = first.get_observations()
    assert set(obs) == set(OBS_KEYS)
    for k in OBS_KEYS:
        np.testing.assert_array_equal(obs[k][:n], a.obs[k][:n])  # o_0 .. o_{n-1}
        np.testing.assert_array_equal(obs[k][n], a.next_obs[k][n - 1])  # the final observation
    assert first.is_terminated == bool(a.terminated[n - 1]) and first.is_truncated == bool(a.truncated[n - 1])

    stats = logging_policy_stats(a)  # the logging policy's value, read off the logs
    assert len(stats.returns) == 60
    assert stats.returns.sum() == pytest.approx(float(a.reward.sum()), rel=1e-5)


def test_offline_training_learns_from_logs_only(random_logs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    rc = main(["train", "--config", DEBUG, "--offline", str(random_logs), *_sets(*FAST, f"run.output_dir={out}",
                                                                                "dqn.ips_weights=true")])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr()
    (run_dir,) = out.glob("debug-*")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["env_steps"] for m in metrics] == [0, 0]  # no env interaction at all
    # 200 steps x replay ratio 4 / batch 32 = 25 updates per iteration; target sync counts replayed steps.
    assert [m["updates"] for m in metrics] == [25, 25]
    assert metrics[1]["replayed_steps"] == pytest.approx(2 * 25 * 32 / 4)
    assert all(np.isfinite(m["qf_loss"]) for m in metrics)
    assert "offline updates 25" in err.out + err.err

    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert {"agent (greedy)", "logging policy (logs)", "random"} <= set(evaluation)
    assert evaluation["logging policy (logs)"]["episodes"] == 60

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["mode"] == "offline" and run.data.tags["offline_logs"] == str(random_logs.resolve())
    assert "eval/logging_policy/return_mean" in run.data.metrics

    # Resume keeps the log and continues the replayed-step count (target sync and lr schedule use it).
    state = json.loads((run_dir / "state.json").read_text())
    assert state["offline_logs"] == str(random_logs.resolve())
    rc = main(["train", "--resume", str(run_dir), *_sets("run.iterations=3")])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2, 3] and metrics[2]["replayed_steps"] == pytest.approx(600)


@pytest.mark.parametrize(("overrides", "problem"), [
    (["env.catalog.n_items=12"], "logs have 10 items but env.catalog.n_items is 12"),
    (["env.n_candidates=5", "env.n_featured=2"], "logs have 10 candidate slots per step but the env offers 5"),
    (["env.history_length=8"], "logs have history length 20 but env.history_length is 8"),
    (["dqn.replay_capacity=100", "dqn.train_batch_size=32"], "exceed dqn.replay_capacity (100)"),
])
def test_logs_that_do_not_fit_the_experiment_are_refused(random_logs: Path, tmp_path: Path, capsys,
                                                        overrides: list[str], problem: str) -> None:
    out = tmp_path / "runs"
    rc = main(["train", "--config", DEBUG, "--offline", str(random_logs),
               *_sets(*FAST, f"run.output_dir={out}", *overrides)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and problem in err[0] and str(random_logs) in err[0], err
    assert not out.exists()  # refused before any run directory or MLflow store was created


def test_not_a_log_is_refused(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "x.parquet"
    bogus.write_bytes(b"PAR1 not really")
    rc = main(["train", "--config", DEBUG, "--offline", str(bogus), *_sets(*FAST, f"run.output_dir={tmp_path / 'r'}")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bogus) in err[0]
    assert not (tmp_path / "r").exists()
