"""The errors a user can cause, under one base class: the CLI prints any of them as one line and exits 2.

Each message is a single line that names the cause (file, key, value). Everything else that escapes is a
bug, and shows as one.
"""

from __future__ import annotations

__all__ = [
    "RllibRecError",
    "ConfigError",
    "UsageError",
    "CheckpointError",
    "TrackingError",
    "LogSchemaError",
    "OBDError",
    "ExportError",
    "ServeError",
    "RequestError",
    "ResourceError",
]


class RllibRecError(Exception):
    """Base of every user-facing error of rllib-rec."""


class ConfigError(RllibRecError, ValueError):
    """A configuration value is missing, unknown, mistyped or out of range.

    ``str(err)`` is a single line: ``<source>: <key.path>: <problem>``.
    """

    def __init__(self, path: str, problem: str, source: str | None = None) -> None:
        self.path, self.problem, self.source = path, problem, source
        parts = [p for p in (source, path) if p]
        super().__init__(": ".join([*parts, problem]))

    def with_source(self, source: str) -> ConfigError:
        return ConfigError(self.path, self.problem, source)


class UsageError(RllibRecError):
    """A command-line option is missing, contradictory or out of range."""


class CheckpointError(RllibRecError, RuntimeError):
    """A checkpoint or run directory is missing, incomplete or unreadable."""


class TrackingError(RllibRecError, RuntimeError):
    """The MLflow tracking store cannot be used (the message carries no credentials)."""


class LogSchemaError(RllibRecError, ValueError):
    """An interaction log is missing, unreadable or not in the log schema."""


class OBDError(RllibRecError, ValueError):
    """Open Bandit Dataset files are missing or malformed."""


class ExportError(RllibRecError, RuntimeError):
    """An export failed: bad source, existing target, conversion or parity failure."""


class ServeError(RllibRecError, RuntimeError):
    """A model cannot be served: missing or invalid file or sidecar, or a bad option."""


class RequestError(RllibRecError, ValueError):
    """A recommendation request is invalid; the message is the HTTP 422 ``detail``."""


class ResourceError(RllibRecError, RuntimeError):
    """The Ray cluster has fewer CPUs than a run or sweep trial needs, and no autoscaler to add them, or a
    local Ray instance could not start."""
