"""Learning runs (slow; `make test-slow`): the agent actually learns in the simulator."""

from __future__ import annotations

import json
import pathlib

import pytest

from envs.baselines import BASELINES, run_episodes
from rllib_rec.checkpoints import checkpoint_config, load_module
from rllib_rec.evaluate import evaluate_module
from rllib_rec.train import train

ROOT = pathlib.Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def test_seed_preset_reaches_90_percent_of_oracle_within_100k_steps(tmp_path) -> None:
    res = train(str(ROOT / "configs" / "seed.yaml"), [f"run.output_dir={tmp_path}", "run.eval_episodes=20"],
                log=lambda s: None)
    cfg = checkpoint_config(res.checkpoint)
    steps = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["env_steps"]
    assert steps <= 100_000
    seed = cfg.run.eval_seed
    agent = evaluate_module(load_module(res.checkpoint), cfg.env, 1000, seed).summary()["return_mean"]
    oracle = run_episodes(cfg.env, BASELINES["myopic_oracle"], 1000, seed=seed).summary()["return_mean"]
    assert agent >= 0.9 * oracle, (agent, oracle)
