"""``rllib-rec demo``: the main job on embedded defaults — train the debug config locally, export the
checkpoint to TFLite through the parity gate, answer one recommendation with LiteRT, say where it all is."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from envs import EVENT_NAMES, ECommerceEnv
from rllib_rec.config.experiment import load_config
from rllib_rec.deploy.export import export_checkpoint
from rllib_rec.deploy.serve import Recommender
from rllib_rec.errors import UsageError
from rllib_rec.training.checkpoints import checkpoint_config
from rllib_rec.training.train import summary_lines, train

__all__ = ["DEBUG_CONFIG", "run_demo"]

DEBUG_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"


def run_demo(overrides: Sequence[str] = (), tracking_uri: str | None = None,
             log: Callable[[str], None] = print) -> list[str]:
    """Returns the summary lines (also printed by the CLI)."""
    if not DEBUG_CONFIG.is_file():
        raise UsageError(f"{DEBUG_CONFIG}: the demo's config is missing (run from a source checkout)")
    load_config(str(DEBUG_CONFIG), overrides)  # a bad --set is refused before the first stage starts
    log(f"== 1/3 train {DEBUG_CONFIG.name} locally")
    res = train(str(DEBUG_CONFIG), overrides, tracking_uri=tracking_uri, log=log)
    log("== 2/3 export to TFLite (builtin ops only) and check parity against the checkpoint")
    exp = export_checkpoint(str(res.checkpoint), quantize=("none",), tracking_uri=res.tracking_uri, log=log)
    model = exp.files["none"]
    log("== 3/3 one recommendation from the .tflite file through LiteRT")
    env = ECommerceEnv(checkpoint_config(res.checkpoint).env)
    obs, _ = env.reset(seed=0)
    seen = obs["items"] > 0
    items = (obs["items"][seen] - 1).tolist()
    events = [EVENT_NAMES[e] for e in obs["events"][seen]]
    top = Recommender(model).recommend(items, events, k=3)
    log(f"history {list(zip(items, events, strict=True))} -> top-3 {[(t['item'], round(t['q'], 3)) for t in top]}")
    parity = exp.parity["none"]
    return [
        *summary_lines(res),
        f"TFLite model  : {model}  (max|dQ| {parity['max_abs_diff']:.1e}, top-1 {parity['top1_agreement']:.0%})",
        f"serve it      : {_cli_path()} serve --model {model}",
    ]


def _cli_path() -> str:
    """How to call the CLI from where the user stands: the venv's script (not on PATH unless activated)."""
    script = Path(sys.executable).with_name("rllib-rec")
    if not script.is_file():
        return "rllib-rec"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
