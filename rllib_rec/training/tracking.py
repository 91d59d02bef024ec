"""MLflow tracking: where the store is, a fail-fast reachability check, and credential redaction.

Local default: ``sqlite:///<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts`` (MLflow
3.17's ``file://`` store refuses by default). A server is chosen with ``MLFLOW_TRACKING_URI``; credentials
come only from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``), never from files.

Writes during a run go through :class:`RunLogger`, which never stops training: a write the store refuses is
queued, retried at the next iteration and at the end, and whatever is still unsent at the end is appended to
``<run_dir>/mlflow_unsent.jsonl`` (JSON Lines; format in :data:`UNSENT_FILE`'s comment).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rllib_rec.errors import TrackingError

__all__ = ["resolve_tracking_uri", "redact", "redact_values", "TrackingError", "connect", "local_store_hint",
           "use_tracking_uri", "RunLogger", "UNSENT_FILE"]

# <run_dir>/mlflow_unsent.jsonl: what an MLflow outage left unsent when the run ended. One JSON object per
# line, appended (a resumed run adds its own block): first {"kind": "header", "run_id", "tracking_uri"
# (redacted), "written_at", "records"}, then in the original order
#   {"kind": "metrics", "step": int, "timestamp": ms, "values": {name: float}}
#   {"kind": "params",  "values": {name: str}}            {"kind": "tags", "values": {name: str}}
#   {"kind": "artifact", "path": local file, "name": artifact file name}
#   {"kind": "status", "status": "FINISHED"|"FAILED", "end_time": ms}
# Enough to replay into the run with MlflowClient.log_batch / log_artifact / set_terminated.
UNSENT_FILE = "mlflow_unsent.jsonl"

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@")
# A secret-bearing parameter: a name that contains one of the words and starts a query (``?``), a
# parameter (``&``/``;``), a word (after whitespace) or the text, then ``=`` and the value. Dotted names
# (``db.password=``) count, except for the short words ``key``/``sig``: a config key path quoted in a
# message (``section.key=value``) is not a secret.
_SECRET_QUERY = re.compile(
    r"(?i)((?:(?<=[?&;\s])|^)(?:[\w.-]*(?:token|password|passwd|secret|signature|credential)|[\w-]*(?:key|sig))"
    r"[\w-]*=)[^&\s#]+")




def redact(text: str) -> str:
    """Hide credentials in URIs: ``https://user:pw@host`` -> ``https://***@host``; ``?token=x`` -> ``?token=***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", text)


def redact_values(data: Any, path: str = "") -> tuple[Any, list[str]]:
    """``redact`` every string inside nested dicts/lists; returns the copy and the key paths that changed.

    Config values are never meant to hold credentials, so any that do (a URL pasted into a name, a
    ``--set``) are hidden wherever the config is recorded: run directory, checkpoints, MLflow."""
    if isinstance(data, str):
        clean = redact(data)
        return clean, ([path or "<value>"] if clean != data else [])
    if isinstance(data, Mapping):
        out, changed = {}, []
        for k, v in data.items():
            out[k], c = redact_values(v, f"{path}.{k}" if path else str(k))
            changed += c
        return out, changed
    if isinstance(data, list):
        pairs = [redact_values(v, f"{path}[{i}]") for i, v in enumerate(data)]
        return [v for v, _ in pairs], [k for _, c in pairs for k in c]
    return data, []


