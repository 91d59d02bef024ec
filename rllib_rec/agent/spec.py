"""The Q-network's specification: one frozen dataclass from the YAML to the network, checkpoint and export.

Kept free of Keras and torch so that anything (config validation, the export parent, tests) can build and
check a spec without freezing the Keras backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envs import N_EVENT_TYPES, Catalog

__all__ = ["MODEL_CONFIG_KEY", "QNetSpec"]

# The RLModule's model_config carries the spec under this key (``QNetSpec.to_dict()``).
MODEL_CONFIG_KEY = "qnet"


@dataclass(frozen=True)
class QNetSpec:
    """Everything that defines the Q-network's architecture (and so its weights' shapes and paths).

    The architecture fields have the names of the ``model`` config section's keys, which are documented
    in :class:`rllib_rec.config.ModelConfig`; the rest come from the shop: ``n_items`` (actions),
    ``history_length``, ``n_event_types`` and the catalog's ``item_categories`` (shop metadata baked into
    the network as a constant table; None = not given).
    """

    n_items: int
    history_length: int
    n_event_types: int = 6
    embed_dim: int = 32
    num_heads: int = 2
    num_layers: int = 1
    ff_dim: int = 64
    dropout: float = 0.0
    mlp_hidden: tuple[int, ...] = (64, 32)
    dueling: bool = True
    item_scoring: str = "tied"
    history_features: bool = True
    history_affinity: bool = True
    item_categories: tuple[int, ...] | None = None
    category_features: bool = False
    item_context: bool = False
    value_ledger: bool = False

    def __post_init__(self) -> None:
        # Normalise what JSON, YAML, Tune and numpy hand over (lists, np.int64) to hashable plain types.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("mlp_hidden", "item_categories"):
                value = None if value is None else tuple(int(v) for v in value)
            elif f.type in ("int", int):
                value = int(value)
            elif f.type in ("float", float):
                value = float(value)
            elif f.type in ("bool", bool):
                value = bool(value)
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """The rules Keras or the graph below would otherwise enforce mid-build; ValueError names the field."""
        if self.n_items < 1 or self.history_length < 1:
            raise ValueError(f"n_items and history_length must be >= 1, got {self.n_items}, {self.history_length}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if self.category_features and self.item_categories is None:
            raise ValueError("category_features needs item_categories")
        if self.item_categories is not None and len(self.item_categories) != self.n_items:
            raise ValueError(f"item_categories has {len(self.item_categories)} entries, expected n_items={self.n_items}")
        if self.item_scoring not in ("tied", "dense"):
            raise ValueError(f"item_scoring must be 'tied' or 'dense', got {self.item_scoring!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the RLModule's model_config, the export job and the sidecar carry)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QNetSpec:
        return cls(**data)

    @classmethod
    def from_experiment(cls, cfg: Any) -> QNetSpec:
        """The spec of an :class:`~rllib_rec.config.ExperimentConfig`: its ``model`` section as it is, plus
        the shop's sizes and, with ``model.item_categories``, the catalog's item categories."""
        arch = dataclasses.asdict(cfg.model)
        arch["item_categories"] = tuple(Catalog(cfg.env.catalog).category.tolist()) if arch["item_categories"] else None
        return cls(n_items=cfg.env.catalog.n_items, history_length=cfg.env.history_length,
                   n_event_types=N_EVENT_TYPES, **arch)
