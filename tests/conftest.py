import os

# Keras freezes its backend on first import, and ray.rllib imports TensorFlow -> Keras.
os.environ.setdefault("KERAS_BACKEND", "torch")


# ---------------------------------------------------------------------------------------------------
# Shared by tests/test_export.py and tests/test_serve.py: one freshly trained debug checkpoint and one
# export of it in every quantisation mode (session-scoped: training + conversion take ~35 s together).
import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).parent.parent
# Wide enough that dynamic-int8 has weight tensors >= 1024 elements to quantise (32 x 64 kernels).
EXPORT_TRAIN_OVERRIDES = ["run.iterations=1", "run.eval_episodes=5", "model.embed_dim=32", "model.ff_dim=64",
                          "model.mlp_hidden=[64]"]


@pytest.fixture(scope="session")
def trained_debug(tmp_path_factory):
    """A 1-iteration debug run (TrainResult); its MLflow store is <output_dir>/mlflow.db."""
    from rllib_rec.training.train import train

    out = tmp_path_factory.mktemp("export_runs")
    res = train(str(ROOT / "configs" / "debug.yaml"), [f"run.output_dir={out}", *EXPORT_TRAIN_OVERRIDES],
                log=lambda s: None)
    yield res
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def exported(trained_debug, tmp_path_factory):
    """`rllib-rec export --quantize none fp16 dynamic-int8` of the trained checkpoint, run through the CLI."""
    from rllib_rec.cli import main

    out = tmp_path_factory.mktemp("exports") / "debug"
    rc = main(["export", "--checkpoint", str(trained_debug.checkpoint), "--quantize", "none", "fp16",
               "dynamic-int8", "--out", str(out)])
    assert rc == 0
    return out


def start_serve(cmd: list[str], env: dict[str, str]):  # noqa: ANN201 — (port, Popen)
    """Start ``cmd`` (an `rllib-rec serve ...` command line) on a free loopback port and wait for /health.

    Shared by the serving tests; the caller terminates the returned process."""
    import http.client
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*cmd, "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return port, proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[0][-2000:]}")
        time.sleep(0.2)
