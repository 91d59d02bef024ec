"""Fault injection and a step watchdog for the simulator (gymnasium wrappers; no Ray).

``FaultInjection`` makes an env misbehave on purpose so that the training stack's fault tolerance can be
tested rather than hoped for: a fraction of episodes crash (``step`` raises :class:`InjectedEnvCrash`) or
hang (``step`` sleeps) at a random step. Which episodes fail is drawn from the wrapper's own generator,
so a run with the same seed fails at the same places.

``StepWatchdog`` turns a hung ``step``/``reset`` into an :class:`EnvStepTimeout` exception after a
deadline (``SIGALRM`` via ``setitimer``; only possible in a process's main thread, which is where
RLlib's local and remote EnvRunners step their envs). An exception is something the trainer can handle
(RLlib recreates the env and resamples); a hang would stall the run forever.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["EnvStepTimeout", "FaultInjection", "InjectedEnvCrash", "StepWatchdog"]


class InjectedEnvCrash(RuntimeError):
    """Raised by :class:`FaultInjection` on purpose."""


class EnvStepTimeout(TimeoutError):
    """A ``step`` or ``reset`` exceeded :class:`StepWatchdog`'s deadline."""


class FaultInjection(gym.Wrapper):
    """Crash or hang a fraction of episodes at a uniformly drawn step.

    ``crash_rate``/``hang_rate``: probability per episode; the failing step is uniform in
    ``[0, horizon)`` (``horizon`` defaults to the env's ``max_steps``), so an episode that ends earlier
    escapes its fault. Counters ``crashes``/``hangs`` say how many were injected by this instance.
    """

    def __init__(self, env: gym.Env, crash_rate: float = 0.0, hang_rate: float = 0.0, hang_seconds: float = 3600.0,
                 horizon: int | None = None, seed: int | None = None) -> None:
        super().__init__(env)
        for name, rate in (("crash_rate", crash_rate), ("hang_rate", hang_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if crash_rate + hang_rate > 1.0:
            raise ValueError(f"crash_rate + hang_rate must be <= 1, got {crash_rate + hang_rate}")
        self.crash_rate, self.hang_rate, self.hang_seconds = crash_rate, hang_rate, hang_seconds
        self.horizon = int(horizon or getattr(env.unwrapped, "max_steps", 100))
        self._rng = np.random.default_rng(seed)
        self._fault: str | None = None
        self._fault_step = -1
        self._t = 0
        self.crashes = self.hangs = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        u = self._rng.random()
        self._fault = "crash" if u < self.crash_rate else "hang" if u < self.crash_rate + self.hang_rate else None
        self._fault_step = int(self._rng.integers(self.horizon))
        self._t = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self._fault is not None and self._t == self._fault_step:
            fault, self._fault = self._fault, None
            if fault == "crash":
                self.crashes += 1
                raise InjectedEnvCrash(f"injected env crash at step {self._t} (crash_rate={self.crash_rate})")
            self.hangs += 1
            time.sleep(self.hang_seconds)
        self._t += 1
        return self.env.step(action)


class StepWatchdog(gym.Wrapper):
    """Raise :class:`EnvStepTimeout` from a ``step``/``reset`` that runs longer than ``timeout_s``.

    Outside the main thread (where signals cannot be delivered) the watchdog is inactive (``active`` is
    False) and the env runs unguarded.
    """

    def __init__(self, env: gym.Env, timeout_s: float) -> None:
        super().__init__(env)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.active = threading.current_thread() is threading.main_thread()
        self.timeouts = 0

    def _on_alarm(self, signum: int, frame: Any) -> None:
        self.timeouts += 1
        raise EnvStepTimeout(f"env step exceeded {self.timeout_s:g}s (run.env_step_timeout_s)")

    def _guarded(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if not self.active or threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        previous = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        return self._guarded(self.env.reset, **kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        return self._guarded(self.env.step, action)
