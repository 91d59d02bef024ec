"""The Q-network's specification: one frozen dataclass from the YAML to the network, checkpoint and export.

Kept free of Keras and torch so that anything (config validation, the export parent, tests) can build and
check a spec without freezing the Keras backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envs import N_EVENT_TYPES
from envs.catalog import POPULARITY_BANDS, PRICE_BANDS

__all__ = ["ITEM_FEATURES", "MASKED_Q", "MODEL_CONFIG_KEY", "QNetSpec", "REWARD_HEAD_KEY", "REWARD_PREDS"]

# The RLModule's model_config carries the spec under this key (``QNetSpec.to_dict()``).
MODEL_CONFIG_KEY = "qnet"
# model_config key switching the training-only reward head on (not part of the spec: export never builds it),
# and the key of its predictions in the training forward's output.
REWARD_HEAD_KEY = "reward_head"
REWARD_PREDS = "reward_preds"
# Value written into the Q-vector for invalid slots. Finite on purpose: `q + (mask - 1) * inf` produces NaN
# where mask == 1 (0 * inf), and the TFLite converter turns -inf into -3.4e38 anyway. 3e4 is far below any
# achievable return (tens), exact in float16 (an fp16 export stores it as such: float16 tops out at 65,504)
# and far from overflow when something downstream sums or averages Q-values.
MASKED_Q: float = -3e4
# Side features a shop knows for every item, each embedded and added to the item's vector.
ITEM_FEATURES = ("category", "price_band", "popularity_band")


@dataclass(frozen=True)
class QNetSpec:
    """Everything that defines the Q-network's architecture (and so its weights' shapes and paths).

    The architecture fields have the names of the ``model`` config section's keys, documented in
    :class:`rllib_rec.config.ModelConfig`. The rest describe the shop: ``n_items`` (catalog size N),
    ``n_candidates`` (K, the actions), ``history_length``, ``n_event_types``, the cardinality of each item
    feature, and ``catalog`` (the simulator catalog's config, from which the network's constant per-item
    tables are built; None: the tables start at zero and come with the weights, as in export).
    """

    n_items: int
    n_candidates: int
    history_length: int
    n_event_types: int = N_EVENT_TYPES
    embed_dim: int = 32
    num_heads: int = 2
    num_layers: int = 1
    ff_dim: int = 64
    dropout: float = 0.0
    mlp_hidden: tuple[int, ...] = (64, 32)
    dueling: bool = True
    history_features: bool = True
    history_affinity: bool = True
    category_features: bool = False
    item_context: bool = False
    value_ledger: bool = False
    item_features: tuple[str, ...] = ()
    id_buckets: int = 0
    n_categories: int = 1
    n_price_bands: int = PRICE_BANDS
    n_popularity_bands: int = POPULARITY_BANDS
    catalog: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        # Normalise what JSON, YAML, Tune and numpy hand over (lists, np.int64) to plain types.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "mlp_hidden":
                value = tuple(int(v) for v in value)
            elif f.name == "item_features":
                value = tuple(str(v) for v in value)
            elif f.name == "catalog":
                value = None if value is None else dict(value)
            elif f.type in ("int", int):
                value = int(value)
            elif f.type in ("float", float):
                value = float(value)
            elif f.type in ("bool", bool):
                value = bool(value)
            object.__setattr__(self, f.name, value)
        self.validate()

    @property
    def id_rows(self) -> int:
        """Rows of the item-id embedding table: one per token (N + 1, padding included) unless hashed."""
        return self.n_items + 1 if self.hashed_ids is False else self.id_buckets

    @property
    def hashed_ids(self) -> bool:
        """Item ids share ``id_buckets`` hashed rows when the catalog has more tokens than that."""
        return 0 < self.id_buckets < self.n_items + 1

    def validate(self) -> None:
        """The rules Keras or the graph below would otherwise enforce mid-build; ValueError names the field."""
        if self.n_items < 1 or self.n_candidates < 1 or self.history_length < 1:
            raise ValueError(f"n_items, n_candidates and history_length must be >= 1, got {self.n_items}, "
                             f"{self.n_candidates}, {self.history_length}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        unknown = [f for f in self.item_features if f not in ITEM_FEATURES]
        if unknown or len(set(self.item_features)) != len(self.item_features):
            raise ValueError(f"item_features must be distinct names from {list(ITEM_FEATURES)}, "
                             f"got {list(self.item_features)}")
        if self.category_features and "category" not in self.item_features:
            raise ValueError("category_features needs 'category' in item_features")
        if self.id_buckets and self.id_buckets < 2:
            raise ValueError(f"id_buckets must be 0 (one row per item) or >= 2, got {self.id_buckets}")

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
        the shop's sizes and catalog."""
        env = cfg.env
        return cls(n_items=env.catalog.n_items, n_candidates=env.n_candidates or env.catalog.n_items,
                   history_length=env.history_length, n_categories=env.catalog.n_categories,
                   catalog=dataclasses.asdict(env.catalog), **dataclasses.asdict(cfg.model))
