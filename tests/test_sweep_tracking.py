"""Sweep trials' MLflow runs (`trial_tracking_callback`), driven through Tune's callback hooks by hand.

Tune calls the hooks on the driver; here they get stand-in trials and RLlib-shaped result dicts, so the
outage handling is checked in seconds against a real sqlite store. The real sweep (slow, test_sweep.py)
checks that Tune calls them.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from rllib_rec.config.sweep import load_sweep_config
from rllib_rec.training.tracking import UNSENT_FILE, connect
from rllib_rec.tuning.callbacks import trial_tracking_callback

ROOT = Path(__file__).parent.parent
METRIC = "validation/return_mean"  # configs/sweep.yaml's sweep.metric: only in results of checkpoint iterations


class FakeTrial:
    def __init__(self, trial_id: str, local_path: Path) -> None:
        self.trial_id, self.local_path = trial_id, str(local_path)
        # The RLlib config paths of configs/sweep.yaml's swept keys (SWEEPABLE), at sampled values.
        self.config = {"lr": 0.002, "gamma": 0.93, "_model_config": {"qnet": {"embed_dim": 16}},
                       "replay_buffer_config": {"alpha": 0.6}}


def _result(i: int) -> dict:
    result = {"training_iteration": i,
              "env_runners": {"num_env_steps_sampled_lifetime": 100 * i, "episode_return_mean": 1.0 + i,
                              "episode_len_mean": 20.0},
              "learners": {"default_policy": {"qf_loss": 0.5 / i}}}
    if i % 2 == 0:  # a checkpoint iteration: the trial scored the checkpoint on validation seeds
        result["validation"] = {"return_mean": 3.0 + i, "episodes": 50, "seed": 2_000_000, "seconds": 0.5}
    return result


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    scfg = load_sweep_config(ROOT / "configs" / "sweep.yaml", [f"run.output_dir={tmp_path}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = {"down": False, "refused": 0, "lines": []}
    real = SqlAlchemyStore.log_batch

    def guarded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if state["down"]:
            state["refused"] += 1
            raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database [injected]")
        return real(*args, **kwargs)

    monkeypatch.setattr(SqlAlchemyStore, "log_batch", guarded)
    exp_id = connect(uri, "rllib-rec", tmp_path)
    state["callback"] = trial_tracking_callback(scfg, uri, exp_id, state["lines"].append)
    state["client"], state["exp_id"] = mlflow.MlflowClient(uri), exp_id
    return state


def _run(state: dict, name: str):  # noqa: ANN202
    (run,) = state["client"].search_runs([state["exp_id"]], filter_string=f"attributes.run_name = '{name}'")
    return run


def test_trial_run_gets_the_experiment_config_and_metrics_through_an_outage(store: dict, tmp_path: Path) -> None:
    cb, trial = store["callback"], FakeTrial("a0001", tmp_path / "trial_a0001")
    cb.on_trial_start(0, [], trial)
    for i in (1, 2, 3, 4):
        store["down"] = i in (2, 3)  # the store refuses iterations 2 and 3
        cb.on_trial_result(i, [], trial, _result(i))
    cb.on_trial_complete(5, [], trial)

    run = _run(store, "debug-sweep-a0001")
    assert run.info.status == "FINISHED"
    p = run.data.params
    # The trial's experiment config, flattened as a train run's: the sampled values, not the base ones.
    assert float(p["dqn.lr"]) == 0.002 and p["model.embed_dim"] == "16" and float(p["dqn.gamma"]) == 0.93
    assert p["env.preset"] == "default" and "run.iterations" in p
    assert not any(k.startswith(("replay_buffer_config", "_model_config")) for k in p)  # no raw RLlib dict
    assert run.data.tags["sweep"] == "debug-sweep" and run.data.tags["trial_id"] == "a0001"
    history = store["client"].get_metric_history(run.info.run_id, "episode_return_mean")
    assert [(m.step, m.value) for m in history] == [(100, 2.0), (200, 3.0), (300, 4.0), (400, 5.0)]
    validated = store["client"].get_metric_history(run.info.run_id, METRIC)
    assert [(m.step, m.value) for m in validated] == [(200, 5.0), (400, 7.0)]
    assert store["refused"] >= 2
    assert sum("failed" in line for line in store["lines"]) == 1  # reported once, not per write
    assert sum("is back" in line for line in store["lines"]) == 1
    assert not (tmp_path / "trial_a0001" / UNSENT_FILE).exists()


def test_records_still_unsent_at_the_end_go_to_the_trial_directory(store: dict, tmp_path: Path) -> None:
    cb, trial = store["callback"], FakeTrial("b0002", tmp_path / "trial_b0002")
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(1, [], trial, _result(1))
    store["down"] = True  # to the end: results 2-3 and the final status never reach the store
    cb.on_trial_result(2, [], trial, _result(2))
    cb.on_trial_result(3, [], trial, _result(3))
    cb.on_trial_error(4, [], trial)

    lines = (tmp_path / "trial_b0002" / UNSENT_FILE).read_text().splitlines()
    header, *records = map(json.loads, lines)
    assert header["records"] == len(records) == 3
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [200, 300]
    assert records[-1] == {**records[-1], "kind": "status", "status": "FAILED"}
    store["down"] = False
    run = _run(store, "debug-sweep-b0002")
    history = store["client"].get_metric_history(run.info.run_id, "episode_return_mean")
    assert [m.step for m in history] == [100]  # what was sent before the outage is there


def test_the_callback_pickles_without_its_open_runs(store: dict, tmp_path: Path) -> None:
    # Tune pickles callbacks into its experiment state; a restored sweep starts with no open runs.
    import cloudpickle

    cb = store["callback"]
    cb.on_trial_start(0, [], FakeTrial("c0003", tmp_path / "trial_c0003"))
    clone = cloudpickle.loads(cloudpickle.dumps(cb))
    assert clone._runs == {} and list(cb._runs) == ["c0003"]
    cb.on_experiment_end([])
    assert _run(store, "debug-sweep-c0003").info.status == "KILLED"
