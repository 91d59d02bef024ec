"""A real remote MLflow server (issue 18): `mlflow server` on loopback with a sqlite backend, proxied artifacts
(`--serve-artifacts`, artifact root in a tmp dir) and basic auth (`--app-name basic-auth`, MLflow 3.17: the
admin user is created on first start from `MLFLOW_AUTH_ADMIN_PASSWORD`; MLflow ships no default password).

`train` and `export` log to it through `MLFLOW_TRACKING_URI` + `MLFLOW_TRACKING_USERNAME`/`PASSWORD`; the
learning-curve PNG and the `.tflite` download through the server byte for byte; the runs record no local path
of the artifact store (artifact URIs are `mlflow-artifacts:/...`); wrong credentials are one line, exit 2,
before any training. The `run_dir`/`checkpoint_path`/`export_*_path` tags are paths on the machine that
trained or exported (provenance, like a git commit), not artifact locations, and stay; docs/reference.md.

Needs `mlflow[auth]` (Flask-WTF; in the dev extra). The server is stopped (its process group) at the end."""

from __future__ import annotations

import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """(uri, admin password, server dir) of a basic-auth MLflow server with proxied artifacts."""
    pytest.importorskip("flask_wtf", reason="mlflow[auth] (Flask-WTF) is in the dev extra")
    root = tmp_path_factory.mktemp("mlflow_server")
    password = secrets.token_urlsafe(18)
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(pathlib.Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--app-name", "basic-auth"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        # Warm up (the first authenticated request loads the auth app and both stores): the CLI's own
        # check allows the server MLFLOW_HTTP_REQUEST_TIMEOUT (10 s by default) per request.
        import mlflow

        with pytest.MonkeyPatch.context() as mp:
            for k, v in {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}.items():
                mp.setenv(k, v)
            mlflow.MlflowClient(uri).search_experiments()
        yield uri, password, root
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn/gunicorn workers
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllib_rec", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=900)


def _env(uri: str, user: str, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password,
               MLFLOW_HTTP_REQUEST_TIMEOUT="120")  # a loaded 2-core CI machine, not the product default
    return env


def test_wrong_credentials_are_one_line_before_training(mlflow_server, tmp_path) -> None:
    uri, password, _ = mlflow_server
    env = _env(uri, "admin", password + "-wrong")
    t0 = time.monotonic()
    out = _cli("train", "--config", DEBUG, "--set", f"run.output_dir={tmp_path}", env=env)
    assert out.returncode == 2, out.stderr[-3000:]
    (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert "refused the credentials (HTTP 401)" in line and password not in line, line
    assert not list(tmp_path.glob("debug-*")) and time.monotonic() - t0 < 60  # before Ray, before a run dir


def test_train_and_export_log_to_a_remote_server_with_auth(mlflow_server, tmp_path, monkeypatch) -> None:
    import mlflow

    uri, password, server_dir = mlflow_server
    env = _env(uri, "admin", password)
    t0 = time.monotonic()
    out = _cli("train", "--config", DEBUG, "--set", "run.iterations=1", "--set", "run.eval_episodes=5",
               "--set", f"run.output_dir={tmp_path / 'runs'}", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("debug-*")
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to a local store
    bad = _cli("export", "--checkpoint", str(run_dir), env=_env(uri, "admin", "not-" + password))
    (line,) = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert bad.returncode == 2 and "refused the credentials (HTTP 401)" in line, bad.stderr[-2000:]
    assert not (run_dir / "exports").exists()  # refused before converting anything
    exp_out = _cli("export", "--checkpoint", str(run_dir), env=env)
    assert exp_out.returncode == 0, exp_out.stderr[-3000:]
    tflite = run_dir / "exports" / "iter_000001" / "model.tflite"
    assert tflite.is_file()
    print(f"remote MLflow: train + export {time.monotonic() - t0:.0f}s")
    for text in (out.stdout, out.stderr, exp_out.stdout, exp_out.stderr):
        assert password not in text

    for k, v in _env(uri, "admin", password).items():
        if k.startswith("MLFLOW_"):
            monkeypatch.setenv(k, v)
    client = mlflow.MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "rllib-rec"]
    (run,) = client.search_runs([exp.experiment_id])
    assert exp.artifact_location.startswith("mlflow-artifacts:/"), exp.artifact_location
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    assert run.data.tags["run_dir"] == str(run_dir)  # provenance on the training machine (kept, see docstring)

    # The artifacts come back through the server, byte for byte.
    dl = tmp_path / "download"
    png = client.download_artifacts(run.info.run_id, "learning_curve.png", str(dl))
    assert pathlib.Path(png).read_bytes() == (run_dir / "learning_curve.png").read_bytes()
    model = client.download_artifacts(run.info.run_id, "tflite/iter_000001/none/model.tflite", str(dl))
    assert pathlib.Path(model).read_bytes() == tflite.read_bytes()
    (version,) = client.search_model_versions("name='rllib-rec-debug'")
    assert version.source.startswith(("runs:/", "mlflow-artifacts:/")), version.source

    # No local path of the server's stores is recorded anywhere in the run.
    recorded = [*run.data.params.values(), *run.data.tags.values(), run.info.artifact_uri, exp.artifact_location,
                version.source]
    assert not [v for v in recorded if str(server_dir) in v or v.startswith("file:")], recorded
    # ... and the artifact store really is the server's proxied root, not a path on this client.
    assert any((server_dir / "artifacts").rglob("learning_curve.png"))
