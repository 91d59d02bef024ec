"""Tracking faults and secrets, injected into real in-process training runs of the debug config.

A. ``--no-tracking`` trains with MLflow unreachable and still writes metrics, checkpoints and evaluation.
B. The MLflow store refusing writes mid-run (injected below the client, in the sqlite store and the local
   artifact repository) never stops training: the outage is reported once, queued records are sent when
   the store comes back, and what is still unsent at the end lands in ``<run_dir>/mlflow_unsent.jsonl``.
C. Credentials in config values never reach stdout/stderr, the run directory or the MLflow store.

The fault switches on and off from the run's own progress lines, so it hits exactly the iterations named.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from rllib_rec.cli import main
from rllib_rec.training.tracking import UNSENT_FILE
from rllib_rec.training.train import TrainResult, summary_lines, train

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
# Short iterations: the point is the tracking around the loop, not learning.
QUICK = ["run.steps_per_iteration=100", "run.eval_episodes=5", "run.checkpoint_every=2"]
FAILED_LINE = "MLflow tracking at"  # prefix of RunLogger's outage report


@pytest.fixture(scope="module", autouse=True)
def _ray_down_after_module() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


class StoreOutage:
    """Makes the sqlite store and local artifact repo refuse writes between two iterations of a run.

    ``log`` is the run's progress callback: after the line of iteration ``down_after`` the store fails,
    after iteration ``up_after`` (if any) it works again. Patched below MlflowClient, so the client's own
    wrapping and chunking run as in a real outage."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, down_after: int, up_after: int | None = None) -> None:
        self.down_after, self.up_after = down_after, up_after
        self.down = False
        self.refused = 0
        self.lines: list[str] = []
        for cls, name in ((SqlAlchemyStore, "log_batch"), (SqlAlchemyStore, "update_run_info"),
                          (LocalArtifactRepository, "log_artifact")):
            monkeypatch.setattr(cls, name, self._guard(getattr(cls, name)))

    def _guard(self, real):  # noqa: ANN001, ANN202
        def guarded(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self.down:
                self.refused += 1
                raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database [injected]")
            return real(*args, **kwargs)

        return guarded

    def log(self, line: str) -> None:
        self.lines.append(line)
        m = re.match(r"iter\s+(\d+)/", line)
        if m:
            it = int(m.group(1))
            if it == self.down_after:
                self.down = True
            if self.up_after is not None and it == self.up_after:
                self.down = False

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)


def _rows(res: TrainResult) -> list[dict]:
    return [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]


def _logged(row: dict) -> dict[str, float]:
    """The metrics train() sends for one metrics.jsonl row."""
    return {k: v for k, v in row.items() if k != "iteration" and math.isfinite(v)}


