"""README.md's quick start, run as written: its first code block (train the debug config, export, serve) and
the client block after it (curl /recommend, /health), with only these substitutions:

* the commands run in a temporary directory holding a copy of ``configs/`` and a ``.venv`` link to the
  environment running the tests, so ``.venv/bin/rllib-rec`` and the relative ``runs/`` resolve there;
* ``serve`` gets ``--port`` with a free port, and the client commands' ``127.0.0.1:<port>`` follows it;
* ``serve`` starts in the background (``exec``'d at the end of the setup script) and is stopped afterwards;
* each curl gets ``-w`` to print its HTTP status (or, without curl, the same request goes through
  http.client).

So an edit of the README that breaks the quick start (a wrong flag, path or iteration number) fails here.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).parent.parent
STATUS_MARK = "\n@@status="
DEFAULT_PORT = 8000  # `rllib-rec serve` without --port


def _code_blocks(section: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell|console)?[ \t]*\n(.*?)^```", section, re.S | re.M)


def _quick_start() -> tuple[list[str], list[str]]:
    """(setup commands ending with the serve command, client commands), as logical lines."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"^## Quick start[ \t]*\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert m, "README.md has no '## Quick start' section"
    blocks = [_logical_lines(b) for b in _code_blocks(m.group(1))]
    i = next((k for k, b in enumerate(blocks) if any(" serve " in f" {_strip_comment(c)} " for c in b)), None)
    assert i is not None, "the quick start's code blocks have no `rllib-rec serve` command"
    setup = blocks[i]
    k = next(j for j, c in enumerate(setup) if " serve " in f" {_strip_comment(c)} ")
    assert k == len(setup) - 1, f"serve is not the last command of its block: {setup[k + 1:]}"
    client = next((b for b in blocks[i + 1:] if any(_strip_comment(c).startswith("curl ") for c in b)), None)
    assert client, "no client (curl) block after the serve block"
    return setup, client


def _logical_lines(block: str) -> list[str]:
    """Backslash continuations joined, blank and comment-only lines dropped."""
    text = re.sub(r"\\\n[ \t]*", " ", block)
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _strip_comment(line: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _curl_data(cmd: str) -> str:
    args = shlex.split(cmd)
    return next(args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-d", "--data", "--data-raw"))


def _request_like_curl(cmd: str) -> tuple[int, str]:
    """Without curl: the request a ``curl -s URL [-H H]... [-d DATA]`` line makes, through http.client."""
    args = shlex.split(cmd)[1:]
    url, headers, data = None, {}, None
    it = iter(args)
    for a in it:
        if a in ("-H", "--header"):
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif a in ("-d", "--data", "--data-raw"):
            data = next(it)
        elif a.startswith("http"):
            url = urlsplit(a)
        elif a not in ("-s", "--silent"):
            pytest.fail(f"no http.client equivalent for curl option {a!r} in {cmd!r}; install curl")
    assert url is not None, cmd
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("POST" if data is not None else "GET", url.path or "/", body=data, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the session started for the quick start (the server and anything left of it), then KILL."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_readme_quick_start_runs_as_written(tmp_path) -> None:
    setup, client = _quick_start()
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "rllib-rec").is_file():
        pytest.fail(f"no rllib-rec script next to {sys.executable}: pip install -e '.[dev,export,serve]'")
    (tmp_path / ".venv").symlink_to(bin_dir.parent, target_is_directory=True)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")

    serve = _strip_comment(setup[-1])
    m = re.search(r"--port[ =](\d+)", serve)
    readme_port = int(m.group(1)) if m else DEFAULT_PORT
    port = _free_port()
    for cmd in client:
        assert f"127.0.0.1:{readme_port}" in cmd, f"client command does not target serve's port {readme_port}: {cmd}"
    script = "set -e\n" + "\n".join(setup[:-1]) + f"\nexec {serve} --port {port}\n"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    log_path = tmp_path / "quickstart.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = t0 + 400
        while True:  # train + export run first, then the server comes up
            try:
                if _get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the quick start did not reach a serving server (exit {proc.poll()}, "
                            f"{time.monotonic() - t0:.0f} s):\n{log_path.read_text()[-4000:]}", pytrace=False)
            time.sleep(0.5)
        assert list((tmp_path / "runs").glob("debug-*")), "the run directory is not under the working directory"

        answers = []
        for cmd in client:
            cmd = _strip_comment(cmd).replace(f"127.0.0.1:{readme_port}", f"127.0.0.1:{port}")
            if shutil.which("curl") and cmd.startswith("curl "):
                out = subprocess.run(["bash", "-c", f"{cmd} -w '{STATUS_MARK}%{{http_code}}'"], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=30)
                assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stderr}"
                body, _, status = out.stdout.rpartition(STATUS_MARK)
                answers.append((cmd, int(status), body))
            elif cmd.startswith("curl "):
                answers.append((cmd, *_request_like_curl(cmd)))
            else:
                pytest.fail(f"unexpected client command (neither curl nor known): {cmd}")
        for cmd, status, body in answers:
            assert status == 200, f"{cmd}: HTTP {status}\n{body}"
        rec = next(json.loads(body) for cmd, _, body in answers if "/recommend" in cmd)
        sent = json.loads(_curl_data(next(c for c, _, _ in answers if "/recommend" in c)))
        assert len(rec["recommendations"]) == sent["k"], rec
        assert {r["item"] for r in rec["recommendations"]} <= set(sent["candidates"]), rec
        assert rec["history_used"] == len(sent["items"]), rec
    finally:
        _stop(proc)
    print(f"quick start: {time.monotonic() - t0:.0f} s to a stopped server", file=sys.stderr)
