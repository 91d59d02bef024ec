"""The learning-curve PNG of a run (matplotlib, Agg).

Online runs show two returns of the agent, which are not the same thing: the *training* return (the
epsilon-greedy policy's episodes, in sessions with items put out of stock by ``dqn.explore_item_dropout``)
and the *greedy* return of each checkpoint on validation users (what export and serving deploy: no
exploration, the shop as configured). The baselines (``random``, ``history``, the oracles) are greedy
returns on the held-out evaluation users, as is the final evaluation of the selected checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rllib_rec.training.evaluate import GREEDY_NAME

__all__ = ["plot_learning_curve", "BASELINE_STYLES"]

# Baselines drawn as horizontal lines (name -> line style), when the evaluation has them.
BASELINE_STYLES = {"random": ":", "history": (0, (5, 2, 1, 2)), "myopic_oracle": "--", "planning_oracle": "-."}


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def plot_learning_curve(history: Sequence[Mapping[str, float]], baselines: Mapping[str, Mapping[str, float]],
                        path: Path, title: str) -> dict[str, Any]:
    """Write the PNG; returns what was drawn (series name -> (xs, ys), or a value for a horizontal line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if history and "replayed_steps" in history[0]:  # offline: no training episodes, so the loss curve
        xs, ys = [h["replayed_steps"] for h in history], [h["qf_loss"] for h in history]
        ax.plot(xs, ys, marker="o", label="TD loss (offline, logged transitions)")
        drawn["td_loss"] = (xs, ys)
        ax.set_xlabel("replayed steps (updates x batch / replay ratio)")
        ax.set_ylabel("TD loss")
        legend_loc = "upper right"
    else:
        xs, ys = [h["env_steps"] for h in history], [h["episode_return_mean"] for h in history]
        ax.plot(xs, ys, marker=".", color="tab:blue", alpha=0.6,
                label="agent, training episodes (epsilon-greedy, stock-outs)")
        drawn["training_return"] = (xs, ys)
        greedy = [(h["env_steps"], h["validation_return"]) for h in history if _finite(h.get("validation_return"))]
        if greedy:
            gx, gy = [x for x, _ in greedy], [y for _, y in greedy]
            ax.plot(gx, gy, marker="o", color="tab:red", label="agent, greedy per checkpoint (validation users)")
            drawn["greedy_return"] = (gx, gy)
        final = baselines.get(GREEDY_NAME)
        if final is not None and xs:
            ax.plot([xs[-1]], [final["return_mean"]], marker="*", markersize=12, color="tab:red", linestyle="none",
                    label="agent, greedy, selected checkpoint (held-out users)")
            drawn["greedy_heldout"] = final["return_mean"]
        for name, style in BASELINE_STYLES.items():
            if name in baselines:
                ax.axhline(baselines[name]["return_mean"], linestyle=style, color="gray", label=f"{name} (held-out)")
                drawn[name] = baselines[name]["return_mean"]
        ax.set_xlabel("env steps")
        ax.set_ylabel("mean episode return")
        legend_loc = "lower right"
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn
