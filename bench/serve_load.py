"""Bounded open-loop load run against `rllib-rec serve`: a fixed request rate with valid and invalid requests.

    python bench/serve_load.py [--model PATH.tflite] [--rate 200] [--duration 30] [--invalid 0.25]

Starts ``rllib-rec serve`` on a free 127.0.0.1 port in a subprocess; this process is the client. Without
``--model`` it first trains the debug config for one iteration and exports it (no MLflow registration)
into a temp dir, through the CLI. Requests are issued on a fixed schedule (request i at t0 + i/rate) by a
thread pool, whatever the latency of earlier ones (open loop), and latency is measured from the scheduled
time, so client-side queueing when the server falls behind counts against it. Each worker thread keeps one
keep-alive connection (reopened after a server ``Connection: close``, e.g. after a 413).

The mix: valid requests (random histories, sometimes candidates, random k) and, with probability
``--invalid``, one of: unknown item id, huge int id, wrong type, mismatched lengths, unknown event,
malformed JSON, an oversized body (sent with ``Expect: 100-continue``, as curl does for large bodies: the
server must answer 413 without asking for it). Valid ones must get 200 and invalid ones 4xx ("wrong
status" counts the rest).

Prints a table (requests sent, rate achieved, p50/p90/p99/max latency, 2xx/4xx/5xx/connection errors) and
exits 1 if there was any 5xx, connection error or wrong status, 2 if the server could not be started.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rllib_rec.tables import format_table

ROOT = Path(__file__).resolve().parent.parent
INVALID_KINDS = ("unknown-item", "huge-id", "wrong-type", "length-mismatch", "unknown-event", "malformed-json",
                 "oversized")


def _cli() -> list[str]:
    return [sys.executable, "-m", "rllib_rec"]


def export_debug_model(work: Path) -> Path:
    """Train configs/debug.yaml for one iteration and export it, through the CLI; returns the .tflite."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = work / "runs"
    subprocess.run([*_cli(), "train", "--config", str(ROOT / "configs" / "debug.yaml"), "--no-tracking",
                    "--set", "run.iterations=1", "--set", f"run.output_dir={runs}"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    ckpts = sorted(runs.glob("*/checkpoints/*"))
    if not ckpts:
        raise SystemExit(f"serve_load: training wrote no checkpoint under {runs}")
    out = work / "export"
    subprocess.run([*_cli(), "export", "--checkpoint", str(ckpts[-1]), "--out", str(out), "--no-mlflow"],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return out / "model.tflite"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    """`rllib-rec serve` in a subprocess; returns once GET /health answers 200 (exit 2 if it never does)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    with open(log, "wb") as f:  # the child keeps its own handle
        proc = subprocess.Popen([*_cli(), "serve", "--model", str(model), "--port", str(port)], cwd=ROOT,
                                env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    print(f"serve_load: server did not start: {log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
    raise SystemExit(2)


class Workload:
    """Draws requests: (kind, method, path, body bytes, extra headers, expected status class)."""

    def __init__(self, meta: dict[str, Any], invalid: float, seed: int) -> None:
        self.n = int(meta["n_items"])
        self.k = int(meta["n_candidates"])
        self.h = int(meta["history_length"])
        self.events = [k for k, v in meta["event_codes"].items() if int(v) > 0]
        self.invalid = invalid
        self.rng = random.Random(seed)  # drawn from the dispatcher thread only

    def _valid(self) -> dict[str, Any]:
        r = self.rng
        length = r.randint(0, self.h + 5)
        body: dict[str, Any] = {"items": [r.randrange(self.n) for _ in range(length)],
                                "events": [r.choice(self.events) for _ in range(length)]}
        if r.random() < 0.3 or self.n > self.k:  # required when the catalog does not fit the model's K slots
            body["candidates"] = r.sample(range(self.n), r.randint(1, min(self.n, self.k)))
        if r.random() < 0.7:
            body["k"] = r.randint(1, min(self.n, self.k))
        return body

    def draw(self) -> tuple[str, bytes, dict[str, str], int]:
        r = self.rng
        if r.random() >= self.invalid:
            return "valid", json.dumps(self._valid()).encode(), {}, 2
        kind = r.choice(INVALID_KINDS)
        body = self._valid()
        body["items"], body["events"] = body["items"] or [0], body["events"] or [self.events[0]]
        if kind == "unknown-item":
            body["items"][-1] = r.choice([-1, self.n, self.n + 100])
        elif kind == "huge-id":
            body["items"][0] = 10**30
        elif kind == "wrong-type":
            body[r.choice(["items", "k"])] = r.choice(["3", 1.5, True, None, {"a": 1}])
        elif kind == "length-mismatch":
            body["events"].append(self.events[0])
        elif kind == "unknown-event":
            body["events"][0] = r.choice(["klick", 0, 99])
        elif kind == "malformed-json":
            return kind, json.dumps(body).encode()[:-3], {}, 4
        elif kind == "oversized":
            # Only the headers go out; the server must refuse on Content-Length alone.
            return kind, b"", {"Content-Length": str(1 << 20), "Expect": "100-continue"}, 4
        return kind, json.dumps(body).encode(), {}, 4


class Worker(threading.local):
    conn: http.client.HTTPConnection | None = None


def _stale(conn: http.client.HTTPConnection) -> bool:
    # An idle keep-alive connection is readable only if the server closed it (EOF): reopen, do not fail.
    return conn.sock is None or bool(select.select([conn.sock], [], [], 0)[0])


def run_load(port: int, workload: Workload, rate: float, duration: float, concurrency: int,
             timeout: float) -> dict[str, Any]:
    local = Worker()
    results: list[tuple[float, str, str]] = []  # (latency s, outcome, kind); list.append is thread-safe
    n_total = int(round(rate * duration))

    def one(scheduled: float, kind: str, body: bytes, headers: dict[str, str], expect: int) -> None:
        try:
            if local.conn is None or _stale(local.conn):
                if local.conn is not None:
                    local.conn.close()
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                local.conn.connect()
            conn = local.conn
            if kind == "oversized":
                conn.putrequest("POST", "/recommend")
                conn.putheader("Content-Type", "application/json")
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders()
            else:
                conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            if resp.will_close:
                conn.close()
                local.conn = None
        except (OSError, http.client.HTTPException) as e:
            if local.conn is not None:
                local.conn.close()
            local.conn = None
            results.append((time.perf_counter() - scheduled, f"error:{type(e).__name__}", kind))
            return
        latency = time.perf_counter() - scheduled
        cls = status // 100
        outcome = f"{cls}xx" if cls in (2, 4, 5) else f"other:{status}"
        if cls != expect and cls != 5:
            outcome = f"wrong:{outcome}"
        results.append((latency, outcome, kind))

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
        t0 = time.perf_counter()
        for i in range(n_total):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, scheduled, *workload.draw())
        sent_s = time.perf_counter() - t0
    done_s = time.perf_counter() - t0
    return {"results": results, "n_total": n_total, "sent_s": sent_s, "done_s": done_s}


def _pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def summarise(run: dict[str, Any]) -> tuple[list[tuple[str, str]], dict[str, int]]:
    res = run["results"]
    lat = sorted(r[0] * 1000 for r in res)
    outcomes = [r[1] for r in res]
    counts = {
        "2xx": sum(o.endswith("2xx") for o in outcomes),
        "4xx": sum(o.endswith("4xx") for o in outcomes),
        "5xx": sum(o == "5xx" for o in outcomes),
        "errors": sum(o.startswith(("error:", "other:")) for o in outcomes),
        "wrong status": sum(o.startswith("wrong:") for o in outcomes),
    }
    rows = [
        ("requests sent", str(run["n_total"])),
        ("responses", str(len(res))),
        ("rate achieved req/s", f"{len(res) / run['done_s']:.1f}"),
        ("latency p50 ms", f"{_pct(lat, 0.50):.2f}"),
        ("latency p90 ms", f"{_pct(lat, 0.90):.2f}"),
        ("latency p99 ms", f"{_pct(lat, 0.99):.2f}"),
        ("latency max ms", f"{lat[-1] if lat else float('nan'):.2f}"),
        *((k, str(v)) for k, v in counts.items()),
    ]
    return rows, counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="the .tflite to serve (default: train + export the debug config)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    ap.add_argument("--invalid", type=float, default=0.25, help="fraction of invalid requests (default 0.25)")
    ap.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in s (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or not 0 <= args.invalid <= 1 or args.concurrency < 1:
        ap.error("--rate and --duration must be > 0, --invalid in [0, 1], --concurrency >= 1")

    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            print("no --model: training + exporting configs/debug.yaml (1 iteration) ...", file=sys.stderr)
            model = export_debug_model(work)
        meta = json.loads(model.with_suffix(".json").read_text())
        port = _free_port()
        server = start_server(model, port, work / "server.log")
        try:
            run = run_load(port, Workload(meta, args.invalid, args.seed), args.rate, args.duration,
                           args.concurrency, args.timeout)
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        server_log = (work / "server.log").read_text(errors="replace")

    rows, counts = summarise(run)
    print(f"serve_load: {model} ({meta.get('quantization')}, {meta['n_items']} items), invalid fraction "
          f"{args.invalid:g}; target {args.rate:g} req/s for {args.duration:g} s, {args.concurrency} client threads")
    print(format_table(["measure", "value"], rows))
    by_kind: dict[str, int] = {}
    for _, outcome, kind in run["results"]:
        if not outcome.endswith(("2xx", "4xx")) or outcome.startswith("wrong:"):
            by_kind[f"{kind} -> {outcome}"] = by_kind.get(f"{kind} -> {outcome}", 0) + 1
    for k, v in sorted(by_kind.items()):
        print(f"  unexpected: {k}: {v}")
    failed = counts["5xx"] or counts["errors"] or counts["wrong status"] or len(run["results"]) != run["n_total"]
    if not alive:
        print(f"serve_load: the server exited during the run:\n{server_log[-2000:]}", file=sys.stderr)
    return 1 if failed or not alive else 0


if __name__ == "__main__":
    sys.exit(main())
