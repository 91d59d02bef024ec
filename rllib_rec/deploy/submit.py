"""``rllib-rec submit``: run any rllib-rec command as a Ray job on a running cluster.

Reads top to bottom as a submission goes:

1. **Where results live** (:func:`check_job_outputs`): a job runs in a temporary copy of the working dir,
   deleted with the job. A run directory, sweep, export or log that resolves inside it, or an MLflow sqlite
   store there, vanishes; so relative output paths and relative sqlite/file stores are refused in one line
   (``--allow-ephemeral`` to override). An input the package leaves out (``runs/``, ``*.parquet`` ...) is
   refused too: the job would not find it. The command's own config is validated here, before anything is
   sent.
2. **The job** (:func:`job_runtime_env`, :func:`submit_command`): the source tree without ``.git``,
   virtualenvs, runs, exports, stores, logs and data (:data:`RUNTIME_EXCLUDES`); ``KERAS_BACKEND=torch`` set
   exactly once through the job's runtime_env (Ray refuses to merge the same variable from two places, so
   ``rllib_rec.agent.runtime.init_ray`` adds nothing inside a job); the MLflow tracking URI, when one is
   given, as ``MLFLOW_TRACKING_URI`` (never credentials: the runtime_env is shown by ``ray job list`` and the
   dashboard, so they must come from the cluster's own environment); the project's interpreter, which must
   exist at the same path on the cluster (``cluster.yaml`` installs it). The equivalent ``ray job submit``
   command is printed.
3. **Submission** (:func:`submit`) through Ray's job SDK: the server must answer first; a head whose job
   agent is still starting is retried for ``agent_wait_s``; packaging that fails because a file changed or
   vanished while it was read is retried once; every known failure is one line (:class:`UsageError` or
   :class:`JobServerError`, exit 2). Then the job's logs are followed until it ends; the exit status is the
   job driver's.

Ray 2.60 clusters started with ``ray start``/``ray up`` use token auth: ``RAY_AUTH_MODE=token`` is set for the
submission unless the environment already chooses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

from rllib_rec.agent.runtime import KERAS_ENV
from rllib_rec.config import load_config
from rllib_rec.config.sweep import load_sweep_config
from rllib_rec.errors import RllibRecError, UsageError
from rllib_rec.training.tracking import redact

__all__ = ["RUNTIME_EXCLUDES", "JobServerError", "job_runtime_env", "submit_command", "check_job_outputs",
           "ephemeral_store", "submit"]

# gitignore-style patterns (Ray matches them against paths relative to the working dir; Ray also honours
# the tree's .gitignore and .rayignore). The last one ships the small test data (tests/data/obd) that
# `ope --obd tests/data/obd` reads, which "*.parquet" would drop.
RUNTIME_EXCLUDES = [
    ".git", ".venv", "venv", "runs", "exports", "ray_results", "mlruns", "mlartifacts", "*.db", "*.tflite",
    "*.parquet", "*.log", "*.tmp", "**/__pycache__", ".pytest_cache", ".ruff_cache", "!tests/data/**",
]
AUTH_MODE_DEFAULT = "token"


class JobServerError(RllibRecError, RuntimeError):
    """The Ray job server cannot be reached, refuses the job, or cannot take it yet."""


# -- 1. where results live ------------------------------------------------------------------------------

def ephemeral_store(uri: str) -> bool:
    """An MLflow tracking URI whose store is a file under the job's working dir (a relative sqlite or file
    path, an in-memory sqlite), so it vanishes with the job. Servers and absolute paths are durable."""
    if uri.startswith("sqlite:"):
        path = uri.removeprefix("sqlite:").removeprefix("//")  # sqlite:///rel -> /rel, sqlite:////abs -> //abs
        return not path.startswith("//") or path in ("//", "//:memory:")
    if uri.startswith("file:"):
        return not urlparse(uri).path.startswith("/") or not uri.startswith("file:/")
    if "://" in uri or uri.split(":")[0] in ("databricks", "databricks-uc", "uc"):
        return False  # http(s), databricks, postgresql, ... : a server
    return not Path(uri).is_absolute()  # a bare path


def _excluded_by_package(rel: str, working_dir: Path) -> str | None:
    """The pattern that keeps ``rel`` (a path relative to the working dir) out of the job's package, as Ray
    decides it: :data:`RUNTIME_EXCLUDES`, and separately the working dir's .gitignore and .rayignore."""
    from ray._private.thirdparty.pathspec import PathSpec

    sources = [RUNTIME_EXCLUDES]
    for ignore in (".gitignore", ".rayignore"):
        f = working_dir / ignore
        if f.is_file():
            sources.append([ln.strip() for ln in f.read_text(errors="replace").splitlines()
                            if ln.strip() and not ln.lstrip().startswith("#")])
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):  # an excluded directory drops everything under it
        prefix = "/".join(parts[:i])
        cands = [prefix, prefix + "/"] if i < len(parts) or (working_dir / prefix).is_dir() else [prefix]
        for patterns in sources:
            spec = PathSpec.from_lines("gitwildmatch", patterns)
            if any(spec.match_file(c) for c in cands):
                return next(p for p in reversed(patterns) if not p.startswith("!")
                            and any(PathSpec.from_lines("gitwildmatch", [p]).match_file(c) for c in cands))
    return None


