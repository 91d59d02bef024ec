"""`rllib-rec submit` without a cluster (issue 18, items 3, 5 and 13): a job server that is down, or whose job
agent is not up, is one line (exit 2); results that would vanish with the job's temporary working dir are
refused before anything is sent; the package leaves out exports, data and logs; a file that vanishes while
the working dir is packed is retried once, then one line.

A stand-in job server (the four HTTP routes Ray's job SDK calls) answers on loopback; the real one is in
tests/test_ray_job.py (slow)."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rllib_rec.cli import main

ROOT = pathlib.Path(__file__).parent.parent
DEBUG = "configs/debug.yaml"


class FakeJobServer:
    """Ray's job REST API as the SDK uses it: /api/version, /api/packages (GET 404 then PUT), POST /api/jobs/.
    ``jobs`` answers the POST: "ok", or "no-agent" (what a head whose dashboard agent is not up says)."""

    def __init__(self, jobs: str = "ok") -> None:
        self.jobs = jobs
        self.packages: list[bytes] = []
        self.submitted: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, code: int, body: str | dict = "") -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._send(200, {"version": "1", "ray_version": "2.60.0", "ray_commit": "x", "session_name": "s"})
                else:
                    self._send(404, "not found")

            def do_PUT(self) -> None:
                fake.packages.append(self._body())
                self._send(200)

            def do_POST(self) -> None:
                body = json.loads(self._body() or b"{}")
                if fake.jobs == "no-agent":
                    self._send(500, "No available agent to submit job, please try again later.")
                    return
                fake.submitted.append(body)
                self._send(200, {"job_id": None, "submission_id": body.get("submission_id") or "raysubmit_1"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeJobServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def package_names(self) -> set[str]:
        assert len(self.packages) == 1
        return set(zipfile.ZipFile(io.BytesIO(self.packages[0])).namelist())


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


def _submit_cli(*args: str, cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllib_rec", "submit", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**_env(), "PYTHONPATH": str(ROOT)})


def test_job_server_down_is_one_line(tmp_path) -> None:
    out = _submit_cli("--address", "http://127.0.0.1:1", "--", "train", "--config", DEBUG,
                      "--set", f"run.output_dir={tmp_path}")
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and out.stderr.count("\n") == 1, (out.stdout, out.stderr)
    assert out.stderr.startswith("rllib-rec submit: error: no Ray job server answers at http://127.0.0.1:1")


def test_job_agent_not_up_is_one_line_after_retrying(tmp_path) -> None:
    with FakeJobServer(jobs="no-agent") as server:
        out = _submit_cli("--address", server.address, "--agent-wait", "1", "--working-dir", str(_tree(tmp_path)),
                          "--", "train", "--config", str(ROOT / DEBUG), "--set", f"run.output_dir={tmp_path}")
    errors = [ln for ln in out.stderr.splitlines() if "error:" in ln]
    assert out.returncode == 2 and len(errors) == 1, out.stderr
    assert "no job agent up after 1s" in errors[0] and "No available agent" in errors[0]
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("job, problem", [
    (["train", "--config", DEBUG], "run.output_dir 'runs' is relative"),
    (["train", "--config", DEBUG, "--set", "run.output_dir=/shared/runs", "--tracking-uri", "sqlite:///mlflow.db"],
     "MLflow store sqlite:///mlflow.db is a file under the job's temporary working dir"),
    (["tune", "--config", "configs/sweep.yaml", "--set", "run.output_dir=/shared/runs"],
     "sweep.storage_path 'runs/sweeps' is relative"),
    (["tune", "--config", "configs/sweep.yaml", "--set", "sweep.storage_path=s3://b/sweeps"],
     "run.output_dir (its default MLflow store) 'runs' is relative"),
    (["export", "--checkpoint", "runs/debug-1"], "--checkpoint 'runs/debug-1' is relative"),
    (["export", "--checkpoint", "/shared/runs/debug-1", "runs/debug-2"], "--checkpoint 'runs/debug-2' is relative"),
    (["collect", "--config", DEBUG, "--policy", "random", "--episodes", "5", "--out", "logs.parquet"],
     "--out 'logs.parquet' is relative"),
    (["demo"], "demo keeps its run"),
])
def test_results_that_would_vanish_with_the_job_are_refused(job: list[str], problem: str, capsys) -> None:
    rc = main(["submit", "--address", "http://127.0.0.1:1", "--dry-run", "--", *job])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and problem in err and err.endswith("(or --allow-ephemeral)"), err
    # --allow-ephemeral is the user's explicit choice
    assert main(["submit", "--address", "http://127.0.0.1:1", "--dry-run", "--allow-ephemeral", "--", *job]) == 0


def test_the_local_tracking_uri_is_checked_and_forwarded(monkeypatch, capsys) -> None:
    job = ["--", "train", "--config", DEBUG, "--set", "run.output_dir=/shared/runs"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow.db")
    assert main(["submit", "--address", "http://127.0.0.1:1", "--dry-run", *job]) == 2
    assert "MLflow store sqlite:///runs/mlflow.db" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert main(["submit", "--address", "http://127.0.0.1:1", "--dry-run", *job]) == 0
    assert '"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"' in capsys.readouterr().out
    # credentials in a URI would be stored with the job (ray job list): never sent, even with --allow-ephemeral
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bot:s3cr3t@mlflow.example.com")
    assert main(["submit", "--address", "http://127.0.0.1:1", "--dry-run", "--allow-ephemeral", *job]) == 2
    captured = capsys.readouterr()
    assert "carries credentials" in captured.err and "s3cr3t" not in captured.err + captured.out


def test_bad_job_command_or_config_is_one_line_before_submitting(capsys) -> None:
    assert main(["submit", "--address", "http://127.0.0.1:1", "--", "train", "--bogus"]) == 2
    assert "job command (rllib-rec train): unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["submit", "--address", "http://127.0.0.1:1", "--", "train", "--config", DEBUG,
                 "--set", "run.output_dir=/shared", "--set", "dqn.lr=-1"]) == 2
    assert "dqn.lr: must be > 0.0" in capsys.readouterr().err


def _tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """A working dir like a user's after a few commands."""
    wd = tmp_path / "wd"
    for rel in ["rllib_rec/__init__.py", "configs/debug.yaml", "tests/data/obd/random_all.parquet",
                "exports/v1/model.tflite", "exports/v1/model.json", "logs.parquet", "train.log",
                "runs/debug-1/metrics.jsonl", "mlflow.db", "notes/run.log"]:
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text("x")
    return wd


