"""Fault-injection benchmark: inject each fault into a real `rllib-rec` run and print what it cost.

    python bench/faults.py [--only env-crash env-hang kill-mid-run kill-mid-checkpoint trial-error]

Every scenario runs the debug config through the CLI (as a user would), injects the fault, and reports
how often it fired, whether the run completed, and the work lost. ~4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rllib_rec.tables import format_table

ROOT = Path(__file__).parent.parent
DEBUG = str(ROOT / "configs" / "debug.yaml")
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "KERAS_BACKEND": "torch"}
Row = list[str]


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _train(out: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rllib_rec", "train", "--config", DEBUG,
                           *_sets("run.eval_episodes=5", f"run.output_dir={out}", *overrides)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=900)
    return proc, time.perf_counter() - t0


def _metrics(out: Path) -> list[dict]:
    (run_dir,) = [p for p in out.glob("debug-*") if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def env_crash(tmp: Path) -> Row:
    iters = 6
    proc, secs = _train(tmp, f"run.iterations={iters}", "faults.env_crash_rate=0.05")
    rows = _metrics(tmp) if proc.returncode == 0 else []
    failures = rows[-1]["env_step_failures"] if rows else float("nan")
    return ["env step raises (InjectedEnvCrash)", "5% of episodes",
            f"{'completed' if proc.returncode == 0 else 'FAILED'} {len(rows)}/{iters} iterations, "
            f"{failures:.0f} crashes survived", "in-flight episodes of that runner (<= 8 per crash)"]


def env_hang(tmp: Path) -> Row:
    iters = 3
    proc, secs = _train(tmp, f"run.iterations={iters}", "faults.env_hang_rate=0.05", "faults.env_hang_seconds=3600",
                        "run.env_step_timeout_s=1", "run.num_env_runners=1")
    rows = _metrics(tmp) if proc.returncode == 0 else []
    hangs = rows[-1]["env_step_failures"] if rows else float("nan")
    return ["env step hangs (1 h sleep), remote runner", "5% of episodes",
            f"{'completed' if proc.returncode == 0 else 'FAILED'} {len(rows)}/{iters} iterations in {secs:.0f}s, "
            f"{hangs:.0f} hangs cut by the 1 s watchdog", "1 s + in-flight episodes per hang"]


def _kill_and_resume(tmp: Path, wait_for: Callable[[], bool], delay: float, *extra: str) -> tuple[int, int, bool]:
    iters, every = 12, 2
    sets = _sets(f"run.iterations={iters}", f"run.checkpoint_every={every}", "run.steps_per_iteration=300",
                 "run.eval_episodes=5", f"run.output_dir={tmp}", *extra)
    proc = subprocess.Popen([sys.executable, "-m", "rllib_rec", "train", "--config", DEBUG, *sets], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not wait_for() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = max(r["iteration"] for r in _metrics(tmp))
    from rllib_rec.training.checkpoints import checkpoint_meta, latest_checkpoint

    (run_dir,) = [p for p in tmp.glob("debug-*") if p.is_dir()]
    resumed_from = checkpoint_meta(latest_checkpoint(run_dir))["iteration"]
    res = subprocess.run([sys.executable, "-m", "rllib_rec", "train", "--resume", str(run_dir), "--set",
                          f"run.output_dir={tmp}"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=900)
    finished = res.returncode == 0 and max(r["iteration"] for r in _metrics(tmp)) == iters
    return done, resumed_from, finished


def kill_mid_run(tmp: Path) -> Row:
    delay = random.Random(0).uniform(0.0, 5.0)
    done, resumed_from, ok = _kill_and_resume(
        tmp, lambda: bool(list(tmp.glob("debug-*/checkpoints/iter_000002"))), delay)
    return ["kill -9 of `rllib-rec train` (process group)", f"once, {delay:.1f}s after checkpoint 2",
            f"--resume {'completed' if ok else 'FAILED'} from iteration {resumed_from}",
            f"{done - resumed_from} iteration(s) redone (interval 2)"]


def kill_mid_checkpoint(tmp: Path) -> Row:
    done, resumed_from, ok = _kill_and_resume(
        tmp, lambda: bool(list(tmp.glob("debug-*/checkpoints/.tmp-iter_000004-*"))), 1.0,
        "faults.checkpoint_write_delay_s=4")
    return ["kill -9 while checkpoint 4 is being written", "once",
            f"partial checkpoint ignored and removed; --resume {'completed' if ok else 'FAILED'} from "
            f"iteration {resumed_from}", f"{done - resumed_from} iteration(s) redone"]


def trial_error(tmp: Path) -> Row:
    sets = _sets("run.iterations=2", "run.steps_per_iteration=200", "dqn.learning_starts=100",
                 "run.checkpoint_every=1", "sweep.scheduler=fifo", "sweep.max_failures=1",
                 "faults.trial_error_at_iteration=2", f"sweep.storage_path={tmp / 'sweeps'}", f"run.output_dir={tmp}")
    proc = subprocess.run([sys.executable, "-m", "rllib_rec", "tune", "--config", str(ROOT / "configs" / "sweep.yaml"),
                           *sets], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=900)
    retried = next((x.split("retried:")[1].strip() for x in proc.stderr.splitlines() if "trial errors retried:" in x), "")
    n = retried.count(" x")
    return ["Tune trial raises (sweep of 4)", "once per trial, at iteration 2",
            f"{'sweep completed, best.json written' if proc.returncode == 0 else 'FAILED'}; {n} trials retried",
            "1 iteration per trial (restored from its iteration-1 checkpoint)"]


SCENARIOS = {"env-crash": env_crash, "env-hang": env_hang, "kill-mid-run": kill_mid_run,
             "kill-mid-checkpoint": kill_mid_checkpoint, "trial-error": trial_error}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), help="scenarios to run")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        for name in args.only:
            t0 = time.perf_counter()
            d = Path(tmp) / name
            d.mkdir()
            rows.append(SCENARIOS[name](d))
            print(f"  {name}: {time.perf_counter() - t0:.0f}s", flush=True)
    # Markdown: the cells are sentences, and docs/benchmarks.md carries this table as is.
    print(format_table(["fault injected", "how often", "outcome", "work lost"], rows, markdown=True))
    return 0 if all("FAILED" not in r[2] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
