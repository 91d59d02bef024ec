"""`ray job submit` end to end: a real Ray head on loopback (token auth, as `ray start` sets up in Ray 2.60),
the debug training submitted through `rllib-rec submit`, SUCCEEDED, a checkpoint and an MLflow run on disk.
Only the processes of the head this test started are stopped (matched by its private temp dir)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import mlflow
import pytest

ROOT = pathlib.Path(__file__).parent.parent
RAY = str(pathlib.Path(sys.executable).with_name("ray"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_pids(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (the head's private temp dir)."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _stop(pids: list[int], timeout: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(pathlib.Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


@pytest.fixture
def ray_head():
    # A short private temp dir: Ray's socket paths must stay under the 107-byte AF_UNIX limit.
    temp_dir = tempfile.mkdtemp(prefix="rr", dir="/tmp")
    gcs, dash = _free_port(), _free_port()
    # Ray's fixed default ports (job agent 52365, client server 10001, ...) collide with any other Ray
    # instance on the machine (a local `ray.init()` holds 52365): the job agent then fails to bind and every
    # submission gets "No available agent". Free ports for all of them make this head independent.
    ports = [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                      "ray-client-server-port", "metrics-export-port",
                                                      "runtime-env-agent-port")]
    # A job's driver inherits the head's environment: keep the caller's MLflow store out of it.
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "RAY_ADDRESS": ""}
    out = subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", *ports, "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        _stop(_own_pids(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_debug_training_as_a_ray_job(ray_head, tmp_path) -> None:
    out_dir = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "token"
    t0 = time.time()
    # Right after `ray start` the job agent may not be up yet ("No available agent"): retry that only.
    for attempt in range(10):
        sid = f"rllib-rec-test-{attempt}"
        job = subprocess.run(
            [sys.executable, "-m", "rllib_rec", "submit", "--address", ray_head, "--submission-id", sid,
             "--", "train", "--config", "configs/debug.yaml", "--set", "run.iterations=2",
             "--set", "run.eval_episodes=5", "--set", f"run.output_dir={out_dir}"],
            capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
        )
        if "No available agent" not in job.stdout + job.stderr:
            break
        time.sleep(5)
    assert job.returncode == 0, (job.stdout[-3000:], job.stderr[-3000:])
    status = subprocess.run([RAY, "job", "status", "--address", ray_head, sid],
                            capture_output=True, text=True, timeout=60, env=env)
    assert "succeeded" in (status.stdout + status.stderr).lower()
    ckpts = list(out_dir.glob("debug-*/checkpoints/iter_000002/rllib_rec.json"))
    assert len(ckpts) == 1
    runs = mlflow.MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}").search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["checkpoint_path"] == str(ckpts[0].parent)
    assert time.time() - t0 < 600
