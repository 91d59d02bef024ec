"""A sweep on a two-node Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``, as Ray's own
tests do): `rllib-rec tune` joins it through RAY_ADDRESS, like a driver on a real head node. Each node has
one CPU and each trial needs one, so two concurrent trials can only run on different nodes; the test checks
that Tune placed them on both (from the node id every trial reports) and that the best checkpoint still
comes out right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SWEEP = ROOT / "configs" / "sweep.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def test_sweep_spreads_trials_over_two_nodes(two_node_cluster, tmp_path: Path) -> None:
    head, (worker,) = two_node_cluster.head_node, list(two_node_cluster.worker_nodes)
    sets = ["run.iterations=2", "run.steps_per_iteration=200", "dqn.learning_starts=100", "run.checkpoint_every=1",
            "run.num_env_runners=0", "sweep.cpus_per_trial=1", "sweep.max_concurrent_trials=2",
            f"sweep.storage_path={tmp_path / 'sweeps'}", f"run.output_dir={tmp_path}"]
    cmd = [sys.executable, "-m", "rllib_rec", "tune", "--config", str(SWEEP), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "KERAS_BACKEND": "torch", "RAY_ADDRESS": two_node_cluster.address}
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]

    sweep_dir = tmp_path / "sweeps" / "debug-sweep"
    rows = {}
    for f in sorted(sweep_dir.glob("trial_*/result.json")):
        results = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        rows[results[-1]["trial_id"]] = results
    assert len(rows) == 4

    # Every trial reports the node it ran on; together they used both nodes of the cluster.
    nodes = {r["placement"]["trial_node"] for results in rows.values() for r in results}
    assert nodes == {head.node_id, worker.node_id}, (nodes, head.node_id, worker.node_id)
    assert "trials per Ray node:" in proc.stderr
    for node in (head.node_id, worker.node_id):
        assert node[:8] in proc.stderr

    # The winner is still the checkpoint with the best greedy validation return over all trials.
    scored = [(r["validation"]["return_mean"], t) for t, results in rows.items() for r in results
              if "validation" in r]
    best = json.loads((sweep_dir / "best.json").read_text())
    assert best["value"] == pytest.approx(max(scored)[0])
    assert best["trial"] in {t for v, t in scored if v == pytest.approx(best["value"])}
    from rllib_rec.training.checkpoints import checkpoint_config, resolve_checkpoint

    assert checkpoint_config(resolve_checkpoint(best["checkpoint"])).model.embed_dim == best["config"]["model.embed_dim"]
    print((sweep_dir / "trials.txt").read_text())
    print(f"two-node sweep: {time.time() - t0:.0f}s; " + next(x for x in proc.stderr.splitlines() if "per Ray node" in x))
