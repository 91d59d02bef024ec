"""Process-level set-up shared by every command that touches Ray: Keras backend, threads, ray.init.

``KERAS_BACKEND`` must be ``torch`` before anything imports ``ray.rllib`` (RLlib imports TensorFlow, which
imports Keras and freezes its backend). The driver gets it from :func:`use_torch_keras_backend`; Ray
workers get it exactly once, through the ``runtime_env`` given to ``ray.init`` here — or, under
``ray job submit``, through the job's runtime_env (Ray refuses to merge the same variable set twice).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rllib_rec.console import held_native_stderr, verbose
from rllib_rec.errors import ResourceError, UsageError

__all__ = ["KERAS_ENV", "AUTOSCALER_ENV", "use_torch_keras_backend", "startup_objects_frozen", "import_rllib_quietly", "init_ray",
           "set_torch_threads", "cluster_can_grow", "run_cpu_need", "trial_cpu_need", "check_run_resources",
           "check_sweep_resources"]

# Environment of every process that trains (the driver and Ray's workers). RLLIB_TEST_NO_TF_IMPORT: RLlib then
# treats TensorFlow as absent (its torch stack needs none of it), so its metrics stop asking whether each
# logged number is a TF tensor: an isinstance check against a typing Protocol, ~60 us each, 8-15% of the
# sampling time. Keras and the export still import TensorFlow themselves.
KERAS_ENV = {"KERAS_BACKEND": "torch", "RLLIB_TEST_NO_TF_IMPORT": "1"}
# "1": the cluster has an autoscaler (skip the CPU check); "0": it has none (always check). Unset: see
# cluster_can_grow().
AUTOSCALER_ENV = "RLLIB_REC_AUTOSCALER"
# What algo.py's DQNConfig asks of Ray per actor: num_cpus_per_env_runner=1, and num_cpus_per_learner "auto",
# which is 1 CPU for a learner without a GPU (tests/test_resources.py checks these against RLlib's own count).
CPUS_PER_ENV_RUNNER = 1
CPUS_PER_LEARNER = 1
_started_local = False  # init_ray started a private Ray instance (which can never grow)


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
    os.environ.update(KERAS_ENV)
    # RLlib says "Not importing TensorFlow for test purposes" at each of its TF probes under that variable.
    logging.getLogger("ray.rllib.utils.framework").setLevel(logging.ERROR)


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


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """While training: the objects alive now (Ray, TensorFlow, Keras, RLlib and the built algorithm, ~800k)
    stay out of the cyclic garbage collector's full passes, which sampling's allocations otherwise trigger
    every few hundred milliseconds to walk all of them again. Given back to the collector afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


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
    global _started_local
    _started_local = False
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
    _started_local = True
    _start_local_ray(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": dict(KERAS_ENV)},
                     **{"log_to_driver": True, **kwargs})


LOCAL_RAY_TRIES = 3


def _start_local_ray(**kwargs: Any) -> None:
    """``ray.init(address="local")``, tried again when the node misses Ray's fixed 30 s start-up wait (a
    busy machine); after the last try, one line instead of Ray's traceback."""
    import ray

    for attempt in range(1, LOCAL_RAY_TRIES + 1):
        try:
            ray.init(address="local", **kwargs)
            return
        except Exception as e:  # noqa: BLE001 — Ray raises a bare Exception for this
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            if attempt == LOCAL_RAY_TRIES:
                raise ResourceError(f"a local Ray instance did not start in {LOCAL_RAY_TRIES} tries (Ray waits 30 s "
                                    f"for its node each time; is the machine overloaded?)") from None


# -- "does it fit?" -----------------------------------------------------------------------------------
# Ray waits, silently and for ever, for CPUs a cluster without an autoscaler will never have. These checks
# run right after init_ray, so a run or sweep that cannot be scheduled says so within seconds.