def _check_inputs(ns: Any, working_dir: Path) -> None:
    """An argument naming an existing file or directory of the working dir that the package leaves out."""
    named = [(k, v) for k, vs in sorted(vars(ns).items()) if k not in ("func", "command")
             for v in (vs if isinstance(vs, list) else [vs])]  # a list: e.g. an ensemble's --checkpoint paths
    for key, value in named:
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            continue
        if not (working_dir / value).exists() or Path(value).parts[:1] == ("..",):
            continue
        pattern = _excluded_by_package(str(Path(value)), working_dir)
        if pattern:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} {value}: not shipped with the job (the package leaves out {pattern!r}); "
                             f"give an absolute path the cluster can read")


def _absolute(what: str, value: str | None, fix: str) -> str | None:
    if value is None or Path(value).is_absolute():
        return None
    return (f"{what} {value!r} is relative: the job would write it into Ray's temporary copy of the working "
            f"dir, deleted with the job; {fix}")


def _store_problem(uri: str | None) -> str | None:
    if uri is None or not ephemeral_store(uri):
        return None
    return (f"MLflow store {redact(uri)} is a file under the job's temporary working dir and would vanish with "
            f"it; use a tracking server (--tracking-uri http://...) or an absolute sqlite:////path on shared "
            f"storage")


def check_job_outputs(command: str, ns: Any, tracking_uri: str | None, working_dir: str | os.PathLike[str],
                      allow_ephemeral: bool = False) -> None:
    """Refuse (UsageError, one line) a job whose results would vanish with its working dir, or whose inputs
    are not shipped. ``ns``: the job's own arguments, parsed by rllib-rec's parser; ``tracking_uri``: the
    ``MLFLOW_TRACKING_URI`` the job gets (None: whatever the cluster's environment sets, else the default
    store under run.output_dir). Also validates the job's config, so a bad one fails here, not on the
    cluster."""

    wd = Path(working_dir)
    if tracking_uri and redact(tracking_uri) != tracking_uri:
        raise UsageError(f"tracking URI {redact(tracking_uri)} carries credentials, which would be stored in the "
                         "job's runtime_env (shown by `ray job list`); give them to the cluster's environment as "
                         "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD instead")
    _check_inputs(ns, wd)
    uri = getattr(ns, "tracking_uri", None) or tracking_uri
    tracked = not (getattr(ns, "no_tracking", False) or getattr(ns, "no_mlflow", False))
    problems: list[str | None] = []
    # The job runs in (a copy of) the working dir: its relative paths are relative to that.
    config = getattr(ns, "config", None)
    if config is not None and not Path(config).is_absolute():
        config = str(wd / config)
    out_fix = "--set run.output_dir=/shared/abs/path (storage every node of the cluster can reach)"
    if command == "train":
        if ns.resume:
            problems.append(_absolute("--resume", ns.resume, "give the run directory's absolute path"))
        else:
            cfg = load_config(config, ns.overrides)
            problems.append(_absolute("run.output_dir", cfg.run.output_dir, out_fix))
        if tracked:
            problems.append(_store_problem(uri))
    elif command == "tune":
        scfg = load_sweep_config(config, ns.overrides)
        sp = scfg.sweep.storage_path
        if "://" not in sp:
            problems.append(_absolute("sweep.storage_path", sp, "--set sweep.storage_path=s3://BUCKET/sweeps "
                                      "or an absolute path on shared storage"))
        if tracked:
            problems.append(_store_problem(uri) if uri else
                            _absolute("run.output_dir (its default MLflow store)", scfg.experiment.run.output_dir,
                                      out_fix + ", or --tracking-uri"))
    elif command == "export":
        for src in ns.checkpoint or [ns.best]:
            problems.append(_absolute("--checkpoint" if ns.checkpoint else "--best", src,
                                      "give the absolute path the cluster wrote it to"))
        problems.append(_absolute("--out", ns.out, "give an absolute path on shared storage"))
        if tracked:
            problems.append(_store_problem(uri))
    elif command == "collect":
        problems.append(_absolute("--out", ns.out, "give an absolute path on shared storage"))
    elif command == "demo":
        problems.append("demo keeps its run, MLflow store and model under runs/ of the job's temporary working "
                        "dir, deleted with the job; submit train and export with absolute paths instead")
    problem = next((p for p in problems if p), None)
    if problem and not allow_ephemeral:
        raise UsageError(f"{problem} (or --allow-ephemeral)")


