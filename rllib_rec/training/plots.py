"""The learning-curve PNG of a run (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_learning_curve"]


def plot_learning_curve(history: Sequence[Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
                        path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history and "replayed_steps" in history[0]:  # offline: no training episodes, so the loss curve
        ax.plot([h["replayed_steps"] for h in history], [h["qf_loss"] for h in history], marker="o",
                label="TD loss (offline, logged transitions)")
        ax.set_xlabel("replayed steps (updates x batch / replay ratio)")
        ax.set_ylabel("TD loss")
        legend_loc = "upper right"
    else:
        xs = [h["env_steps"] for h in history]
        ax.plot(xs, [h["episode_return_mean"] for h in history], marker="o", label="agent (training episodes)")
        for name, style in (("random", ":"), ("myopic_oracle", "--"), ("planning_oracle", "-.")):
            if name in baselines:
                ax.axhline(baselines[name]["return_mean"], linestyle=style, color="gray", label=name)
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean episode return")
        legend_loc = "lower right"
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
