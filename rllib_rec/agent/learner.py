"""DQN learner with a combined prioritised-replay x inverse-propensity sample weight.

Per sample i of a replayed batch the Huber TD loss is multiplied by

    w_i = normalise( per_i ** use_per  *  min(1 / p_i, ips_clip) ** use_ips )

* ``per_i`` = ``batch["weights"]``: the importance-sampling weight of RLlib's
  `PrioritizedEpisodeReplayBuffer` (``(N * P(i)) ** -beta``, divided by the buffer-wide maximum, so
  in (0, 1]). Sampling priorities (alpha) and their updates from |TD error| are untouched: the TD
  errors logged by the stock loss are unweighted, so priority updates keep working.
* ``p_i`` = ``batch[Columns.ACTION_PROB]``: the behaviour probability of the logged action, written by
  `TransformerDQNModule._forward_exploration` ((1 - eps) * 1[a = greedy] + eps / |mask|) and carried
  through replay by the buffers in `rllib_rec.agent.replay` (give one as `replay_buffer_config["type"]`).
  ``min(1/p, clip)`` is computed as ``1 / max(p, 1/clip)`` so p = 0 or a missing prob cannot blow up.

Normalisation (decision): the combined weight is divided by its **batch mean** (self-normalised
importance weights), so the weighted loss has the scale of the unweighted loss whatever is switched
on. Reason: the PER weights' buffer-wide-max normalisation makes their batch mean drift (≈0.05 is
typical), which silently rescales the effective learning rate and interacts with Huber's delta and
gradient clipping; IPS weights have the opposite problem (mean ≫ 1 up to ``ips_clip``). Batch-mean
normalisation keeps the relative weighting inside the batch (what PER/IPS are for) and makes the
lr / grad_clip / on-off switches independent. Cost: a small O(1/B) self-normalisation bias, the
usual trade for much lower variance (as in SNIPS). With both switches off every weight is exactly 1.

Settings come from ``config.learner_config_dict`` (see `DEFAULT_LEARNER_SETTINGS`):
    use_per (bool, True), use_ips (bool, False), ips_clip (float, 10.0), normalize ("mean" | "none"),
    reward_loss_weight (float, 0.0).

To disable PER sampling itself (not just its weights) use a uniform buffer (`UNIFORM_BUFFER`) or
``alpha=0``.

Auxiliary reward loss: with ``reward_loss_weight`` > 0 (and a module built with a reward head) the loss adds
``weight * mean((reward_pred[a] - r)^2)`` over the batch, unweighted: the reward head's prediction for the
recommended slot against the batch's reward (the n-step discounted sum when n_step > 1). Its gradient reaches
the shared encoder; the TD loss and the priority updates are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ray.rllib.algorithms.dqn.torch.dqn_torch_learner import DQNTorchLearner
from ray.rllib.core.columns import Columns

from rllib_rec.agent.spec import REWARD_HEAD_KEY, REWARD_PREDS

__all__ = ["DEFAULT_LEARNER_SETTINGS", "WeightedDQNTorchLearner", "clip_gradients_fused", "combined_weights",
           "learner_settings", "reward_loss"]

logger = logging.getLogger(__name__)

DEFAULT_LEARNER_SETTINGS: dict[str, Any] = {
    "use_per": True,
    "use_ips": False,
    "ips_clip": 10.0,
    "normalize": "mean",
    "reward_loss_weight": 0.0,
}


def combined_weights(
    per_weights: torch.Tensor | None,
    behaviour_probs: torch.Tensor | None,
    use_per: bool,
    use_ips: bool,
    ips_clip: float,
    normalize: str = "mean",
) -> torch.Tensor:
    """Per-sample loss weights [B] = normalise(PER weight x clipped inverse propensity).

    Args:
        per_weights: [B] prioritised-replay importance weights (ignored unless `use_per`).
        behaviour_probs: [B] probability the behaviour policy gave the logged action (ignored unless
            `use_ips`).
        use_per / use_ips: switch each factor on or off.
        ips_clip: upper bound for 1/p (must be >= 1).
        normalize: "mean" divides by the batch mean (module docstring explains why); "none" keeps raw.

    Returns:
        A detached float32 tensor [B]; all ones when both factors are off.
    """
    ref = per_weights if per_weights is not None else behaviour_probs
    if ref is None:
        raise ValueError("combined_weights needs per_weights or behaviour_probs to know the batch size")
    w = torch.ones(ref.shape[0], dtype=torch.float32, device=ref.device)  # [B]
    if use_per:
        if per_weights is None:
            raise ValueError("use_per=True but the batch has no 'weights' column")
        w = w * per_weights.detach().to(torch.float32).reshape(-1)
    if use_ips:
        if behaviour_probs is None:
            raise ValueError(
                "use_ips=True but the batch has no ACTION_PROB column: use TransformerDQNModule and a "
                "buffer from rllib_rec.agent.replay (PRIORITIZED_BUFFER / UNIFORM_BUFFER)"
            )
        if ips_clip < 1.0:
            raise ValueError(f"ips_clip must be >= 1, got {ips_clip}")
        p = torch.nan_to_num(behaviour_probs.detach().to(torch.float32).reshape(-1), nan=0.0)
        w = w * (1.0 / torch.clamp(p, min=1.0 / float(ips_clip)))  # min(1/p, clip)
    if normalize == "mean":
        w = w / torch.clamp(w.mean(), min=1e-12)
    elif normalize != "none":
        raise ValueError(f"normalize must be 'mean' or 'none', got {normalize!r}")
    return w


def clip_gradients_fused(gradients_dict: dict[Any, torch.Tensor | None], *, grad_clip: float | None = None,
                         grad_clip_by: str = "value") -> torch.Tensor | None:
    """RLlib's ``clip_gradients`` with the global norm and the scaling done by multi-tensor kernels (RLlib
    takes one norm per tensor in Python: ~3 ms an update for this network's ~35 tensors). Same formula:
    coefficient min(1, clip / (norm + 1e-6)), each tensor's norm capped at 1e9 first; other modes are
    RLlib's own."""
    from ray.rllib.utils.torch_utils import clip_gradients

    if grad_clip is None or grad_clip_by != "global_norm":
        return clip_gradients(gradients_dict, grad_clip=grad_clip, grad_clip_by=grad_clip_by)
    grads = [g.detach() for g in gradients_dict.values() if g is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch.stack(torch._foreach_norm(grads)).nan_to_num(neginf=-10e8, posinf=10e8)
    total = torch.linalg.vector_norm(norms).nan_to_num(neginf=-10e8, posinf=10e8)
    torch._foreach_mul_(grads, torch.clamp(grad_clip / torch.clamp(total + 1e-6, min=grad_clip), max=1.0))
    return total


def learner_settings(learner_config_dict: dict[str, Any] | None) -> dict[str, Any]:
    """Merges `config.learner_config_dict` over `DEFAULT_LEARNER_SETTINGS` and checks the keys."""
    given = dict(learner_config_dict or {})
    out = {**DEFAULT_LEARNER_SETTINGS, **{k: v for k, v in given.items() if k in DEFAULT_LEARNER_SETTINGS}}
    out["use_per"], out["use_ips"] = bool(out["use_per"]), bool(out["use_ips"])
    out["ips_clip"] = float(out["ips_clip"])
    out["reward_loss_weight"] = float(out["reward_loss_weight"])
    return out


def reward_loss(reward_preds: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted reward of each taken action: ``reward_preds`` [B, K], ``actions``
    [B] (slot indices), ``rewards`` [B]."""
    taken = reward_preds.gather(1, actions.long().reshape(-1, 1)).squeeze(1)  # [B]
    return torch.mean((taken - rewards.to(taken.dtype)) ** 2)


class WeightedDQNTorchLearner(DQNTorchLearner):
    """`DQNTorchLearner` whose per-sample Huber/MSE TD loss is weighted by `combined_weights`.

    It swaps the combined weight into ``batch["weights"]`` (the stock loss multiplies exactly that
    column into the per-sample loss) and delegates to the stock loss, so double-Q, n-step, terminal
    masking, TD-error logging and hence PER priority updates stay RLlib's own code.

    Its optimiser is Adam over the trainable parameters only (the network's constant item table is a
    parameter too) with torch's fused kernel: the stock per-tensor Adam took ~5 ms a step on these ~40
    small tensors on one CPU core, the fused one ~1 ms (same update).
    """

    def configure_optimizers_for_module(self, module_id: str, config: Any = None) -> None:
        params = [p for p in self.get_parameters(self._module[module_id]) if p.requires_grad]
        self.register_optimizer(module_id=module_id, optimizer=torch.optim.Adam(params, fused=True),
                                params=params, lr_or_lr_schedule=config.lr)

    @staticmethod
    def _get_clip_function() -> Any:
        return clip_gradients_fused

    def apply_gradients(self, gradients_dict: dict[Any, torch.Tensor]) -> None:
        """RLlib's step, with one fused finiteness check instead of two per tensor (~5 ms an update at a
        million items). The config sets ``torch_skip_nan_gradients`` so that RLlib checks nothing itself;
        a non-finite gradient is then made finite here, as RLlib's default does."""
        grads = [g for g in gradients_dict.values() if g is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            logger.warning("gradients contain nan/inf values: set to finite ones (torch.nan_to_num)")
            gradients_dict = {pid: g if g is None else torch.nan_to_num(g) for pid, g in gradients_dict.items()}
        super().apply_gradients(gradients_dict)

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict, fwd_out: dict
    ) -> torch.Tensor:
        s = learner_settings(getattr(self.config, "learner_config_dict", None))
        per = batch.get("weights")
        probs = batch.get(Columns.ACTION_PROB)
        w = combined_weights(per, probs, s["use_per"], s["use_ips"], s["ips_clip"], s["normalize"])  # [B]
        stats = {"sample_weight_max": w.max(), "sample_weight_min": w.min()}
        if per is not None:
            stats["per_weight_mean"] = per.float().mean()
        if probs is not None:
            stats["behaviour_prob_mean"] = probs.float().mean()
            stats["ips_clipped_frac"] = (probs.float() < 1.0 / s["ips_clip"]).float().mean()
        self.metrics.log_dict(stats, key=module_id, window=1)
        td_loss = super().compute_loss_for_module(
            module_id=module_id, config=config, batch={**batch, "weights": w}, fwd_out=fwd_out
        )
        if s["reward_loss_weight"] <= 0.0:
            return td_loss
        if REWARD_PREDS not in fwd_out:
            raise ValueError("reward_loss_weight > 0 but the module has no reward head (model_config "
                             f"{REWARD_HEAD_KEY!r}: true)")
        aux = reward_loss(fwd_out[REWARD_PREDS], batch[Columns.ACTIONS], batch[Columns.REWARDS])
        self.metrics.log_value((module_id, "reward_loss"), aux, window=1)
        return td_loss + s["reward_loss_weight"] * aux
