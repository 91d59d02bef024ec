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


# ---------------------------------------------------------------------------------------------------
# The table of hostile inputs (docs/hostile-inputs.md) is generated from the tests that try them: each such
# test carries `@pytest.mark.hostile(kind, describe=..., rows=...)`, where `describe(**params)` turns one
# parametrised case into (input, outcome) and `rows` lists the cases of a test that loops over them itself.
# `pytest --collect-only --hostile-table PATH FILES` writes the table (`make hostile-doc`);
# tests/test_hostile_doc.py fails when the committed file is not what the tests say.
HOSTILE_KINDS = {"config": "Configuration (files and --set)", "CLI": "Command-line options",
                 "file": "Files (configs, logs, checkpoints, models, datasets)", "HTTP": "HTTP requests to `serve`"}


def short(value: object, limit: int = 70) -> str:
    """A one-line, clipped, Markdown-safe rendering of a test input."""
    text = value if isinstance(value, str) else repr(value)
    if isinstance(value, bytes):
        text = repr(value)
    text = " ".join(text.split())
    if len(text) > limit:
        text = f"{text[:limit - 12]}... ({len(value) if hasattr(value, '__len__') else len(text):,} long)"
    return text.replace("|", "\\|").replace("`", "'")


def pytest_addoption(parser) -> None:  # noqa: ANN001
    parser.addoption("--hostile-table", metavar="PATH", default=None,
                     help="write the Markdown table of hostile inputs (from @pytest.mark.hostile) to PATH")


def pytest_collection_finish(session) -> None:  # noqa: ANN001
    path = session.config.getoption("--hostile-table")
    if not path:
        return
    rows: dict[str, list[tuple[str, str, str]]] = {k: [] for k in HOSTILE_KINDS}
    seen: set[tuple[str, str]] = set()
    for item in session.items:
        mark = item.get_closest_marker("hostile")
        if mark is None:
            continue
        kind = mark.args[0]
        test = f"`{item.path.name}::{item.originalname}`"
        describe, static = mark.kwargs.get("describe"), mark.kwargs.get("rows")
        if describe is not None:
            params = getattr(getattr(item, "callspec", None), "params", {})
            found = [describe(**{k: v for k, v in params.items() if k in describe.__code__.co_varnames})]
        else:
            if (item.path.name, item.originalname) in seen:
                continue
            seen.add((item.path.name, item.originalname))
            found = list(static() if callable(static) else static)
        rows[kind] += [(what, outcome, test) for what, outcome in found]
    lines = ["# Hostile inputs", "",
             "Every hostile input the test suite tries, with the outcome it asserts. Generated from the tests "
             "(their `@pytest.mark.hostile` marks and parameters) by `make hostile-doc`; "
             "`tests/test_hostile_doc.py` fails when this file is out of step with them. \"One line\" means one "
             "`rllib-rec COMMAND: error: ...` line on stderr and exit status 2, with no traceback; HTTP errors "
             "are `{\"detail\": \"<one line>\"}`.", ""]
    for kind, title in HOSTILE_KINDS.items():
        if not rows[kind]:
            continue
        lines += [f"## {title}", "", "| # | input | outcome | test |", "|---|---|---|---|"]
        lines += [f"| {i} | {what} | {outcome} | {test} |" for i, (what, outcome, test) in enumerate(rows[kind], 1)]
        lines.append("")
    pathlib.Path(path).write_text("\n".join(lines), encoding="utf-8")
