"""How the candidate-set agent scales with the catalog: N = 1k, 10k, 100k, 1M items, K = 100 candidates.

    python bench/scale.py [--items 1000 10000 100000 1000000] [--iterations 4] [--requests 2000]

Every catalog size runs in a fresh process, on the `large` experiment (configs/large.yaml) with only
``env.catalog.n_items`` changed (50 categories, K = 100, the same network), and reports:

* env steps/s of one env (median of 5 one-second rounds) and of a gymnasium SyncVectorEnv of 8 (3 s), uniform
  actions among the valid slots;
* training env steps/s at replay ratio 4 (``dqn.training_intensity``), measured over iterations 2.. (the
  first fills the replay buffer to ``dqn.learning_starts``), built with the project's one DQNConfig builder;
* bytes per replay transition: the numpy bytes one stored transition takes in the transition replay
  (observation and next observation, action, n-step reward, flags, behaviour probability, priority);
* the process's peak RSS (VmHWM: the driver, which here samples and learns; Ray's own daemons excluded);
* the .tflite size (float32 and fp16 weights), exported through the parity gate;
* `rllib-rec serve` HTTP latency for one request (K candidates, a full history): p50 and p99 over
  ``--requests`` sequential requests on one keep-alive connection.

Then one line on the optimiser: the learner's update time at N = 1M with one id-embedding row per item
(a dense 1M x D table, gradient and Adam state) against the hashed ``model.id_buckets`` rows.
Ratios are against the N = 1k row of the same run. Takes ~10-15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rllib_rec.tables import format_table

ROOT = Path(__file__).resolve().parent.parent
K = 100


def _overrides(n_items: int, out: Path, iterations: int) -> list[str]:
    return [f"env.catalog.n_items={n_items}", f"run.output_dir={out}", f"run.iterations={iterations}",
            "run.checkpoint_every=1000", "run.eval_episodes=10"]


def env_throughput(cfg: Any, seconds: float = 1.0, rounds: int = 5, vector_seconds: float = 3.0) -> tuple[float, float]:
    """Steps/s of one env (median of ``rounds`` rounds of ``seconds``: single rounds on a shared 2-core machine
    vary by a third) and of a SyncVectorEnv of 8 (one round of ``vector_seconds``)."""
    import gymnasium as gym
    from env_throughput import single_env  # bench/, the script's own folder: the same measuring loop

    from envs import ECommerceEnv

    single = float(np.median([single_env(cfg.env, seconds) for _ in range(rounds)]))
    rng = np.random.default_rng(0)
    vec = gym.vector.SyncVectorEnv([lambda: ECommerceEnv(cfg.env) for _ in range(8)])
    obs, _ = vec.reset(seed=0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < vector_seconds:
        for _ in range(50):
            actions = [int(rng.choice(np.flatnonzero(m))) for m in obs["candidate_mask"]]
            obs, *_ = vec.step(np.array(actions))
        steps += 50 * 8
    return single, steps / (time.perf_counter() - t0)


def train_and_export(cfg: Any, out: Path) -> dict[str, Any]:
    from rllib_rec.agent.algo import build_algo_config
    from rllib_rec.agent.runtime import init_ray, set_torch_threads, startup_objects_frozen
    from rllib_rec.deploy.export import export_checkpoint
    from rllib_rec.training.checkpoints import write_checkpoint
    from rllib_rec.training.online import iteration_metrics

    set_torch_threads(1)
    init_ray()
    algo = build_algo_config(cfg).build_algo()
    rows = []
    with startup_objects_frozen():  # as `rllib-rec train` does
        for _ in range(cfg.run.iterations):
            t0 = time.perf_counter()
            m = iteration_metrics(algo.train())
            rows.append((m["env_steps"], time.perf_counter() - t0))
    steps = rows[-1][0] - rows[0][0]
    rate = steps / sum(dt for _, dt in rows[1:])
    per_step = algo.local_replay_buffer.bytes_per_transition()
    ckpt = write_checkpoint(algo, out / "checkpoints", cfg.run.iterations, cfg, {"env_steps": rows[-1][0]})
    algo.stop()
    exp = export_checkpoint(str(ckpt), quantize=("none", "fp16"), out=str(out / "export"), track=False,
                            log=lambda s: None)
    return {"train_steps_per_s": rate, "bytes_per_transition": per_step,
            "tflite_bytes": exp.files["none"].stat().st_size, "tflite_fp16_bytes": exp.files["fp16"].stat().st_size,
            "model": str(exp.files["none"])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_latency(model: Path, cfg: Any, n: int) -> tuple[float, float]:
    """p50 and p99 ms of sequential /recommend requests (full history, K candidates) over one connection."""
    from envs import ECommerceEnv

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rllib_rec", "serve", "--model", str(model), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        env = ECommerceEnv(cfg.env)
        obs, _ = env.reset(seed=1)
        for _ in range(25):  # a history of 20 events
            obs, *_ = env.step(int(np.flatnonzero(obs["candidate_mask"])[0]))
        seen = obs["items"] > 0
        body = json.dumps({"items": (obs["items"][seen] - 1).tolist(), "events": obs["events"][seen].tolist(),
                           "candidates": obs["candidates"][obs["candidate_mask"] > 0].tolist(), "k": 10}).encode()
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().read() and True:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"scale: serve did not start for {model}") from None
                time.sleep(0.3)
        times = []
        for i in range(n + 50):
            t0 = time.perf_counter_ns()
            conn.request("POST", "/recommend", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"scale: /recommend answered {resp.status}")
            if i >= 50:  # warm-up excluded
                times.append((time.perf_counter_ns() - t0) / 1e6)
        return float(np.percentile(times, 50)), float(np.percentile(times, 99))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_size(n_items: int, iterations: int, requests: int) -> dict[str, Any]:
    from rllib_rec.agent.runtime import use_torch_keras_backend

    use_torch_keras_backend()
    from rllib_rec.config import load_config

    with tempfile.TemporaryDirectory(prefix=f"scale-{n_items}-") as tmp:
        cfg = load_config(ROOT / "configs" / "large.yaml", _overrides(n_items, Path(tmp), iterations))
        single, vector = env_throughput(cfg)
        res = {"n_items": n_items, "env_single": single, "env_vector": vector, **train_and_export(cfg, Path(tmp))}
        res["serve_p50_ms"], res["serve_p99_ms"] = serve_latency(Path(res.pop("model")), cfg, requests)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def optimizer_step_ms(n_items: int, id_buckets: int, repeats: int = 10) -> float:
    """Mean time of forward + backward + Adam at batch 128 for the large network at ``n_items``."""
    import torch

    from rllib_rec.agent.model import build_q_model
    from rllib_rec.agent.spec import QNetSpec
    from rllib_rec.config import load_config

    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "large.yaml", [f"env.catalog.n_items={n_items}",
                                                         f"model.id_buckets={id_buckets}"])
    spec = QNetSpec.from_experiment(cfg)
    model = build_q_model(spec)
    rng = np.random.default_rng(0)
    x = {"items": rng.integers(0, n_items + 1, (128, spec.history_length)), "events": rng.integers(0, 6, (128, 20)),
         "candidates": rng.integers(0, n_items, (128, K)), "candidate_mask": np.ones((128, K))}
    x = {k: torch.as_tensor(v).to(torch.int32) for k, v in x.items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        model(x)[:, :8].sum().backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.mean(times))


def _child(args: argparse.Namespace) -> None:
    if args.one is not None:
        print("RESULT " + json.dumps(one_size(args.one, args.iterations, args.requests)), flush=True)
    else:
        dense = optimizer_step_ms(1_000_000, 0)
        hashed = optimizer_step_ms(1_000_000, 16_384)
        print("RESULT " + json.dumps({"dense_ms": dense, "hashed_ms": hashed}), flush=True)


def _run_child(extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise SystemExit(f"scale: child {extra} failed: {' | '.join(tail)}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--iterations", type=int, default=4, help="training iterations of 2,000 env steps (>= 2)")
    ap.add_argument("--requests", type=int, default=2000, help="sequential HTTP requests for the serve latency")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None or args.optimizer:
        _child(args)
        return
    rows = []
    for n in args.items:
        print(f"N = {n:,} ...", file=sys.stderr, flush=True)
        rows.append(_run_child(["--one", str(n), "--iterations", str(args.iterations),
                                "--requests", str(args.requests)]))
    base = rows[0]
    table = [[f"{r['n_items']:,}", f"{r['env_single']:,.0f}", f"{r['env_vector']:,.0f}",
              f"{r['train_steps_per_s']:,.0f}", f"{r['train_steps_per_s'] / base['train_steps_per_s']:.2f}",
              f"{r['bytes_per_transition']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
              f"{r['tflite_bytes'] / 2**20:.1f}", f"{r['tflite_fp16_bytes'] / 2**20:.1f}",
              f"{r['serve_p50_ms']:.2f}", f"{r['serve_p99_ms']:.2f}"] for r in rows]
    print(format_table(["N items", "env steps/s", "vector x8", "train steps/s", "vs first", "bytes/transition",
                        "peak RSS MB", "tflite MiB", "fp16 MiB", "serve p50 ms", "p99 ms"], table))
    print(f"K = {K} candidates, replay ratio 4, batch 64, configs/large.yaml with env.catalog.n_items = N")
    opt = _run_child(["--optimizer"])
    print(f"optimiser step at N = 1,000,000 (forward + backward + Adam, batch 128): one id row per item "
          f"{opt['dense_ms']:.1f} ms, {16_384:,} hashed rows {opt['hashed_ms']:.1f} ms "
          f"({opt['dense_ms'] / opt['hashed_ms']:.1f}x)")


if __name__ == "__main__":
    main()
