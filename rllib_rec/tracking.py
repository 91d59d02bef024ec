"""MLflow tracking: where the store is, a fail-fast reachability check, and credential redaction.

Local default: ``sqlite:///<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts`` (MLflow
3.17's ``file://`` store refuses by default). A server is chosen with ``MLFLOW_TRACKING_URI``; credentials
come only from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``), never from files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["resolve_tracking_uri", "redact", "TrackingError", "connect", "local_store_hint", "use_tracking_uri"]

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^@/\s]+)@")
_SECRET_QUERY = re.compile(r"(?i)((?:token|password|secret|key|sig|signature)=)[^&\s]+")


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message is one line and contains no credentials."""


def redact(text: str) -> str:
    """Hide credentials in URIs: ``https://user:pw@host`` -> ``https://***@host``; ``?token=x`` -> ``?token=***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}***", text)


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


def local_store_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
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
        first = redact(" ".join(str(e).split()))[:300]
        raise TrackingError(f"MLflow tracking URI {redact(uri)} is unreachable: {type(e).__name__}: {first}") from None
