"""Learning benchmark: train a preset's shipped config on several training seeds and measure each final agent
on many held-out users, beside a learned one-step agent, the `history` baseline and both oracles.

    python bench/learning.py [--presets default] [--seeds 100 101 102 103 104] [--episodes 10000]
                             [--eval-seed 7000000] [--no-one-step] [--set KEY=VALUE ...] [--output-dir DIR]
                             [--pretrain-offline LOGS [--pretrain-set KEY=VALUE ...]]

The protocol (docs/benchmarks.md says which seeds were used for tuning and which for reporting):

* every training seed (``run.seed``) trains configs/<preset>.yaml from scratch; its final checkpoint (or the
  one it selected on validation seeds) plays ``--episodes`` users (default 10,000) from ``--eval-seed`` on,
  a range that no training run, validation or tuning uses (training seeds are < 10^6, validation 2*10^6+,
  run.eval_seed 10^6+);
* the same users meet the myopic oracle (reads the hidden user, maximises the immediate reward), the planning
  oracle (one-step lookahead that values patience and purchase intent) and the `history` baseline, so the
  ratios are paired: "95% CI" is a bootstrap over users of mean(agent) / mean(myopic oracle);
* with the one-step agent on (default), each seed also trains the same config with ``dqn.gamma=0`` (a learned
  next-reward recommender: same network, data and updates) and plays the same users; "vs one-step" is the
  ratio of the two agents' returns, and the summary gives the mean over seeds of the per-seed difference
  with a 95% t-interval over seeds;
* "clickbait" is the share of recommendations that were clickbait items (the myopic oracle recommends them,
  the planning oracle avoids them);
* with ``--pretrain-offline LOGS`` every training run (the one-step agent's too) is two stages on its seed: an
  offline run on the log (``train --offline``, with ``--set`` and then ``--pretrain-set`` overrides), then the
  online run starting from its network (``train --init-from``).

A run of `default` (300k env steps) takes ~30 minutes per training seed (twice that with the one-step agent)
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from rllib_rec.agent.runtime import use_torch_keras_backend

use_torch_keras_backend()

from envs.baselines import BASELINES, EpisodeStats, run_episodes  # noqa: E402
from rllib_rec.config import ExperimentConfig, load_config  # noqa: E402
from rllib_rec.stats import ratio_of_means_ci  # noqa: E402
from rllib_rec.tables import format_table  # noqa: E402
from rllib_rec.training.checkpoints import checkpoint_config, load_module  # noqa: E402
from rllib_rec.training.evaluate import evaluate_module  # noqa: E402
from rllib_rec.training.train import train  # noqa: E402

ROOT = Path(__file__).parent.parent
BASELINE_NAMES = ("history", "myopic_oracle", "planning_oracle")


@dataclass
class Run:
    seed: int
    agent: EpisodeStats
    one_step: EpisodeStats | None
    env_steps_per_s: float
    checkpoint: str


@dataclass
class Pretraining:
    """An offline stage before each online run: the log and the overrides of the offline run."""

    logs: str
    overrides: list[str]


def train_and_measure(preset: str, seed: int, overrides: list[str], out: Path, episodes: int,
                      eval_seed: int, gamma0: bool = False,
                      pretraining: Pretraining | None = None) -> tuple[EpisodeStats, float, str]:
    """Train ``preset`` with ``run.seed=seed`` (and gamma 0 when ``gamma0``; offline first when ``pretraining``);
    its chosen checkpoint's greedy play on ``episodes`` users from ``eval_seed``, the online run's training
    throughput, the checkpoint path."""
    tag = f"{preset} seed {seed}{' gamma 0' if gamma0 else ''}"
    sets = [f"run.output_dir={out}", f"run.seed={seed}", *(["dqn.gamma=0"] if gamma0 else []), *overrides]
    config = str(ROOT / "configs" / f"{preset}.yaml")
    init_from = None
    if pretraining is not None:
        pre = train(config, [*sets, *pretraining.overrides], offline=pretraining.logs,
                    log=lambda s: print(f"  [{tag} offline] {s}", flush=True) if s.startswith(("iter", "wall")) else None)
        init_from = str(pre.checkpoint)
    res = train(config, sets, init_from=init_from,
                log=lambda s: print(f"  [{tag}] {s}", flush=True) if s.startswith(("iter", "wall")) else None)
    rate = training_rate(res.run_dir)
    print(f"  [{tag}] playing {episodes:,} held-out users ...", flush=True)
    agent = evaluate_module(load_module(res.checkpoint), checkpoint_config(res.checkpoint).env, episodes, eval_seed)
    return agent, rate, str(res.checkpoint)


def training_rate(run_dir: Path) -> float:
    """A run's training throughput (env steps per second of its iterations after the first, which also fills
    the replay buffer), from its metrics.jsonl."""
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return (history[-1]["env_steps"] - history[0]["env_steps"]) / sum(h["seconds"] for h in history[1:])


def _pct(a: np.ndarray, b: np.ndarray) -> str:
    lo, hi = ratio_of_means_ci(a, b)
    return f"{100 * a.mean() / b.mean():.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def report(preset: str, cfg: ExperimentConfig, runs: list[Run], base: dict[str, EpisodeStats], episodes: int,
           eval_seed: int, unit: str = "training seed") -> list[str]:
    """The protocol's table and summary lines; ``unit`` is what one row is (a training seed, an ensemble)."""
    myopic, planning, hist = (base[n].returns for n in ("myopic_oracle", "planning_oracle", "history"))
    rows = []
    for r in runs:
        a = r.agent.returns
        row = [r.seed, f"{a.mean():.3f}", _pct(a, myopic), f"{100 * a.mean() / planning.mean():.1f}%",
               f"{a.mean() / hist.mean():.2f}x", f"{r.agent.summary()['clickbait_share']:.3f}"]
        if r.one_step is not None:
            o = r.one_step.returns
            row += [_pct(o, myopic), _pct(a, o), f"{r.one_step.summary()['clickbait_share']:.3f}"]
        rows.append([*row, f"{r.env_steps_per_s:,.0f}"])
    headers = ["seed", "return", "% myopic [95% CI]", "% planning", "x history", "clickbait"]
    if runs and runs[0].one_step is not None:
        headers += ["one-step % myopic", "vs one-step", "one-step clickbait"]
    lines = [f"{preset}: {len(runs)} {unit}(s), each on {episodes:,} held-out users (seeds {eval_seed}+)",
             format_table([*headers, "train steps/s"], rows)]
    ratios = np.array([100 * r.agent.returns.mean() / myopic.mean() for r in runs])
    lines.append(f"{preset}: mean {ratios.mean():.1f}% of the myopic oracle"
                 + (f" ± {ratios.std(ddof=1) / np.sqrt(len(ratios)):.1f} (SE over {unit}s)" if len(ratios) > 1 else "")
                 + f"; {100 * np.mean([r.agent.returns.mean() for r in runs]) / planning.mean():.1f}% of the planning "
                 f"oracle; {np.mean([r.agent.returns.mean() for r in runs]) / hist.mean():.2f}x history")
    if runs and runs[0].one_step is not None:
        diffs = np.array([100 * (r.agent.returns.mean() / r.one_step.returns.mean() - 1) for r in runs])
        if len(diffs) > 1:
            half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
            ci = f" (95% CI over {unit}s {diffs.mean() - half:+.1f} to {diffs.mean() + half:+.1f})"
        else:
            ci = ""
        lines.append(f"{preset}: the agent earns {diffs.mean():+.1f}% over the one-step agent (gamma 0), paired per "
                     f"{unit}{ci}")
    lines.append(f"{preset}: on the same users: " + "  ".join(
        f"{n} {base[n].returns.mean():.3f} (clickbait {base[n].summary()['clickbait_share']:.3f})"
        for n in BASELINE_NAMES))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["default"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104],
                    help="training seeds (run.seed); report on seeds no tuning used")
    ap.add_argument("--episodes", type=int, default=10_000, help="held-out users per agent (default 10,000)")
    ap.add_argument("--eval-seed", type=int, default=7_000_000,
                    help="first held-out user seed (default 7,000,000: a range no run or tuning touches)")
    ap.add_argument("--no-one-step", action="store_true", help="skip the gamma-0 agent")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--output-dir", default=None, help="keep runs here (default: a temp dir)")
    ap.add_argument("--pretrain-offline", metavar="LOGS", default=None,
                    help="train each run offline on this log first, then online from its network")
    ap.add_argument("--pretrain-set", dest="pretrain_overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides of the offline stage only (after --set)")
    args = ap.parse_args()
    pretraining = Pretraining(args.pretrain_offline, args.pretrain_overrides) if args.pretrain_offline else None
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench-learning-"))
    report_lines: list[str] = []
    for preset in args.presets:
        cfg = load_config(ROOT / "configs" / f"{preset}.yaml", args.overrides)
        print(f"[{preset}] baselines on {args.episodes:,} users ...", flush=True)
        base = {n: run_episodes(cfg.env, BASELINES[n], args.episodes, seed=args.eval_seed) for n in BASELINE_NAMES}
        runs = []
        for seed in args.seeds:
            agent, rate, ckpt = train_and_measure(preset, seed, args.overrides, out, args.episodes, args.eval_seed,
                                                  pretraining=pretraining)
            one = None
            if not args.no_one_step:
                one, _, _ = train_and_measure(preset, seed, args.overrides, out, args.episodes, args.eval_seed,
                                              gamma0=True, pretraining=pretraining)
            runs.append(Run(seed, agent, one, rate, ckpt))
            print("\n".join(report(preset, cfg, runs, base, args.episodes, args.eval_seed)), flush=True)
        report_lines += [*report(preset, cfg, runs, base, args.episodes, args.eval_seed), ""]
    print("\n".join(report_lines))


if __name__ == "__main__":
    main()