def resolve_tracking_uri(output_dir: str | os.PathLike[str], explicit: str | None = None) -> str:
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def use_tracking_uri(uri: str) -> None:
    """Point this process's MLflow client at ``uri`` without touching the environment.

    ``mlflow.set_tracking_uri`` also writes ``os.environ["MLFLOW_TRACKING_URI"]``; every later subprocess,
    Ray worker or Ray job started from this process would then inherit one run's store as its default.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def mlflow_command() -> str:
    """How to run this interpreter's ``mlflow``: a virtualenv's bin is usually not on PATH."""
    exe = Path(sys.executable).parent / "mlflow"
    if exe.is_file() and shutil.which("mlflow") != str(exe):
        return shlex.quote(os.path.relpath(exe) if exe.is_relative_to(Path.cwd()) else str(exe))
    return "mlflow"


def local_store_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"{mlflow_command()} ui --backend-store-uri {uri} --host 127.0.0.1"
    return f"open {redact(uri)}"


def connect(uri: str, experiment: str, output_dir: str | os.PathLike[str]) -> str:
    """Point MLflow at ``uri``, check it answers, and return the experiment id (created if missing)."""
    if uri.startswith(("http://", "https://")):
        # Fail in seconds, not after minutes of retries, when the server is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    import mlflow

    use_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return exp.experiment_id
        kwargs: dict[str, Any] = {}
        if uri.startswith("sqlite:///"):
            kwargs["artifact_location"] = (Path(output_dir).resolve() / "mlartifacts").as_uri()
        return client.create_experiment(experiment, **kwargs)
    except Exception as e:  # noqa: BLE001 — any failure here means "cannot track"
        text = " ".join(str(e).split())
        http = uri.startswith(("http://", "https://"))
        if http and (re.search(r"\b401\b", text) or "UNAUTHENTICATED" in text):
            raise TrackingError(f"MLflow tracking server {redact(uri)} refused the credentials (HTTP 401): check "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
                                ) from None
        if http and (re.search(r"\b403\b", text) or "PERMISSION_DENIED" in text):
            raise TrackingError(f"MLflow tracking server {redact(uri)}: user {os.environ.get('MLFLOW_TRACKING_USERNAME', '?')!r} "
                                f"may not use experiment {experiment!r} (HTTP 403); ask its owner for EDIT permission "
                                "or choose run.experiment") from None
        if http and "Read timed out" in text:
            raise TrackingError(f"MLflow tracking server {redact(uri)} did not answer within "
                                f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s (a slow server: raise "
                                "MLFLOW_HTTP_REQUEST_TIMEOUT)") from None
        raise TrackingError(f"MLflow tracking URI {redact(uri)} is unreachable: {type(e).__name__}: "
                            f"{redact(text)[:300]}") from None


def _one_line(e: BaseException) -> str:
    return redact(f"{type(e).__name__}: {' '.join(str(e).split())}")[:300]


def _now_ms() -> int:
    return int(time.time() * 1000)


class RunLogger:
    """Every MLflow write of one training run, through a queue that survives a store outage.

    A write is queued and sent at once while the store answers. When a send fails, the failure is reported
    once (one line, redacted URI), later writes only queue, and :meth:`flush` (called once per iteration and
    by :meth:`close`) retries the queue in order. Whatever :meth:`close` still cannot send is appended to
    ``<run_dir>/mlflow_unsent.jsonl`` so no metric is silently dropped. ``RunLogger.disabled`` (for
    ``--no-tracking``) accepts the same calls and sends nothing. Param and tag values are redacted.
    """

    def __init__(self, client: Any, run_id: str | None, uri: str | None, run_dir: Path,
                 log: Callable[[str], None]) -> None:
        self._client = client
        self.run_id = run_id
        self.uri = uri
        self.run_dir = Path(run_dir)
        self._log = log
        self._queue: list[dict[str, Any]] = []
        self._down = False
        self._closed = False
        self.unsent_file: Path | None = None  # set by close() when records had to be written locally
        self.unsent_records = 0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    @classmethod
    def start(cls, uri: str, experiment_id: str, run_dir: Path, log: Callable[[str], None],
              run_id: str | None = None, run_name: str | None = None) -> RunLogger:
        """Create the MLflow run (or mark ``run_id`` RUNNING again on resume); TrackingError if that fails.

        The MlflowClient is used instead of ``mlflow.start_run``: the fluent run's exit would raise at the
        end of training if the store were down, and prints the run URL, credentials included, for http URIs.
        """
        import mlflow
        from mlflow.tracking.context.registry import resolve_tags

        client = mlflow.MlflowClient(uri)
        try:
            if run_id:
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags({})).info.run_id
        except Exception as e:  # noqa: BLE001 — any failure here means "cannot track this run"
            what = f"run {run_id}" if run_id else "a run"
            raise TrackingError(f"MLflow tracking URI {redact(uri)}: cannot start {what}: "
                                f"{_one_line(e)}") from None
        return cls(client, run_id, uri, run_dir, log)

    @classmethod
    def disabled(cls, run_dir: Path, log: Callable[[str], None], run_id: str | None = None) -> RunLogger:
        return cls(None, run_id, None, run_dir, log)

    # -- writes ---------------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        # The timestamp is taken now, so a metric sent after an outage keeps the time it was measured.
        self._put({"kind": "metrics", "step": int(step), "timestamp": _now_ms(),
                   "values": {k: float(v) for k, v in metrics.items()}})

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._put({"kind": "params", "values": {k: redact(str(v)) for k, v in params.items()}})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._put({"kind": "tags", "values": {k: redact(str(v)) for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Upload the file at ``path`` (as it is when sent) under ``name`` (default: its own name)."""
        p = Path(path).resolve()
        self._put({"kind": "artifact", "path": str(p), "name": name or p.name})

    def _put(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._queue.append(record)
        if not self._down:  # during an outage only flush() retries: one attempt per iteration, not per write
            self.flush()

    # -- sending --------------------------------------------------------------------------------------
    def _send(self, r: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind, c = r["kind"], self._client
        if kind == "metrics":
            metrics = [Metric(k, v, r["timestamp"], r["step"]) for k, v in r["values"].items()]
            c.log_batch(self.run_id, metrics=metrics)
        elif kind == "params":
            c.log_batch(self.run_id, params=[Param(k, v) for k, v in r["values"].items()])
        elif kind == "tags":
            c.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in r["values"].items()])
        elif kind == "artifact":
            if Path(r["path"]).name == r["name"]:
                c.log_artifact(self.run_id, r["path"])
            else:  # MLflow names an artifact after its file: upload a copy with the wanted name
                with tempfile.TemporaryDirectory() as tmp:
                    shutil.copyfile(r["path"], Path(tmp) / r["name"])
                    c.log_artifact(self.run_id, str(Path(tmp) / r["name"]))
        elif kind == "status":
            # set_terminated prints the run URL (userinfo included) to stdout for http stores: silence it.
            before = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
            try:
                c.set_terminated(self.run_id, status=r["status"], end_time=r["end_time"])
            finally:
                if before is None:
                    os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
                else:
                    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = before

    def flush(self) -> bool:
        """Send the queue in order, stopping at the first failure; True when nothing is left unsent."""
        if not self.enabled:
            return True
        sent = 0
        while self._queue:
            try:
                self._send(self._queue[0])
            except Exception as e:  # noqa: BLE001 — any store/network error: keep the record, keep training
                if not self._down:
                    self._down = True
                    self._log(f"MLflow tracking at {redact(self.uri or '')} failed ({_one_line(e)}); training "
                              f"goes on, unsent records are retried every iteration and kept in "
                              f"{self.run_dir / UNSENT_FILE} if still unsent at the end")
                return False
            self._queue.pop(0)
            sent += 1
        if self._down:
            self._down = False
            self._log(f"MLflow tracking at {redact(self.uri or '')} is back: sent {sent} queued record(s)")
        return True

    def close(self, status: str = "FINISHED") -> None:
        """Mark the run ``status``, send the queue, and write whatever still is not to the local file."""
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        self._queue.append({"kind": "status", "status": status, "end_time": _now_ms()})
        if self.flush():
            return
        self.unsent_file = self.run_dir / UNSENT_FILE
        self.unsent_records = len(self._queue)
        header = {"kind": "header", "run_id": self.run_id, "tracking_uri": redact(self.uri or ""),
                  "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "records": self.unsent_records}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.unsent_file.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in [header, *self._queue]))
        self._queue.clear()
        self._log(f"MLflow still failing at the end: {self.unsent_records} record(s) not sent, written to "
                  f"{self.unsent_file} (replayable into run {self.run_id})")

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
            return
        try:
            self.close("FAILED")
        except Exception:  # noqa: BLE001 — never hide the error that ended the run behind a secondary one
            pass
