"""What a person at a terminal sees: third-party start-up chatter held back unless ``--verbose``, and the
progress of long work.

Quiet by default (the CLI calls :func:`configure` before any command runs): TensorFlow's C++ start-up
lines (printed by absl before any flag can stop them, so they are held back while TensorFlow is
imported: :func:`held_native_stderr`), Ray's and RLlib's INFO/WARNING lines (``init_ray`` lowers their
loggers and does not forward Ray workers' output), MLflow's INFO lines, Tune's own tables and Python
warnings. Errors still show, and rllib-rec's own lines are untouched. ``--verbose`` (or
``RLLIB_REC_VERBOSE=1``) shows everything; library use without the CLI changes nothing.

Progress of long work (train iterations, evaluation, sweeps, export) is a tqdm bar on a terminal; when
stderr is not a terminal (a log file, CI, a job) the same bar is written as one plain line every
``RLLIB_REC_PROGRESS_EVERY_S`` seconds (default 30), with tqdm's rate and ETA, and nothing for work that
ends sooner. :func:`ticking` refreshes a bar while one long call (``algo.train()``) runs, so elapsed time
keeps moving within seconds even when nothing can be counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["VERBOSE_ENV", "PROGRESS_ENV", "QUIET_ENV", "verbose", "configure", "held_native_stderr",
           "progress", "ticking", "echo"]

VERBOSE_ENV = "RLLIB_REC_VERBOSE"
PROGRESS_ENV = "RLLIB_REC_PROGRESS_EVERY_S"  # seconds between progress lines when stderr is not a terminal

# Environment of this process and of every child it starts (Ray workers, the export converter), unless
# the user set a variable already.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO/WARNING lines after start-up
    "GRPC_VERBOSITY": "ERROR",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's experiment banner and tables (the sweep prints its own progress)
    "PYTHONWARNINGS": "ignore",  # deprecation and user warnings of the libraries, in child processes
}
_QUIET_LOGGERS = ("mlflow", "alembic", "absl", "tensorflow", "py.warnings", "urllib3", "filelock")


def verbose() -> bool:
    """Whether third-party output is shown: yes unless the CLI (without ``--verbose``) said otherwise."""
    return os.environ.get(VERBOSE_ENV, "1") != "0"


def configure(show_all: bool) -> None:
    """Set this process (and its children) quiet, or verbose; called once by the CLI."""
    os.environ[VERBOSE_ENV] = "1" if show_all else "0"
    if show_all:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    warnings.simplefilter("ignore")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def held_native_stderr() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 (native code included) inside the block, unless
    verbose. If the block raises, what was held back is written out after all (it may say why)."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (a detached process): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode("utf-8", "replace"))


def _every_s() -> float:
    try:
        return max(0.1, float(os.environ.get(PROGRESS_ENV, "30")))
    except ValueError:
        return 30.0


class _Lines:
    """A tqdm ``file`` for streams that are not terminals: each refresh becomes one plain line (tqdm's
    carriage returns and cursor moves, which a log file shows as garbage, are dropped)."""

    _ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, s: str) -> None:
        text = self._ESCAPES.sub("", s).replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(total: float | None, desc: str, unit: str = "it", **kwargs: Any) -> Any:
    """A tqdm bar on stderr (see the module docstring): drawn in place on a terminal after a second, else
    a line every ``RLLIB_REC_PROGRESS_EVERY_S`` seconds; cleared when closed (the work's own result lines
    stay). Use as a context manager, ``update(n)`` as work completes."""
    from tqdm import tqdm

    stream = sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    every = _every_s()
    options: dict[str, Any] = dict(total=total, desc=desc, unit=unit, leave=False, file=stream if tty else _Lines(stream),
                                   mininterval=0.5 if tty else every, delay=1.0 if tty else every,
                                   dynamic_ncols=tty, ascii=not tty, smoothing=0.3)
    options.update(kwargs)
    bar = tqdm(**options)
    bar.tick_s = 1.0 if tty else every  # how often ticking() refreshes it
    return bar


@contextlib.contextmanager
def ticking(bar: Any) -> Iterator[Any]:
    """Refresh ``bar`` in the background while the block runs (every second on a terminal, every
    ``RLLIB_REC_PROGRESS_EVERY_S`` seconds otherwise), so its elapsed time moves during one long call."""
    every = getattr(bar, "tick_s", 1.0)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            if getattr(bar, "disable", True) or time.time() < bar.start_t + bar.delay:
                continue
            with bar.get_lock():
                bar.display()
                bar.last_print_t = time.time()  # so that close() knows the bar was shown and clears it

    thread = threading.Thread(target=tick, name="rllib-rec-progress", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join(timeout=5)


def echo(message: str, file: TextIO | None = None) -> None:
    """Print a line without tearing an active progress bar (tqdm.write); stdout by default."""
    from tqdm import tqdm

    tqdm.write(message, file=file or sys.stdout)
