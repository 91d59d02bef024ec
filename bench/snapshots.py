"""Does combining a run's last checkpoints beat its last one? Greedy return on the same held-out users of

* the last checkpoint alone (what `export` ships);
* ``weights xN``: one network whose weights are the mean of the last N checkpoints' (what a shipped
  single-network model could be);
* ``Q-values xN``: the mean of the last N checkpoints' Q-values (a snapshot ensemble: N times the
  inference cost),

beside the myopic and planning oracles, with the paired 95% bootstrap interval of the ratio to the myopic
oracle.

    python bench/snapshots.py RUN_DIR [--last 3 5] [--episodes 10000] [--seed 7000000]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from rllib_rec.agent.runtime import use_torch_keras_backend
from rllib_rec.console import configure

use_torch_keras_backend()

from envs.baselines import BASELINES, run_episodes  # noqa: E402
from rllib_rec.stats import ratio_of_means_ci  # noqa: E402
from rllib_rec.tables import format_table  # noqa: E402
from rllib_rec.training.checkpoints import checkpoint_config, complete_checkpoints, load_module  # noqa: E402
from rllib_rec.training.evaluate import QValueEnsemble, evaluate_module  # noqa: E402


def weight_average(last: Path, modules: list[Any]) -> Any:
    """A fresh copy of checkpoint ``last``'s module whose Q-network weights are the mean of ``modules``'."""
    averaged = load_module(last)
    weights = [m.qnet.get_weights() for m in modules]
    averaged.qnet.set_weights([np.mean(w, axis=0) for w in zip(*weights, strict=True)])
    return averaged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a training run directory (its checkpoints/ are read)")
    ap.add_argument("--last", type=int, nargs="+", default=[3, 5], metavar="N",
                    help="how many of the last checkpoints to combine (default 3 5)")
    ap.add_argument("--episodes", type=int, default=10_000, help="held-out episodes (default 10000)")
    ap.add_argument("--seed", type=int, default=7_000_000, help="first episode seed (default 7000000)")
    args = ap.parse_args()
    configure(show_all=False)  # the tables only: RLlib's deprecation notices are hidden, as in the CLI

    ckpts = complete_checkpoints(args.run_dir) if args.run_dir.is_dir() else []
    if not ckpts:
        ap.error(f"{args.run_dir}: no complete checkpoint (expected a training run directory)")
    if bad := [n for n in args.last if not 2 <= n <= len(ckpts)]:
        ap.error(f"--last {bad[0]}: the run has {len(ckpts)} checkpoints; give 2..{len(ckpts)}")
    env_cfg = checkpoint_config(ckpts[-1]).env
    oracles = {n: run_episodes(env_cfg, BASELINES[n], args.episodes, seed=args.seed)
               for n in ("myopic_oracle", "planning_oracle")}
    myopic, planning = (float(oracles[n].returns.mean()) for n in ("myopic_oracle", "planning_oracle"))
    rows = []

    def row(name: str, policy: Any) -> None:
        stats = evaluate_module(policy, env_cfg, args.episodes, args.seed)
        r = float(stats.returns.mean())
        lo, hi = ratio_of_means_ci(stats.returns, oracles["myopic_oracle"].returns)
        rows.append([name, f"{r:.3f}", f"{100 * r / myopic:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]",
                     f"{100 * r / planning:.1f}%", f"{stats.summary()['clickbait_share']:.3f}"])

    modules = [load_module(c) for c in ckpts[-max(args.last):]]  # each loaded once, never modified
    row(f"last ({ckpts[-1].name})", modules[-1])
    for n in args.last:
        names = f"{ckpts[-n].name}..{ckpts[-1].name}"
        row(f"weights x{n} ({names})", weight_average(ckpts[-1], modules[-n:]))
        row(f"Q-values x{n} ({names})", QValueEnsemble(modules[-n:]))
    print(format_table(["policy", "return", "% myopic [95% CI]", "% planning", "clickbait"], rows))
    print(f"{args.run_dir}: {args.episodes} held-out episodes, seeds {args.seed}+; myopic oracle {myopic:.3f}, "
          f"planning oracle {planning:.3f}; clickbait = share of recommendations")


if __name__ == "__main__":
    main()