# -- 2. the job ---------------------------------------------------------------------------------------

def job_runtime_env(tracking_uri: str | None = None) -> dict:
    env_vars = dict(KERAS_ENV)
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    return {"env_vars": env_vars, "excludes": list(RUNTIME_EXCLUDES)}


def submit_command(address: str, args: Sequence[str], python: str | None = None, working_dir: str = ".",
                   no_wait: bool = False, submission_id: str | None = None,
                   tracking_uri: str | None = None) -> list[str]:
    """The ``ray job submit`` argv equivalent to the submission (printed; the SDK does the work)."""
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", working_dir,
           "--runtime-env-json", json.dumps(job_runtime_env(tracking_uri))]
    if submission_id:
        cmd += ["--submission-id", submission_id]
    if no_wait:
        cmd.append("--no-wait")
    return [*cmd, "--", python or sys.executable, "-m", "rllib_rec", *args]


# -- 3. submission ------------------------------------------------------------------------------------

def _last_line(e: BaseException) -> str:
    """The cause of a job-server error: its body is often a whole server-side traceback; keep the last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return redact(lines[-1] if lines else type(e).__name__)[:300]


@contextmanager
def _quiet(*names: str):
    """Silence Ray loggers that print their own (multi-line) account of a failure we report in one line."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def _connect(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        with _quiet("ray.dashboard.modules.dashboard_sdk", "ray._private.authentication"):
            return JobSubmissionClient(address)
    except ConnectionError:
        raise JobServerError(f"no Ray job server answers at {address} (is the cluster up and its dashboard port "
                             f"forwarded, e.g. `ray dashboard cluster.yaml`? for a local one: `rllib-rec head "
                             f"start`)") from None
    except Exception as e:  # noqa: BLE001 — wrong scheme, version, auth ...: one line
        raise JobServerError(f"Ray job server at {address}: {_last_line(e)}") from None