def cluster_can_grow() -> bool:
    """Whether an autoscaler may add nodes, so that asking for more CPUs than are there now is fine.

    ``RLLIB_REC_AUTOSCALER=1``/``0`` decides. Otherwise: a private instance started by :func:`init_ray` never
    grows; a cluster joined (``RAY_ADDRESS``, or a ``ray job submit`` driver) has an autoscaler when the
    cluster launcher's ``~/ray_bootstrap_config.yaml`` is on this node (``ray up`` puts it on the head, where
    job drivers run; Ray Tune uses the same test).
    """
    flag = os.environ.get(AUTOSCALER_ENV, "").strip().lower()
    if flag in ("1", "true", "yes"):
        return True
    if flag in ("0", "false", "no"):
        return False
    if flag:
        raise UsageError(f"{AUTOSCALER_ENV}={flag!r}: use 1 (the cluster autoscales) or 0 (it does not)")
    if _started_local:
        return False
    return Path("~/ray_bootstrap_config.yaml").expanduser().exists()


def run_cpu_need(cfg: Any) -> tuple[float, str]:
    """CPUs that Ray must reserve for a ``train`` run, and how they add up. The driver (algorithm, local env
    runner and local learner) is a plain process, not a Ray task, and reserves none."""
    r = cfg.run
    need = r.num_env_runners * CPUS_PER_ENV_RUNNER + r.num_learners * CPUS_PER_LEARNER
    return need, (f"{r.num_env_runners} env runner(s) x {CPUS_PER_ENV_RUNNER} + {r.num_learners} learner(s) x "
                  f"{CPUS_PER_LEARNER}; the driver reserves none")


def trial_cpu_need(cfg: Any, cpus_per_trial: float) -> tuple[float, str]:
    """CPUs of one Tune trial (its placement group): the trial's main process (which also hosts the learner
    when run.num_learners is 0, hence at least 1 CPU then), its env runners and its learners."""
    r = cfg.run
    main = cpus_per_trial if r.num_learners else max(cpus_per_trial, CPUS_PER_LEARNER)
    need = main + r.num_env_runners * CPUS_PER_ENV_RUNNER + r.num_learners * CPUS_PER_LEARNER
    return need, (f"main process {main:g} + {r.num_env_runners} env runner(s) x {CPUS_PER_ENV_RUNNER} + "
                  f"{r.num_learners} learner(s) x {CPUS_PER_LEARNER}")


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


def check_run_resources(cfg: Any) -> None:
    """ResourceError (one line: need, have, keys to change) when a ``train`` run cannot be scheduled."""
    need, how = run_cpu_need(cfg)
    if need == 0 or cluster_can_grow():
        return
    have = _cluster_cpus()
    if need > have:
        raise ResourceError(f"the run needs {need:g} CPUs from Ray ({how}) but the Ray cluster has {have:g} and "
                            f"no autoscaler: lower run.num_env_runners and/or run.num_learners (or give Ray more "
                            f"CPUs; {AUTOSCALER_ENV}=1 if the cluster does autoscale)")


def check_sweep_resources(cfg: Any, cpus_per_trial: float, max_concurrent_trials: int,
                          log: Callable[[str], None]) -> None:
    """ResourceError when not even one trial fits the cluster (Tune would wait for ever); one log line when
    fewer than ``sweep.max_concurrent_trials`` fit at once (Tune then queues the rest, which is slower but
    finishes, so that is not an error)."""
    need, how = trial_cpu_need(cfg, cpus_per_trial)
    if cluster_can_grow():
        return
    have = _cluster_cpus()
    if need > have:
        raise ResourceError(f"one sweep trial needs {need:g} CPUs ({how}) but the Ray cluster has {have:g} and "
                            f"no autoscaler: lower sweep.cpus_per_trial, run.num_env_runners and/or "
                            f"run.num_learners (or give Ray more CPUs; {AUTOSCALER_ENV}=1 if the cluster does "
                            f"autoscale)")
    fit = math.floor(have / need + 1e-9)
    if fit < max_concurrent_trials:
        log(f"note: sweep.max_concurrent_trials={max_concurrent_trials} x {need:g} CPUs per trial needs "
            f"{max_concurrent_trials * need:g} CPUs, the Ray cluster has {have:g}: at most {fit} trial(s) run at once")
