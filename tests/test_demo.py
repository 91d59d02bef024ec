"""Smoke test of the README's run command (`make demo` = `rllib-rec demo`): train debug end to end,
export + check the TFLite model, and show the MLflow run (params, metrics, PNG, checkpoint path)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import mlflow

ROOT = pathlib.Path(__file__).parent.parent


def test_demo_trains_exports_and_records_mlflow_run(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-m", "rllib_rec", "demo", "--set", f"run.output_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    fields = dict(re.findall(r"^(\w[\w ]*?)\s+: (.+)$", out.stdout, flags=re.M))
    ckpt = pathlib.Path(fields["checkpoint"])
    model = pathlib.Path(fields["TFLite model"].split("  (")[0])
    uri, run_id = re.match(r"(\S+)\s+run (\w+)", fields["MLflow"]).groups()
    assert ckpt.is_dir() and model.is_file() and model.with_suffix(".json").is_file()
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["name"] == "debug"
    assert run.data.tags["checkpoint_path"] == str(ckpt)
    assert "episode_return_mean" in run.data.metrics
    artifacts = _all_artifacts(mlflow.MlflowClient(uri), run_id)
    assert "learning_curve.png" in artifacts and "evaluation.txt" in artifacts
    assert any(p.endswith("model.tflite") for p in artifacts)


def _all_artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _all_artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out