def test_package_leaves_out_exports_data_and_logs(tmp_path) -> None:
    wd = _tree(tmp_path)
    with FakeJobServer() as server:
        out = _submit_cli("--address", server.address, "--working-dir", str(wd), "--no-wait", "--", "train",
                          "--config", str(ROOT / DEBUG), "--set", f"run.output_dir={tmp_path / 'runs'}")
        assert out.returncode == 0, out.stderr
        names = server.package_names()
    assert names == {"rllib_rec/__init__.py", "configs/debug.yaml", "tests/data/obd/random_all.parquet"}, names
    assert server.submitted[0]["runtime_env"]["env_vars"] == {"KERAS_BACKEND": "torch", "RLLIB_TEST_NO_TF_IMPORT": "1"}


def test_an_input_the_package_leaves_out_is_refused(tmp_path, capsys) -> None:
    wd = _tree(tmp_path)
    rc = main(["submit", "--address", "http://127.0.0.1:1", "--working-dir", str(wd), "--dry-run", "--", "train",
               "--config", str(ROOT / DEBUG), "--set", f"run.output_dir={tmp_path}", "--offline", "logs.parquet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--offline logs.parquet: not shipped with the job" in err and "'*.parquet'" in err, err


def test_a_file_vanishing_while_packing_is_retried_then_one_line(tmp_path, monkeypatch, capsys) -> None:
    wd = _tree(tmp_path)
    real_write = zipfile.ZipFile.write
    vanish = {"left": 1}

    def write(self, filename, arcname=None, *args, **kwargs):  # the file is deleted between listing and reading
        if str(arcname) == "configs/debug.yaml" and vanish["left"]:
            vanish["left"] -= 1
            raise FileNotFoundError(2, "No such file or directory", str(filename))
        return real_write(self, filename, arcname, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", write)
    job = ["--", "train", "--config", str(ROOT / DEBUG), "--set", f"run.output_dir={tmp_path / 'runs'}"]
    with FakeJobServer() as server:
        assert main(["submit", "--address", server.address, "--working-dir", str(wd), "--no-wait", *job]) == 0
        assert len(server.submitted) == 1  # a transient change: the retry packed it
        assert "retrying once" in capsys.readouterr().err
        vanish["left"] = 2
        assert main(["submit", "--address", server.address, "--working-dir", str(wd), "--no-wait", *job]) == 2
        err = capsys.readouterr().err
    assert len(server.submitted) == 1
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "cannot package the working dir" in errors[0] and "debug.yaml" in errors[0], err
