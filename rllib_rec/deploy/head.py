"""``rllib-rec head``: a private Ray head on this machine, for ``rllib-rec submit``, that shares nothing
with any other Ray here and is stopped by PID.

A plain ``ray start --head`` takes Ray's fixed default ports (GCS 6379, dashboard 8265, job agent 52365,
client server 10001, ...) and its default temp dir ``/tmp/ray``: it collides with any other Ray on the
machine (a second head fails to start, a local ``ray.init()`` holds 52365 and the head's job agent cannot
bind, so every job gets "No available agent"), and ``ray stop`` stops *every* Ray instance on the machine.
:func:`start_head` gives the head free ports and its own temp dir, waits until its job agent
answers, and records the address in ``<temp dir>/rllib-rec-head.json``; :func:`stop_head` signals only
the processes that belong to that temp dir (SIGTERM, then SIGKILL after ``grace_s``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rllib_rec.errors import UsageError

__all__ = ["HEAD_FILE", "DEFAULT_TEMP_DIR", "start_head", "stop_head", "head_info", "head_pids"]

HEAD_FILE = "rllib-rec-head.json"
DEFAULT_TEMP_DIR = f"/tmp/rllib-rec-head-{os.getuid()}" if hasattr(os, "getuid") else "/tmp/rllib-rec-head"
# Ray puts Unix sockets under <temp dir>/session_<date>_<time>_<pid>/sockets/ (~64 characters more), and a
# socket path may not exceed 107 bytes.
MAX_TEMP_DIR_CHARS = 40
_PORT_FLAGS = ("port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
               "ray-client-server-port", "metrics-export-port", "runtime-env-agent-port")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:  # all bound at once, so they differ
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _temp_dir(temp_dir: str | os.PathLike[str]) -> Path:
    td = Path(temp_dir).expanduser().resolve()
    if len(str(td)) > MAX_TEMP_DIR_CHARS:
        raise UsageError(f"--temp-dir {td}: longer than {MAX_TEMP_DIR_CHARS} characters; Ray's socket paths under "
                         f"it would exceed the 107-byte limit (use a short one, e.g. /tmp/rr-head)")
    return td


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process this user can see."""
    procs: dict[int, tuple[int, str]] = {}
    root = Path("/proc")
    if root.is_dir():
        for d in root.iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            procs[int(d.name)] = (ppid, cmdline)
        return procs
    out = subprocess.run(["ps", "-axo", "pid=,ppid=,command="], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        pid, ppid, cmd = (line.split(None, 2) + [""])[:3]
        if pid.isdigit() and ppid.isdigit():
            procs[int(pid)] = (int(ppid), cmd)
    return procs


def head_pids(temp_dir: str | os.PathLike[str], gcs_port: int | None = None) -> list[int]:
    """PIDs of the head whose temp dir is ``temp_dir``: every process whose command line names a session
    directory of it (``<temp dir>/session_...``: GCS, raylet, dashboard, log monitor, autoscaler monitor) or
    its GCS port (``--address=<host>:<port>``: the Ray client server, which daemonises and names no temp dir;
    the port is read from the head's record unless given), and their descendants (the agents and workers,
    which rename themselves ``ray::...``). A shell that merely mentions the temp dir (``rllib-rec head stop
    --temp-dir ...``) is not one of them."""
    td = Path(temp_dir).expanduser().resolve()
    marker = str(td) + "/session_"
    if gcs_port is None and (td / HEAD_FILE).is_file():
        gcs_port = json.loads((td / HEAD_FILE).read_text())["ports"]["port"]
    gcs = re.compile(rf"--(?:gcs-)?address=\S+:{gcs_port}(?!\d)") if gcs_port else None
    procs = _processes()
    own = os.getpid()
    found = {pid for pid, (_, cmd) in procs.items()
             if pid != own and (marker in cmd or (gcs is not None and gcs.search(cmd)))}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != own:
                found.add(child)
                todo.append(child)
    return sorted(found)


def head_info(temp_dir: str | os.PathLike[str]) -> dict | None:
    """The record ``start_head`` wrote (address, ports), if a head of that temp dir is running."""
    td = Path(temp_dir).expanduser().resolve()
    f = td / HEAD_FILE
    if not f.is_file() or not head_pids(td):
        return None
    return json.loads(f.read_text())


def _wait_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.5)
    return False


