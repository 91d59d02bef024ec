"""``rllib-rec submit``: run any rllib-rec command as a Ray job (``ray job submit``) on a running cluster.

The job ships only what it needs (the source tree, without ``.git``, virtualenvs, runs, exports or MLflow
stores), sets ``KERAS_BACKEND=torch`` exactly once through the job's runtime_env (Ray refuses to merge the
same variable from two places, so ``rllib_rec.agent.runtime.init_ray`` adds nothing inside a job), and runs the
project's own interpreter, which must exist at the same path on the cluster (``cluster.yaml`` installs it).
Ray 2.60 clusters started with ``ray start``/``ray up`` use token auth: the CLI sets ``RAY_AUTH_MODE=token``
for the submission unless the environment already chooses.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rllib_rec.agent.runtime import KERAS_ENV

__all__ = ["RUNTIME_EXCLUDES", "job_runtime_env", "submit_command", "submit"]

RUNTIME_EXCLUDES = [
    ".git", ".venv", "venv", "runs", "ray_results", "mlruns", "mlartifacts", "*.db", "*.tflite",
    "**/__pycache__", ".pytest_cache", ".ruff_cache",
]


def job_runtime_env() -> dict:
    return {"env_vars": dict(KERAS_ENV), "excludes": list(RUNTIME_EXCLUDES)}


def submit_command(address: str, args: Sequence[str], python: str | None = None, working_dir: str = ".",
                   no_wait: bool = False, submission_id: str | None = None) -> list[str]:
    """The ``ray job submit`` argv that runs ``rllib-rec <args>`` as a job."""
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", working_dir,
           "--runtime-env-json", json.dumps(job_runtime_env())]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if no_wait:
        cmd.append("--no-wait")
    return [*cmd, "--", python or sys.executable, "-m", "rllib_rec", *args]


def submit(address: str, args: Sequence[str], python: str | None = None, working_dir: str = ".",
           no_wait: bool = False, dry_run: bool = False, submission_id: str | None = None) -> int:
    """Print the equivalent command, then (unless ``dry_run``) run it; returns its exit status."""
    if not args:
        raise ValueError("nothing to submit: give the rllib-rec command after --, e.g. -- train --config X")
    if not Path(working_dir).is_dir():
        raise ValueError(f"--working-dir {working_dir}: not a directory")
    cmd = submit_command(address, args, python, working_dir, no_wait, submission_id)
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    ray_bin = Path(sys.executable).with_name("ray")
    if ray_bin.exists():  # the venv's own ray CLI, whatever is on PATH
        cmd[0] = str(ray_bin)
    return subprocess.run(cmd, env=env).returncode
