"""Ensembles of independently trained runs: each group of ``--size`` runs (different training seeds) acts on
the mean of its members' Q-values, and is measured with `bench/learning.py`'s protocol on the same held-out
users: % of the myopic oracle with a paired bootstrap CI, % of the planning oracle, clickbait, and, with
``--one-step``, the same grouping of gamma-0 runs and the paired difference per ensemble with a 95% t-interval.
A second table gives each member alone, so the gain of combining is measured on the same users too.

    python bench/ensembles.py --agent RUN [RUN ...] [--one-step RUN [RUN ...]] [--size 2]
                              [--episodes 10000] [--eval-seed 7000000]

RUN is a run directory (its selected, else its latest checkpoint) or a checkpoint. Runs are grouped in the
order given: with --size 2, the first two are one ensemble, the next two the next, and the n-th one-step
group is paired with the n-th agent group. Train the runs with `bench/learning.py --output-dir DIR` (or
`rllib-rec train`) on training seeds no tuning used.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from rllib_rec.agent.runtime import use_torch_keras_backend
from rllib_rec.console import configure

use_torch_keras_backend()

from learning import BASELINE_NAMES, Run, report, training_rate  # noqa: E402

from envs.baselines import BASELINES, EpisodeStats, run_episodes  # noqa: E402
from rllib_rec.errors import CheckpointError  # noqa: E402
from rllib_rec.tables import format_table  # noqa: E402
from rllib_rec.training.checkpoints import checkpoint_config, load_module, resolve_checkpoint  # noqa: E402
from rllib_rec.training.evaluate import QValueEnsemble, evaluate_module  # noqa: E402


def _groups(ap: argparse.ArgumentParser, runs: list[str], size: int, flag: str) -> list[list[Path]]:
    """The runs' checkpoints in groups of ``size``; a bad path or count is a one-line argparse error."""
    if len(runs) % size:
        ap.error(f"{flag}: {len(runs)} runs do not split into ensembles of --size {size}")
    try:
        ckpts = [resolve_checkpoint(r) for r in runs]
    except CheckpointError as e:
        ap.error(str(e))
    return [ckpts[i:i + size] for i in range(0, len(ckpts), size)]


def _label(group: list[Path]) -> str:
    return "+".join(str(checkpoint_config(c).run.seed) for c in group)


def _rate(group: list[Path]) -> float:
    """Mean training throughput of the group's runs (nan where a checkpoint is not inside a run directory)."""
    rates = [training_rate(c.parent.parent) if (c.parent.parent / "metrics.jsonl").is_file() else math.nan
             for c in group]
    return float(np.mean(rates))


def _play(group: list[Path], env_cfg: Any, episodes: int, seed: int) -> tuple[EpisodeStats, list[EpisodeStats]]:
    """The ensemble's and each member's greedy play on the same users."""
    modules = [load_module(c) for c in group]
    members = [evaluate_module(m, env_cfg, episodes, seed) for m in modules]
    return evaluate_module(QValueEnsemble(modules), env_cfg, episodes, seed), members


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agent", nargs="+", required=True, metavar="RUN", help="run directories or checkpoints")
    ap.add_argument("--one-step", nargs="+", default=[], metavar="RUN",
                    help="gamma-0 runs, grouped the same way and paired with the agent groups in order")
    ap.add_argument("--size", type=int, default=2, help="runs per ensemble (default 2)")
    ap.add_argument("--episodes", type=int, default=10_000, help="held-out users (default 10,000)")
    ap.add_argument("--eval-seed", type=int, default=7_000_000, help="first held-out user seed (default 7,000,000)")
    args = ap.parse_args()
    configure(show_all=False)  # the tables only: RLlib's deprecation notices are hidden, as in the CLI
    if args.size < 1:
        ap.error(f"--size {args.size}: give 1 or more")
    agents = _groups(ap, args.agent, args.size, "--agent")
    one_steps = _groups(ap, args.one_step, args.size, "--one-step") if args.one_step else []
    if one_steps and len(one_steps) != len(agents):
        ap.error(f"--one-step: {len(one_steps)} ensembles for {len(agents)} agent ensembles")
    configs = [checkpoint_config(c) for g in agents + one_steps for c in g]
    if any(c.env != configs[0].env for c in configs):
        ap.error("the runs were trained on different shops (env sections differ); give runs of one config")
    if any(c.dqn.gamma != 0 for c in configs[len(args.agent):]):
        ap.error("--one-step: every run there must have dqn.gamma 0")

    env_cfg = configs[0].env
    print(f"baselines on {args.episodes:,} users ...", flush=True)
    base = {n: run_episodes(env_cfg, BASELINES[n], args.episodes, seed=args.eval_seed) for n in BASELINE_NAMES}
    planning = base["planning_oracle"].returns.mean()
    runs, member_rows = [], []
    for i, group in enumerate(agents):
        print(f"ensemble {_label(group)}: playing {args.episodes:,} users (ensemble and each member) ...", flush=True)
        agent, members = _play(group, env_cfg, args.episodes, args.eval_seed)
        one_step = None
        if one_steps:
            one_step, one_members = _play(one_steps[i], env_cfg, args.episodes, args.eval_seed)
            members += one_members
        for c, m in zip(group + (one_steps[i] if one_steps else []), members, strict=True):
            member_rows.append([_label([c]), f"{checkpoint_config(c).dqn.gamma:g}", f"{m.returns.mean():.3f}",
                                f"{100 * m.returns.mean() / planning:.1f}%", _label(group), str(c)])
        runs.append(Run(_label(group), agent, one_step, _rate(group), ""))
    print("members alone, on the same users:")
    print(format_table(["seed", "gamma", "return", "% planning", "ensemble", "checkpoint"], member_rows))
    print(f"ensembles of {args.size} (mean Q-values of the members), on the same users:")
    print("\n".join(report(f"ensembles of {args.size}", configs[0], runs, base, args.episodes, args.eval_seed,
                           unit="ensemble")))


if __name__ == "__main__":
    main()