def test_no_tracking_flag_trains_without_mlflow(tmp_path, monkeypatch, capsys) -> None:
    # An unreachable server in the environment: with tracking on this fails before training (test_train.py).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    rc = main(["train", "--config", DEBUG, "--no-tracking", "--set", f"run.output_dir={tmp_path}",
               "--set", "run.iterations=2", *(a for s in QUICK for a in ("--set", s))])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    (run_dir,) = tmp_path.glob("debug-*")
    assert [r["iteration"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_000002"]
    assert "greedy" in (run_dir / "evaluation.txt").read_text()
    assert "MLflow        : off (--no-tracking)" in out.out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (run_dir / UNSENT_FILE).exists()


@pytest.mark.slow
def test_tune_no_tracking_sweeps_without_mlflow(tmp_path) -> None:
    sets = ["run.iterations=1", "run.steps_per_iteration=100", "dqn.learning_starts=50", "sweep.num_samples=1",
            "sweep.max_concurrent_trials=1", f"sweep.storage_path={tmp_path / 'sweeps'}", f"run.output_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, "-m", "rllib_rec", "tune", "--config", str(ROOT / "configs" / "sweep.yaml"),
                           "--no-tracking", *(a for s in sets for a in ("--set", s))], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "sweeps" / "debug-sweep" / "best.json").is_file()
    assert not (tmp_path / "mlflow.db").exists()


def test_mlflow_outage_mid_run_is_reported_once_and_flushed_when_it_recovers(tmp_path, monkeypatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outage = StoreOutage(monkeypatch, down_after=1, up_after=3)  # iterations 2 and 3 hit a dead store
    res = train(DEBUG, [f"run.output_dir={tmp_path}", "run.iterations=4", *QUICK], tracking_uri=uri,
                log=outage.log)
    monkeypatch.undo()
    assert outage.refused >= 2  # the fault really hit the run (iteration 2 and the retry at iteration 3)
    assert outage.count(f"{FAILED_LINE} {uri} failed") == 1, outage.lines
    assert outage.count("is back: sent") == 1, outage.lines
    assert res.unsent_file is None and not (res.run_dir / UNSENT_FILE).exists()

    client = mlflow.MlflowClient(uri)
    run = client.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED"
    rows = _rows(res)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    for key in _logged(rows[0]):  # every metric of every iteration, outage ones included, at its step
        got = {m.step: m.value for m in client.get_metric_history(res.mlflow_run_id, key)}
        want = {int(r["env_steps"]): r[key] for r in rows if key in _logged(r)}
        assert got == want, key
    assert run.data.tags["checkpoint_path"] == str(res.checkpoint)
    assert run.data.params["dqn.lr"] == "0.001"
    assert {"experiment.yaml", "debug.yaml", "evaluation.txt", "metrics.jsonl"} <= {
        a.path for a in client.list_artifacts(res.mlflow_run_id)}


def test_mlflow_outage_to_the_end_keeps_every_unsent_metric_locally(tmp_path, monkeypatch, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outage = StoreOutage(monkeypatch, down_after=1)  # never recovers
    res = train(DEBUG, [f"run.output_dir={tmp_path}", "run.iterations=3", *QUICK], tracking_uri=uri,
                log=outage.log)
    monkeypatch.undo()
    assert [r["iteration"] for r in _rows(res)] == [1, 2, 3]  # training went to the end
    assert res.checkpoint.name == "iter_000003"
    assert outage.count(f"{FAILED_LINE} {uri} failed") == 1, outage.lines
    assert outage.count("MLflow still failing at the end") == 1, outage.lines
    assert res.unsent_file == res.run_dir / UNSENT_FILE

    records = [json.loads(line) for line in res.unsent_file.read_text().splitlines()]
    header, body = records[0], records[1:]
    assert header["kind"] == "header" and header["run_id"] == res.mlflow_run_id
    assert header["records"] == len(body) == res.unsent_records
    metrics = [r for r in body if r["kind"] == "metrics"]
    for row in _rows(res)[1:]:  # iterations 2 and 3: every metric, exactly as measured, at its step
        assert {"kind": "metrics", "step": int(row["env_steps"]), "values": _logged(row)} in [
            {k: v for k, v in r.items() if k != "timestamp"} for r in metrics]
    assert any("eval/agent/return_mean" in r["values"] for r in metrics)
    assert {Path(r["path"]).name for r in body if r["kind"] == "artifact"} >= {
        "evaluation.txt", "evaluation.json", "learning_curve.png", "metrics.jsonl"}
    assert {"kind": "tags", "values": {"checkpoint_path": str(res.checkpoint)}} in body
    assert body[-1]["kind"] == "status" and body[-1]["status"] == "FINISHED"
    assert any(line.startswith("MLflow unsent : ") and str(res.unsent_file) in line for line in summary_lines(res))

    # The store really missed them: only iteration 1 reached MLflow.
    client = mlflow.MlflowClient(uri)
    assert len(client.get_metric_history(res.mlflow_run_id, "episode_return_mean")) == 1


SECRET = "s3cr3t-7f2a"


def test_credentials_in_config_values_are_never_recorded(tmp_path, capfd) -> None:
    cfg = tmp_path / "leaky.yaml"
    cfg.write_text(Path(DEBUG).read_text() + f"# results mirror: https://ci-bot:{SECRET}@mlflow.example.com\n")
    out_dir = tmp_path / "out"
    uri = f"sqlite:///{out_dir / 'mlflow.db'}"
    # (`name` cannot carry one: it is restricted to file-name characters, tests/test_safe_names.py)
    res = train(str(cfg), [f"run.output_dir={out_dir}", "run.iterations=1", *QUICK,
                           f"run.experiment=https://ci-bot:{SECRET}@mlflow.example.com/team?token={SECRET}"],
                tracking_uri=uri, log=print)
    print("\n".join(summary_lines(res)))
    captured = capfd.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    assert "redacted wherever this run records them" in captured.out  # the user is told, without the value

    client = mlflow.MlflowClient(uri)
    run = client.get_run(res.mlflow_run_id)
    recorded = [*run.data.params.values(), *run.data.tags.values(), run.info.run_name,
                client.get_experiment(run.info.experiment_id).name]
    assert not [v for v in recorded if SECRET in v]
    assert run.data.params["run.experiment"] == "https://***@mlflow.example.com/team?token=***"
    artifacts = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {"experiment.yaml", "leaky.yaml", "evaluation.txt", "metrics.jsonl"} <= artifacts
    for name in artifacts:
        assert SECRET.encode() not in Path(client.download_artifacts(res.mlflow_run_id, name, str(tmp_path / "dl"))
                                           ).read_bytes(), name
    # Every byte under the output dir: run dir (metrics.jsonl, state.json, experiment/source yaml, evaluation,
    # checkpoints), the sqlite store itself and the artifact store.
    leaks = [p for p in out_dir.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks
    assert "mirror: https://***@mlflow.example.com" in (res.run_dir / "source_config.yaml").read_text()


def test_config_error_quoting_a_credential_is_redacted(capsys) -> None:
    rc = main(["train", "--config", DEBUG, "--set", f"env.preset=https://u:{SECRET}@host"])
    err = capsys.readouterr().err
    assert rc == 2 and "env.preset" in err and SECRET not in err
