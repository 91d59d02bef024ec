"""The README's "A job on a local head" block, run as written (issue 18, item 8): a private head with its own
ports and temp dir, the debug training submitted to it, its run directory and MLflow run in the user's store,
and the head stopped without touching any other Ray instance on the machine.

Only three things are substituted: `.venv/bin/rllib-rec` -> this interpreter's `-m rllib_rec` (a checkout may
not have .venv), the temp dir (a fresh short one) and `$PWD/runs` (a tmp dir, so the test writes nothing
into the checkout)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import mlflow
import pytest

from rllib_rec.deploy.head import HEAD_FILE, head_pids

ROOT = pathlib.Path(__file__).parent.parent


def readme_block(marker: str) -> str:
    """The first ```bash block after ``marker`` in the README."""
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r".*?```bash\n(.*?)```", text, re.S)
    assert m, marker
    return m.group(1)


def _canary(temp_dir: str) -> subprocess.Popen:
    """Another Ray on the machine (a plain local ray.init()), which stopping the head must leave alone."""
    code = ("import ray, sys, time; ray.init(address='local', num_cpus=1, include_dashboard=False, "
            f"_temp_dir={temp_dir!r}); print('up', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.stdout.readline().strip() == "up"
    return proc


@pytest.mark.slow  # a Ray head and a 3-iteration training job: ~1.5 min on 2 cores
def test_readme_local_head_job(tmp_path) -> None:
    block = readme_block("**A job on a local head**")
    assert "head start --temp-dir /tmp/rr-head" in block and "head stop --temp-dir /tmp/rr-head" in block
    assert "ray stop" not in block
    head_dir = tempfile.mkdtemp(prefix="rrh", dir="/tmp")
    canary_dir = tempfile.mkdtemp(prefix="rrc", dir="/tmp")
    runs = tmp_path / "runs"
    script = (block.replace(".venv/bin/rllib-rec", f"{sys.executable} -m rllib_rec")
              .replace("/tmp/rr-head", head_dir).replace("$PWD/runs", str(runs)))
    # Keep the head's record (its ports), which `head stop` deletes: the daemonised Ray client server names no
    # temp dir, only the GCS port, and must be gone too.
    lines = script.splitlines()
    at = next(i for i, line in enumerate(lines) if "head start" in line)
    lines.insert(at + 1, f"cp {head_dir}/{HEAD_FILE} {tmp_path}/head.json")
    script = "\n".join(lines) + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    canary = _canary(canary_dir)
    t0 = time.monotonic()
    try:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
        gcs_port = json.loads((tmp_path / "head.json").read_text())["ports"]["port"]
        assert not head_pids(head_dir, gcs_port), "the head's processes outlived `head stop`"
        assert canary.poll() is None and head_pids(canary_dir), "`head stop` touched another Ray instance"
    finally:
        for d in (head_dir, canary_dir):
            for pid in head_pids(d):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        canary.kill()
        canary.wait()
        shutil.rmtree(head_dir, ignore_errors=True)
        shutil.rmtree(canary_dir, ignore_errors=True)
    assert "job raysubmit_" in out.stderr and "succeeded" in out.stderr, out.stderr[-3000:]
    # The results are in the user's store: the run directory under runs/, the MLflow run in runs/mlflow.db.
    ckpts = list(runs.glob("debug-*/checkpoints/iter_000003/rllib_rec.json"))
    assert len(ckpts) == 1, list(runs.rglob("*"))[:20]
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 1 and found[0].data.tags["checkpoint_path"] == str(ckpts[0].parent)
    assert found[0].info.status == "FINISHED"
    print(f"README local-head block: {time.monotonic() - t0:.0f}s")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllib_rec", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_head_commands_without_a_head() -> None:
    long = "/tmp/" + "x" * 50
    out = _cli("head", "start", "--temp-dir", long)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "longer than 40 characters" in out.stderr
    assert not pathlib.Path(long).exists()
    none = tempfile.mkdtemp(prefix="rrn", dir="/tmp")
    try:
        out = _cli("head", "status", "--temp-dir", none)
        assert out.returncode == 1 and out.stdout == "" and "no Ray head runs" in out.stderr
        out = _cli("head", "stop", "--temp-dir", none)  # nothing to stop is not an error
        assert out.returncode == 0 and "no Ray head runs" in out.stderr
    finally:
        shutil.rmtree(none, ignore_errors=True)


def test_head_pids_are_that_heads_processes_and_their_children() -> None:
    td = tempfile.mkdtemp(prefix="rrp", dir="/tmp")
    sleeper = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    # a shell command that merely mentions the temp dir, and a "daemon" that names a session dir of it
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--temp-dir", td])
    daemon = subprocess.Popen([sys.executable, "-c", sleeper, f"--session-dir={td}/session_1"])
    # the Ray client server names only the GCS address; another Ray's GCS port that merely starts alike is not it
    client_server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--address=192.0.2.2:47001"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--address=192.0.2.2:470012"])
    try:
        deadline = time.monotonic() + 10
        while len(head_pids(td)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = head_pids(td)
        assert daemon.pid in pids and len(pids) == 2 and bystander.pid not in pids, pids
        with_port = head_pids(td, gcs_port=47001)
        assert set(with_port) == {*pids, client_server.pid} and other.pid not in with_port, with_port
    finally:
        for pid in head_pids(td):
            os.kill(pid, 9)
        for p in (bystander, client_server, other):
            p.kill()
        for p in (bystander, daemon, client_server, other):
            p.wait()
        shutil.rmtree(td, ignore_errors=True)
