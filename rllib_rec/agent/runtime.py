"""Process-level set-up shared by every command that touches Ray: Keras backend, threads, ray.init.

``KERAS_BACKEND`` must be ``torch`` before anything imports ``ray.rllib`` (RLlib imports TensorFlow, which
imports Keras and freezes its backend). The driver gets it from :func:`use_torch_keras_backend`; Ray
workers get it exactly once, through the ``runtime_env`` given to ``ray.init`` here — or, under
``ray job submit``, through the job's runtime_env (Ray refuses to merge the same variable set twice).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from rllib_rec.console import held_native_stderr, verbose

__all__ = ["KERAS_ENV", "use_torch_keras_backend", "import_rllib_quietly", "init_ray", "set_torch_threads"]

KERAS_ENV = {"KERAS_BACKEND": "torch"}


def use_torch_keras_backend() -> None:
    """Select Keras' torch backend for this process; fail fast if Keras is already on another one."""
    current = os.environ.get("KERAS_BACKEND")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "torch":
            raise RuntimeError(
                f"Keras was imported with backend {keras.backend.backend()!r} before rllib_rec could select "
                "'torch'; set KERAS_BACKEND=torch in the environment"
            )
    elif current not in (None, "torch"):
        raise RuntimeError(f"KERAS_BACKEND={current!r}; training needs KERAS_BACKEND=torch")
    os.environ["KERAS_BACKEND"] = "torch"


def import_rllib_quietly() -> None:
    """Import TensorFlow (which ``ray.rllib`` imports) with its C++ start-up lines held back, and lower Ray's
    and RLlib's loggers to errors — unless verbose (:mod:`rllib_rec.console`). Call it right before the
    first ``ray.rllib`` import, after :func:`use_torch_keras_backend`; a no-op after the first call."""
    if verbose():
        return
    if "tensorflow" not in sys.modules:
        with held_native_stderr():  # absl prints its "cudart stub" notes before any flag can stop them
            import tensorflow  # noqa: F401
    _quiet_ray_loggers()


def _quiet_ray_loggers() -> None:
    import ray  # noqa: F401 — sets up the "ray" loggers (levels INFO, ray.rllib WARNING) on first import

    for name in ("ray", "ray.rllib", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def set_torch_threads(n: int) -> None:
    # One intra-op thread is fastest for this small net on 2 cores (2 threads under load were 10x slower).
    import torch

    torch.set_num_threads(n)


def init_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start or join Ray. Inside ``ray job submit`` join the cluster as the job's driver; with
    ``RAY_ADDRESS`` set join that cluster, shipping ``KERAS_ENV`` to its workers; otherwise start a
    private instance bound to loopback."""
    import ray

    if ray.is_initialized():
        return
    if not verbose():
        # Ray's own INFO/WARNING lines (token auth, "Started a local Ray instance", RLlib's notes) are hidden;
        # so is what Ray workers (trials, env runners) print. Errors still reach the driver through Ray
        # (a failed trial, a dead env runner) and the workers' logs stay in Ray's session directory.
        _quiet_ray_loggers()
        kwargs = {"logging_level": logging.ERROR, "log_to_driver": False, **kwargs}
    # Inside `ray job submit` the job supervisor hands the driver its runtime_env (which carries KERAS_ENV)
    # through this variable; Ray refuses a second runtime_env that sets the same variable.
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        ray.init(**kwargs)
        return
    if os.environ.get("RAY_ADDRESS"):  # a driver joining a running cluster (e.g. on the head node)
        ray.init(runtime_env={"env_vars": dict(KERAS_ENV)}, **kwargs)
        return
    # address="local": without it Ray joins whatever `ray start` cluster this machine last started
    # (/tmp/ray/ray_current_cluster) instead of starting the private instance a local run promises.
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": dict(KERAS_ENV)},
        **{"log_to_driver": True, **kwargs},
    )
