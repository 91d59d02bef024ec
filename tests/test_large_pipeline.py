"""The pipeline on the `large` preset (10,000 items, K = 100 candidates per step), end to end through the CLI.

Fast: `collect` and `ope` on a short log of `large`, a log of `xl` (1,000,000 items) whose rows take the bytes of
`large`'s, and logs that do not fit an experiment refused in one line. Slow (`-m slow`): `train --offline` on the
`large` log, then `ope` and `collect` with the checkpoint it wrote.

Shared through module-scoped fixtures, so that further stages (train, evaluate, tune, export, serve) can join:
``large`` (a work directory, configs/large.yaml with short-run overrides, a log collected on it) and
``large_offline_run`` (the run directory of an offline-trained agent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from envs import OBS_KEYS
from rllib_rec.cli import main
from rllib_rec.offpolicy.logs import COLUMNS, log_arrays, read_logs, read_metadata

ROOT = Path(__file__).parent.parent
LARGE = ROOT / "configs" / "large.yaml"
# A short run of `large`: 10-step episodes, 2 iterations of 200 env steps (25 updates each at replay ratio 4
# and batch 32), 5 evaluation episodes.
SHORT_RUN = ("env.max_steps=10", "run.iterations=2", "run.steps_per_iteration=200", "run.eval_episodes=5",
             "run.checkpoint_every=1", "dqn.train_batch_size=32", "dqn.learning_starts=200")
LOGGED_EPISODES = 40


def _sets(overrides: tuple[str, ...] | list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@dataclass
class LargeShop:
    """A work directory, the `large` config with :data:`SHORT_RUN`, and an epsilon-greedy(history) log of it."""

    dir: Path
    logs: Path
    config: str = str(LARGE)
    overrides: tuple[str, ...] = SHORT_RUN

    def config_args(self, *extra: str) -> list[str]:
        """``--config large.yaml --set ...`` for the short run, plus ``extra`` overrides."""
        return ["--config", self.config, *_sets((*self.overrides, *extra))]


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> LargeShop:
    d = tmp_path_factory.mktemp("large")
    logs = d / "logs.parquet"
    rc = main(["collect", "--config", str(LARGE), *_sets(SHORT_RUN), "--policy", "epsilon-greedy", "--epsilon", "0.3",
               "--episodes", str(LOGGED_EPISODES), "--seed", "7", "--out", str(logs)])
    assert rc == 0
    return LargeShop(d, logs)


def _fixed_width_bytes_per_row(path: Path) -> float:
    """Arrow bytes per row of the fixed-width columns (validity bitmaps included, so a fraction of a byte depends
    on the row count)."""
    table = read_logs(path)
    fixed = [c for c in COLUMNS if c not in ("policy_id", "behaviour_dist")]
    return sum(table.column(c).nbytes for c in fixed) / table.num_rows


# ------------------------------------------------------------------------------------------------ fast


def test_collect_on_large_logs_candidates_not_the_catalog(large: LargeShop) -> None:
    meta = read_metadata(large.logs)
    assert (meta["schema_version"], meta["n_items"], meta["n_candidates"], meta["history_length"]) == (2, 10_000, 100, 20)
    a = log_arrays(read_logs(large.logs))
    assert len(np.unique(a.episode_id)) == LOGGED_EPISODES and a.obs["candidates"].shape == (a.n_rows, 100)
    rows = np.arange(a.n_rows)
    assert (a.item == a.obs["candidates"][rows, a.action]).all() and a.obs["candidate_mask"][rows, a.action].all()
    assert a.item.max() >= 100  # items, not slots: ids from the whole catalog
    np.testing.assert_allclose(a.behaviour_dist.sum(axis=1), 1.0, atol=1e-6)


def test_ope_on_large(large: LargeShop, capsys) -> None:
    for policy in ("history", "random"):
        assert main(["ope", "--logs", str(large.logs), "--policy", policy, "--n-bootstrap", "20"]) == 0
        out = capsys.readouterr().out
        assert f"target: {policy}" in out
        rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
        assert {"IPS", "SNIPS", "DM", "DR", "PDIS (episode return)"} <= set(rows)


def test_xl_rows_take_the_bytes_of_large_rows(large: LargeShop, tmp_path: Path, capsys) -> None:
    """1,000,000 items, the same K = 100 and history: the same bytes per logged row as 10,000 items; ope runs."""
    xl = tmp_path / "xl.parquet"
    assert main(["collect", "--config", str(LARGE), "--set", "env.preset=xl", "--set", "env.max_steps=5", "--policy",
                 "random", "--episodes", "3", "--out", str(xl)]) == 0
    meta = read_metadata(xl)
    assert (meta["n_items"], meta["n_candidates"]) == (1_000_000, 100)
    assert log_arrays(read_logs(xl)).obs["candidates"].max() >= 10_000
    assert read_logs(xl).schema.equals(read_logs(large.logs).schema, check_metadata=False)  # no column sized by N
    per_row = _fixed_width_bytes_per_row(xl), _fixed_width_bytes_per_row(large.logs)
    assert abs(per_row[0] - per_row[1]) < 1 and per_row[0] < 1_500, per_row  # ~1,400 B: 4 x 20 x 4 + 2 x 100 x 5 + ...
    capsys.readouterr()
    assert main(["ope", "--logs", str(xl), "--policy", "history", "--n-bootstrap", "20"]) == 0
    assert "15 rows, 3 episodes" in capsys.readouterr().out


@pytest.mark.parametrize(("overrides", "problem"), [
    (["env.preset=default"], "logs have 10000 items but env.catalog.n_items is 30"),
    (["env.n_candidates=50"], "logs have 100 candidate slots per step but the env offers 50"),
    (["env.history_length=8"], "logs have history length 20 but env.history_length is 8"),
])
def test_offline_refuses_a_log_that_does_not_fit(large: LargeShop, tmp_path: Path, capsys, overrides: list[str],
                                                 problem: str) -> None:
    out = tmp_path / "runs"
    rc = main(["train", *large.config_args(f"run.output_dir={out}", *overrides), "--offline", str(large.logs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and problem in err[0] and str(large.logs) in err[0], err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ slow


@pytest.fixture(scope="module")
def large_offline_run(large: LargeShop) -> Path:
    """`train --offline` on the `large` log (1/p-weighted): its run directory."""
    out = large.dir / "offline-runs"
    rc = main(["train", *large.config_args(f"run.output_dir={out}", "dqn.ips_weights=true"), "--offline",
               str(large.logs)])
    assert rc == 0
    (run_dir,) = out.glob("large-*")
    return run_dir


@pytest.mark.slow
def test_offline_training_then_ope_and_collect_with_its_checkpoint_on_large(
        large: LargeShop, large_offline_run: Path, tmp_path: Path, capsys) -> None:
    from rllib_rec.offpolicy.policies import checkpoint_greedy
    from rllib_rec.training.checkpoints import load_module, resolve_checkpoint

    metrics = [json.loads(line) for line in (large_offline_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["env_steps"] for m in metrics] == [0, 0] and all(np.isfinite(m["qf_loss"]) for m in metrics)
    evaluation = json.loads((large_offline_run / "evaluation.json").read_text())
    assert {"agent (greedy)", "logging policy (logs)", "history"} <= set(evaluation)
    assert evaluation["logging policy (logs)"]["episodes"] == LOGGED_EPISODES
    capsys.readouterr()

    # The offline agent as the target of OPE on the log it learned from.
    assert main(["ope", "--logs", str(large.logs), "--checkpoint", str(large_offline_run), "--epsilon", "0.1",
                 "--n-bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "(epsilon 0.1)" in out and "\nDR " in out

    # ... and as the behaviour policy of a new log: its greedy slots are the module's on the logged observations.
    logs = tmp_path / "ckpt.parquet"
    assert main(["collect", "--checkpoint", str(large_offline_run), "--policy", "epsilon-greedy", "--epsilon", "0.2",
                 "--episodes", "4", "--out", str(logs)]) == 0
    a = log_arrays(read_logs(logs))
    assert (a.n_items, a.n_candidates) == (10_000, 100) and set(a.obs) == set(OBS_KEYS)
    greedy = checkpoint_greedy(load_module(resolve_checkpoint(str(large_offline_run))))(a.obs, None)
    assert (np.argmax(a.behaviour_dist, axis=1) == greedy).all()
    assert a.obs["candidate_mask"][np.arange(a.n_rows), greedy].all()


# ------------------------------------------------------------------------------------------------ online


@pytest.fixture(scope="module")
def large_online_run(large: LargeShop) -> Path:
    """A short online run of `large` (train), its run directory."""
    out = large.dir / "online"
    rc = main(["train", *large.config_args(f"run.output_dir={out}"), "--no-tracking"])
    assert rc == 0
    (run,) = out.glob("large-*")
    return run


@pytest.mark.slow
def test_train_evaluate_export_serve_on_large(large: LargeShop, large_online_run: Path, capsys) -> None:
    """train -> evaluate -> export (float and fp16, through the parity gate) -> serve on the 10,000-item shop,
    with the candidate rules of a catalog larger than the model's K slots."""
    from conftest import start_serve

    assert main(["evaluate", "--checkpoint", str(large_online_run), "--episodes", "5"]) == 0
    assert "agent (greedy)" in capsys.readouterr().out
    out = large.dir / "export"
    assert main(["export", "--checkpoint", str(large_online_run), "--quantize", "none", "fp16", "--out", str(out),
                 "--no-mlflow"]) == 0
    side = json.loads((out / "model.json").read_text())
    assert (side["n_items"], side["n_candidates"]) == (10_000, 100)
    assert side["parity"]["passed"] and side["parity"]["top1_agreement"] == 1.0
    assert json.loads((out / "model_fp16.json").read_text())["parity"]["passed"]

    import http.client
    import os
    import sys

    port, proc = start_serve([sys.executable, "-m", "rllib_rec", "serve", "--model", str(out / "model.tflite")],
                             dict(os.environ))
    try:
        def post(body: dict) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/recommend", json.dumps(body), {"content-type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())

        history = {"items": [5, 9_999, 42], "events": ["view", "click", "ignored"]}
        status, body = post({**history, "candidates": list(range(9_900, 10_000)), "k": 5})  # exactly K
        assert status == 200 and len(body["recommendations"]) == 5
        assert {r["item"] for r in body["recommendations"]} <= set(range(9_900, 10_000))
        status, body = post(history)  # the catalog does not fit in K slots: candidates are required
        assert status == 422 and "candidates: required" in body["detail"]
        status, body = post({**history, "candidates": list(range(101))})
        assert status == 422 and "at most 100" in body["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_tune_on_large(large: LargeShop, capsys) -> None:
    sweep = large.dir / "sweep.yaml"
    sweep.write_text(f"base: {LARGE}\n"
        "sweep:\n  search_space:\n    dqn.lr: {grid: [0.001, 0.0005]}\n  scheduler: fifo\n  num_samples: 1\n"
        "  max_concurrent_trials: 1\n  cpus_per_trial: 1\n")
    sets = [*SHORT_RUN, "run.iterations=1", f"sweep.storage_path={large.dir / 'sweeps'}",
            f"run.output_dir={large.dir}"]
    assert main(["tune", "--config", str(sweep), *_sets(sets), "--no-tracking"]) == 0
    best = json.loads((large.dir / "sweeps" / "large-sweep" / "best.json").read_text())
    assert Path(best["checkpoint"]).is_dir()


@pytest.mark.slow
def test_export_parity_at_a_hundred_thousand_items(large: LargeShop) -> None:
    """A 100,000-item shop (ids hashed into model.id_buckets rows) trains for one short iteration and exports
    through the parity gate."""
    out = large.dir / "n100k"
    sets = ("env.catalog.n_items=100000", f"run.output_dir={out}", "run.iterations=1")
    assert main(["train", *large.config_args(*sets), "--no-tracking"]) == 0
    (run,) = out.glob("large-*")
    assert main(["export", "--checkpoint", str(run), "--out", str(out / "export"), "--no-mlflow"]) == 0
    side = json.loads((out / "export" / "model.json").read_text())
    assert side["n_items"] == 100_000 and side["model_spec"]["id_buckets"] < 100_000
    assert side["parity"]["passed"] and side["parity"]["max_abs_diff"] <= 1e-4
