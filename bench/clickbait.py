"""What trained agents lose to clickbait: each checkpoint's greedy return as trained, and again with the
catalog's clickbait items removed from its candidates, beside the myopic and planning oracles, on the same
held-out users (paired 95% bootstrap interval of the ratio to the myopic oracle).

    python bench/clickbait.py CHECKPOINT [CHECKPOINT ...] [--episodes 1000] [--seed 3000000]

Removing clickbait uses the simulator's hidden ``is_clickbait`` flag, which no agent sees: the second row
is a diagnostic (how much of the gap to the oracles is clickbait), not a policy anyone can ship.
A CHECKPOINT is a run directory (its final checkpoint) or a checkpoint directory.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from rllib_rec.agent.runtime import use_torch_keras_backend
from rllib_rec.console import configure

use_torch_keras_backend()

from envs import Catalog  # noqa: E402
from envs.baselines import BASELINES, run_episodes  # noqa: E402
from rllib_rec.stats import ratio_of_means_ci  # noqa: E402
from rllib_rec.tables import format_table  # noqa: E402
from rllib_rec.training.checkpoints import CheckpointError, checkpoint_config, load_module, resolve_checkpoint  # noqa: E402
from rllib_rec.training.evaluate import evaluate_module  # noqa: E402


class WithoutItems:
    """Delegates greedy inference to ``module`` with ``items`` (a bool per catalog item) masked out of every
    candidate set."""

    def __init__(self, module: Any, items: np.ndarray) -> None:
        import torch

        self.module = module
        self.keep = torch.from_numpy(~items)  # [N] bool

    def forward_inference(self, batch: dict[str, Any]) -> dict[str, Any]:
        from ray.rllib.core.columns import Columns

        obs = dict(batch[Columns.OBS])
        keep = self.keep[obs["candidates"].long()]  # [B, K]
        obs["candidate_mask"] = (obs["candidate_mask"].bool() & keep).to(obs["candidate_mask"].dtype)
        return self.module.forward_inference({**batch, Columns.OBS: obs})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="run or checkpoint directories (same env config)")
    ap.add_argument("--episodes", type=int, default=1000, help="held-out episodes (default 1000)")
    ap.add_argument("--seed", type=int, default=3_000_000, help="first episode seed (default 3000000)")
    args = ap.parse_args()
    configure(show_all=False)  # the tables only: RLlib's deprecation notices are hidden, as in the CLI

    try:
        ckpts = [resolve_checkpoint(c) for c in args.checkpoints]
    except CheckpointError as e:
        ap.error(str(e))
    env_cfg = checkpoint_config(ckpts[0]).env
    for ckpt in ckpts[1:]:  # before any episode is played
        if checkpoint_config(ckpt).env != env_cfg:
            ap.error(f"{ckpt}: env config differs from {ckpts[0]}'s; compare one shop at a time")
    clickbait = Catalog(env_cfg.catalog).is_clickbait
    oracles = {n: run_episodes(env_cfg, BASELINES[n], args.episodes, seed=args.seed)
               for n in ("myopic_oracle", "planning_oracle")}
    myopic = oracles["myopic_oracle"].returns
    rows = []

    def row(name: str, stats: Any) -> None:
        s, r = stats.summary(), float(stats.returns.mean())
        lo, hi = ratio_of_means_ci(stats.returns, myopic)
        rows.append([name, f"{r:.2f}", f"{100 * r / myopic.mean():.1f}%", f"{100 * lo:.1f}–{100 * hi:.1f}%",
                     f"{s['clickbait_share']:.3f}", f"{s['purchases_mean']:.2f}", f"{s['length_mean']:.1f}"])

    for ckpt in ckpts:
        name = f"{ckpt.parent.parent.name}/{ckpt.name}"
        module = load_module(ckpt)
        row(name, evaluate_module(module, env_cfg, args.episodes, args.seed))
        row(f"{name} without clickbait", evaluate_module(WithoutItems(module, clickbait), env_cfg, args.episodes,
                                                         args.seed))
    for n, st in oracles.items():
        row(n, st)
    print(format_table(["policy", "return", "% myopic", "95% CI (paired)", "clickbait", "purchases", "length"],
                       rows))
    print(f"{args.episodes} held-out episodes, seeds {args.seed}+; clickbait = share of recommendations")


if __name__ == "__main__":
    main()
