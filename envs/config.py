"""Simulator configuration: one dataclass per part (catalog, users, response, rewards) and presets.

Every mechanism of the shop can be switched off here, which is how the tests prove each one matters.
Each field carries its documentation and bounds (``min``/``max``/``gt``) as metadata; the service validates
types and bounds against them (``rllib_rec.config.schema``) before a config reaches the simulator. Here,
:func:`make_env_config` only resolves the preset, refuses unknown keys and checks the cross-field rules
(:meth:`EnvConfig.validate`), so the simulator stays free of the service.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "CatalogConfig",
    "UserConfig",
    "ResponseConfig",
    "RewardConfig",
    "EnvConfig",
    "EnvConfigError",
    "PRESETS",
    "resolve_preset",
    "make_env_config",
]


class EnvConfigError(ValueError):
    """An env config key is unknown or inconsistent; ``path`` names the key and ``problem`` says why."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}" if path else problem)


def spec(default: Any, doc: str, **bounds: Any) -> Any:
    """A dataclass field with its documentation and bounds (``min``/``max``/``gt``) as metadata."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, list):  # dataclasses refuse shared mutable defaults
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CatalogConfig:
    n_items: int = spec(30, "number of products (the env offers K candidates of them per step)", min=2, max=10_000_000)
    n_categories: int = spec(6, "product categories; users' interests are over categories", min=1, max=100_000)
    popularity_exponent: float = spec(1.0, "Zipf exponent of item popularity (0 = uniform)", min=0.0, max=5.0)
    clickbait_fraction: float = spec(0.25, "share of items that are clickbait (appealing, low quality)", min=0.0, max=1.0)
    clickbait_appeal: float = spec(1.6, "click-appeal multiplier of clickbait items", min=0.0, max=10.0)
    clickbait_quality: float = spec(0.05, "quality of clickbait items", min=0.0, max=1.0)
    seed: int = spec(0, "seed of the (fixed) catalog and of the demographics->interest map", min=0)


@dataclass
class UserConfig:
    n_locations: int = spec(5, "number of user locations (demographic)", min=1, max=100)
    demographics: bool = spec(True, "demographics set a prior over category interests (off: uniform prior)")
    interest_sharpness: float = spec(2.0, "scale of interest logits: higher = more focused users", min=0.0, max=20.0)
    click_propensity: list[float] = spec(
        [0.35, 0.65], "[low, high] of initial click propensity", min=0.0, max=1.0
    )
    purchase_propensity: list[float] = spec([0.3, 0.7], "[low, high] of initial purchase propensity", min=0.0, max=1.0)
    patience: list[float] = spec([6.0, 12.0], "[low, high] of initial patience (session ends at 0)", min=0.0, max=1e6)
    initial_history: list[int] = spec([3, 8], "[low, high] number of organic browse events before the first step", min=0)

    def validate(self) -> None:
        for name in ("click_propensity", "purchase_propensity", "patience", "initial_history"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise EnvConfigError(name, f"must be [low, high] with low <= high, got {list(lo_hi)}")


@dataclass
class ResponseConfig:
    model: Literal["funnel", "notebook"] = spec(
        "funnel", "'funnel': view->click->purchase shop; 'notebook': the seed notebook's click model"
    )
    views: bool = spec(True, "noticed-but-not-clicked recommendations are 'view' events (off: shown-ignored)")
    purchases: bool = spec(True, "clicks can convert into purchases")
    fatigue: bool = spec(True, "repeated categories/items lose appeal")
    interest_drift: bool = spec(True, "interest moves toward what the user engages with")
    interest_shift: bool = spec(True, "occasionally the user's intent jumps to a new category")
    churn: bool = spec(True, "patience falls on ignored/clickbait recommendations; session ends at 0")
    engagement_growth: bool = spec(True, "clicks raise click propensity; quality raises purchase propensity")
    organic_browsing: bool = spec(True, "the user sometimes browses on their own (visible in history)")
    view_base: float = spec(0.1, "probability of noticing an item of no interest", min=0.0, max=1.0)
    view_gain: float = spec(0.85, "extra notice probability for a fully matching item", min=0.0, max=1.0)
    fatigue_rate: float = spec(0.35, "fatigue added to a category each time it is shown", min=0.0)
    fatigue_decay: float = spec(0.8, "per-step multiplicative decay of fatigue", min=0.0, max=1.0)
    repeat_window: int = spec(3, "an item shown again within this many steps is penalised", min=0)
    repeat_penalty: float = spec(0.3, "appeal multiplier of a recently shown item", min=0.0, max=1.0)
    drift_rate: float = spec(0.1, "interest moved toward a clicked category", min=0.0, max=1.0)
    shift_prob: float = spec(0.03, "per-step probability of an interest shift", min=0.0, max=1.0)
    shift_strength: float = spec(0.7, "weight of the new category after a shift", min=0.0, max=1.0)
    organic_prob: float = spec(0.25, "per-step probability of an organic browse event", min=0.0, max=1.0)
    ignore_cost: float = spec(1.0, "patience lost when a recommendation is ignored", min=0.0)
    view_cost: float = spec(0.2, "patience lost when an item is viewed but not clicked", min=0.0)
    quality_gain: float = spec(4.0, "patience change on click = quality_gain * (quality - 0.5)", min=0.0)
    purchase_gain: float = spec(0.5, "patience gained on purchase", min=0.0)
    click_growth: float = spec(0.05, "click propensity gained per click", min=0.0, max=1.0)
    trust_growth: float = spec(0.5, "purchase propensity change per click = trust_growth * (quality - 0.5)", min=0.0)
    notebook_match_click: list[float] = spec(
        [0.4, 0.5], "notebook model: click prob on the matching item = a + b * propensity", min=0.0, max=1.0
    )
    notebook_other_click: float = spec(0.1, "notebook model: click prob on any other item", min=0.0, max=1.0)
    notebook_organic_match: float = spec(
        0.6, "notebook model: probability that an organic browse is the user's matching item", min=0.0, max=1.0
    )


@dataclass
class RewardConfig:
    none: float = spec(0.0, "reward of an ignored recommendation")
    view: float = spec(0.2, "reward of a view")
    click: float = spec(1.0, "reward of a click")
    purchase: float = spec(2.0, "reward of a purchase (the click is included)")


@dataclass
class EnvConfig:
    preset: Literal["seed", "default", "large", "xl", "custom"] = spec("default", "preset the other fields start from")
    history_length: int = spec(20, "events in the observation (left-padded)", min=1, max=512)
    max_steps: int = spec(50, "episode length cap (truncation)", min=1, max=100_000)
    n_candidates: int = spec(
        0, "K: candidate slots per step, the action is a slot index (0 = K = n_items: every item, slot = item id)", min=0
    )
    n_featured: int = spec(10, "with n_candidates: most popular items, in the first slots of every step", min=1)
    candidates_popular: float = spec(
        0.4, "with n_candidates: share of the non-featured slots drawn by popularity", min=0.0, max=1.0
    )
    candidates_related: float = spec(
        0.4,
        "with n_candidates: share of the non-featured slots related to the recent history (same-category items "
        "by popularity and co-visited neighbours; popular draws for a cold-start history)",
        min=0.0,
        max=1.0,
    )
    candidates_uniform: float = spec(
        0.2, "with n_candidates: share of the non-featured slots drawn uniformly over the catalog", min=0.0, max=1.0
    )
    candidates_history: int = spec(
        5, "with n_candidates: most recent engaged history items (not ignored) the related share is drawn around",
        min=1, max=512,
    )
    item_dropout: float = spec(
        0.0, "probability that an item is out of stock for a whole session (one featured item stays)", min=0.0, max=0.95
    )
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    users: UserConfig = field(default_factory=UserConfig)
    response: ResponseConfig = field(default_factory=ResponseConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)

    @property
    def n_slots(self) -> int:
        """Candidate slots per step: ``n_candidates``, or every item when it is 0."""
        return self.n_candidates or self.catalog.n_items

    def validate(self) -> None:
        if self.n_candidates > self.catalog.n_items:
            raise EnvConfigError("n_candidates", f"must be <= catalog.n_items ({self.catalog.n_items}), got {self.n_candidates}")
        if self.n_candidates and self.n_featured > self.n_candidates:
            raise EnvConfigError("n_featured", f"must be <= n_candidates ({self.n_candidates}), got {self.n_featured}")
        shares = {"candidates_popular": self.candidates_popular, "candidates_related": self.candidates_related,
                  "candidates_uniform": self.candidates_uniform}
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise EnvConfigError(name, f"must be in [0, 1], got {share}")
        if abs(sum(shares.values()) - 1.0) > 1e-6:
            raise EnvConfigError(
                "candidates_uniform",
                "candidates_popular + candidates_related + candidates_uniform must be 1, got "
                + " + ".join(f"{v:g}" for v in shares.values()),
            )
        if self.catalog.n_categories > self.catalog.n_items:
            raise EnvConfigError(
                "catalog.n_categories", f"must be <= catalog.n_items ({self.catalog.n_items}), got {self.catalog.n_categories}"
            )
        if self.response.model == "notebook" and self.catalog.n_items < self.users.n_locations:
            raise EnvConfigError(
                "catalog.n_items", f"notebook model needs one item per location (>= {self.users.n_locations})"
            )


# Presets are overrides on top of the dataclass defaults (which are the `default` preset).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # The seed notebook's dynamics: 10 products, 5 locations, click 0.4 + 0.5*propensity on the product that
    # matches the user's location else 0.1, 20 steps, clicks only. Unlike the notebook, the observation is
    # informative: it shows which recommendations were ignored, and the session starts with 2-4 organic
    # browses (60% of them of the matching product), so the user's intent can be inferred.
    "seed": {
        "max_steps": 20,
        "catalog": {"n_items": 10, "n_categories": 10, "clickbait_fraction": 0.0},
        "users": {"initial_history": [2, 4], "click_propensity": [0.0, 1.0]},
        "response": {
            "model": "notebook",
            "click_growth": 0.1,
            "views": False,
            "purchases": False,
            "fatigue": False,
            "interest_drift": False,
            "interest_shift": False,
            "churn": False,
            "organic_browsing": False,
        },
        "rewards": {"view": 0.0, "purchase": 0.0},
    },
    # A 10k-item catalog: each step offers K = 100 candidates (10 featured best-sellers, then 40% by popularity,
    # 40% related to the recent history, 20% uniformly at random).
    "large": {
        "n_candidates": 100,
        "catalog": {"n_items": 10_000, "n_categories": 50},
    },
    # A shop at catalog scale: 1,000,000 items in 1,000 categories, the same K = 100 candidates per step.
    "xl": {
        "n_candidates": 100,
        "catalog": {"n_items": 1_000_000, "n_categories": 1_000},
    },
    "custom": {},
}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_preset(data: Mapping[str, Any] | str | None, path: str = "") -> dict[str, Any]:
    """The preset's overrides with ``data`` merged on top (a preset name alone is ``{"preset": name}``)."""
    if data is None:
        data = {}
    if isinstance(data, str):
        data = {"preset": data}
    if not isinstance(data, Mapping):
        raise EnvConfigError(path, f"expected a mapping or preset name, got {type(data).__name__}")
    preset = data.get("preset", "default")
    if preset not in PRESETS:
        key = f"{path}.preset" if path else "preset"
        raise EnvConfigError(key, f"must be one of {list(PRESETS)}, got {preset!r}")
    return _merge(PRESETS[preset], data)


def _construct(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """Nested dataclasses from a mapping; unknown keys are errors (types and bounds are the caller's)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - names)
    if unknown:
        raise EnvConfigError(f"{path}.{unknown[0]}" if path else unknown[0],
                             f"unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        sub = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, Mapping):
                raise EnvConfigError(sub, f"expected a mapping, got {type(value).__name__}")
            value = _construct(hints[name], value, sub)
        kwargs[name] = value
    return cls(**kwargs)


def make_env_config(data: EnvConfig | Mapping[str, Any] | str | None = None, path: str = "") -> EnvConfig:
    """Resolve a preset name, a (partial) mapping with an optional ``preset`` key, or an EnvConfig."""
    if isinstance(data, EnvConfig):
        return data
    cfg = _construct(EnvConfig, resolve_preset(data, path), path)
    for part in (cfg.users, cfg):
        part.validate()
    return cfg