def start_head(temp_dir: str | os.PathLike[str] = DEFAULT_TEMP_DIR, num_cpus: int | None = None,
               log: Callable[[str], None] = print, agent_timeout_s: float = 120.0) -> str:
    """Start a head on free ports with its own temp dir; return its job server address once its job
    agent listens. The head's processes inherit this environment (minus ``RAY_ADDRESS`` and
    ``MLFLOW_TRACKING_URI``: a job gets its tracking URI from ``submit``), so MLflow credentials exported
    here (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) reach the jobs."""
    td = _temp_dir(temp_dir)
    running = head_info(td)
    if running:
        raise UsageError(f"a head already runs in {td} (job server {running['address']}); stop it first: "
                         f"rllib-rec head stop --temp-dir {td}")
    if head_pids(td):
        raise UsageError(f"Ray processes of {td} are running, not started by `rllib-rec head start`; stop them "
                         f"first: rllib-rec head stop --temp-dir {td}")
    if num_cpus is not None and num_cpus < 1:
        raise UsageError(f"--num-cpus {num_cpus}: must be >= 1")
    td.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", *(f"--{k}={v}" for k, v in ports.items()),
           f"--temp-dir={td}", "--disable-usage-stats", *([f"--num-cpus={num_cpus}"] if num_cpus else [])]
    log("$ " + shlex.join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except FileNotFoundError:
        raise UsageError("`ray` not found: install the project (`make venv`) and run .venv/bin/rllib-rec") from None
    if out.returncode != 0:
        stop_head(td, log=lambda s: None, gcs_port=ports["port"])
        last = next((ln.strip() for ln in reversed(out.stderr.splitlines()) if ln.strip()), f"exit {out.returncode}")
        raise UsageError(f"`ray start --head` failed: {last[:300]}")
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    # Written before the wait: stop_head finds the client server by the GCS port recorded here.
    (td / HEAD_FILE).write_text(json.dumps({"address": address, "gcs_address": f"127.0.0.1:{ports['port']}",
                                            "ports": ports, "temp_dir": str(td)}, indent=2))
    if not _wait_port(ports["dashboard-agent-listen-port"], agent_timeout_s):
        stop_head(td, log=lambda s: None)
        raise UsageError(f"the head's job agent did not start within {agent_timeout_s:g}s (see "
                         f"{td}/session_latest/logs/dashboard_agent.log); the head was stopped")
    log(f"Ray head up: job server {address}, GCS 127.0.0.1:{ports['port']}, temp dir {td}")
    log(f"stop it with: rllib-rec head stop --temp-dir {td}   (not `ray stop`: that stops every Ray on this machine)")
    return address


def stop_head(temp_dir: str | os.PathLike[str] = DEFAULT_TEMP_DIR, log: Callable[[str], None] = print,
              grace_s: float = 15.0, gcs_port: int | None = None) -> list[int]:
    """SIGTERM the processes of the head in ``temp_dir``, SIGKILL what is left after ``grace_s``; returns
    their PIDs. Other Ray instances on the machine are not touched. Stopping no head is not an error."""
    td = Path(temp_dir).expanduser().resolve()
    pids = head_pids(td, gcs_port)
    if not pids:
        log(f"no Ray head runs in {td}")
        (td / HEAD_FILE).unlink(missing_ok=True)
        return []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and set(pids) & set(head_pids(td, gcs_port)):
            time.sleep(0.3)
        if not set(pids) & set(head_pids(td, gcs_port)):
            break
    (td / HEAD_FILE).unlink(missing_ok=True)
    log(f"stopped the Ray head in {td}: PIDs {' '.join(map(str, pids))}")
    return pids