def _submit_job(client: Any, entrypoint: list[str], runtime_env: dict, submission_id: str | None,
                agent_wait_s: float, log: Callable[[str], None]) -> str:
    """``client.submit_job``, retrying a head whose job agent is still starting and a package that changed
    while it was read; anything else is one line."""
    deadline = time.monotonic() + agent_wait_s
    packaging_retried = waiting_said = False
    while True:
        try:
            # packaging: "Issue with path ..." before re-raising (reported below in one line); working_dir:
            # "Directory '.git' is now ignored by default" (it is in our excludes anyway)
            with _quiet("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir",
                        "ray.dashboard.modules.dashboard_sdk"):
                return client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=runtime_env,
                                         submission_id=submission_id)
        except requests.exceptions.RequestException as e:
            raise JobServerError(f"lost the connection to the Ray job server while submitting: "
                                 f"{_last_line(e)}") from None
        except OSError as e:  # reading the working dir: a file vanished or changed while it was packed
            what = f"{e.filename}: {e.strerror or type(e).__name__}" if e.filename else _last_line(e)
            if not packaging_retried:
                packaging_retried = True
                log(f"packaging the working dir failed ({what}); retrying once")
                continue
            raise UsageError(f"cannot package the working dir: {what} (a file changed or vanished while it was "
                             f"read: stop what writes there, or exclude it in .rayignore)") from None
        except RuntimeError as e:
            cause = _last_line(e)
            if "No available agent" not in str(e):
                raise JobServerError(f"the Ray job server refused the job: {cause}") from None
            if time.monotonic() >= deadline:
                raise JobServerError(f"the Ray head has no job agent up after {agent_wait_s:g}s ({cause}); a head "
                                     f"that was just started may need longer (--agent-wait), otherwise see its "
                                     f"dashboard_agent.log") from None
            if not waiting_said:
                waiting_said = True
                log(f"the Ray head's job agent is not up yet; retrying for up to {agent_wait_s:g}s")
            time.sleep(2.0)


def _follow(client: Any, job_id: str) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    with _quiet("ray.dashboard.modules.job.sdk"):  # "WebSocket closed for job ..." at the end
        asyncio.run(tail())


def _outcome(client: Any, address: str, job_id: str, log: Callable[[str], None]) -> int:
    from ray.job_submission import JobStatus

    info = client.get_job_info(job_id)
    if info.status == JobStatus.SUCCEEDED:
        log(f"job {job_id} succeeded")
        return 0
    code = getattr(info, "driver_exit_code", None)
    # Ray's message repeats the last 20,000 characters of the logs just shown: only its first sentence
    message = " ".join(str(info.message or "").split()).split(", last available logs")[0][:200]
    log(f"job {job_id} {str(info.status).lower()}" + (f" (exit {code})" if code is not None else f": {message}")
        + f"; logs: ray job logs --address {address} {job_id}")
    return code if isinstance(code, int) and code > 0 else 1


def submit(address: str, args: Sequence[str], python: str | None = None, working_dir: str = ".",
           no_wait: bool = False, dry_run: bool = False, submission_id: str | None = None,
           tracking_uri: str | None = None, agent_wait_s: float = 60.0,
           log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> int:
    """Print the equivalent command, then (unless ``dry_run``) submit the job and, unless ``no_wait``,
    follow its logs; returns the exit status (the job driver's). ``check_job_outputs`` is the caller's."""
    if not args:
        raise UsageError("nothing to submit: give the rllib-rec command after --, e.g. -- train --config X")
    if not Path(working_dir).is_dir():
        raise UsageError(f"--working-dir {working_dir}: not a directory")
    if not address.startswith(("http://", "https://")):
        raise UsageError(f"--address {address}: give the job server's URL, e.g. http://127.0.0.1:8265")
    cmd = "$ " + redact(shlex.join(submit_command(address, args, python, working_dir, no_wait, submission_id,
                                                  tracking_uri)))
    if dry_run:
        print(cmd, flush=True)
        return 0
    os.environ.setdefault("RAY_AUTH_MODE", AUTH_MODE_DEFAULT)  # (the CLI sets it before Ray is first imported)
    client = _connect(address)  # before anything else is printed: a wrong address is one line
    print(cmd, flush=True)
    runtime_env = {**job_runtime_env(tracking_uri), "working_dir": str(Path(working_dir).resolve())}
    entrypoint = [python or sys.executable, "-m", "rllib_rec", *args]
    job_id = _submit_job(client, entrypoint, runtime_env, submission_id, agent_wait_s, log)
    log(f"submitted job {job_id} to {address}")
    if no_wait:
        log(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return 0
    try:
        _follow(client, job_id)
    except KeyboardInterrupt:
        log(f"stopped following job {job_id}; it keeps running (ray job stop --address {address} {job_id})")
        raise
    except Exception as e:  # noqa: BLE001 — the log stream broke; the job itself may be fine
        log(f"lost the log stream of job {job_id} ({_last_line(e)}); it may still be running: "
            f"ray job status --address {address} {job_id}")
        return 1
    return _outcome(client, address, job_id, log)
