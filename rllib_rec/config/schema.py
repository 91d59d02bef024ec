"""Typed, validated configuration objects built from plain dicts (YAML, CLI overrides, RLlib env_config).

Dataclass fields carry their constraints in ``metadata``: ``min``/``max`` (inclusive), ``gt`` (strict lower
bound), ``choices``, ``pattern`` (a string must match this regular expression in full; ``pattern_doc`` says
what that means in words) and ``doc``. :func:`build` turns a nested mapping into nested dataclasses and raises
:class:`ConfigError` whose message names the key path and the problem, in one line. This module is shared
by every section of the experiment config, the simulator's (``envs.config``) included: the simulator's
dataclasses carry the same metadata, and this module is what checks it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from envs.config import EnvConfigError
from rllib_rec.errors import ConfigError

__all__ = ["ConfigError", "SAFE_NAME", "SAFE_NAME_DOC", "spec", "build", "to_dict", "flatten", "merge_dicts"]

T = TypeVar("T")

# Values that become a file or directory name (run names, sweep names): no separators, no "..", no
# leading dot or dash, nothing a shell or an object store treats specially. Such a name can only resolve
# to a direct child of its base directory.
SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
SAFE_NAME_DOC = ("must be 1-100 characters of A-Z a-z 0-9 . _ - starting with a letter or digit "
                 "(it names a directory)")


def spec(default: Any, doc: str, **bounds: Any) -> Any:
    """A dataclass field with its documentation and bounds (``min``/``max``/``gt``/``choices``/``pattern``) as
    metadata."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, list):  # dataclasses refuse shared mutable defaults
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow only lossless coercions (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(e.problem)
        raise ConfigError(path, "; ".join(errors))
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(path, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(path, f"expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(path, f"expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(path, f"expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(path, f"unsupported type {_type_name(tp)}")


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(path, f"must be one of {list(meta['choices'])}, got {value!r}")
    if "pattern" in meta and isinstance(value, str) and not re.fullmatch(meta["pattern"], value):
        raise ConfigError(path, f"{meta.get('pattern_doc') or 'must match ' + meta['pattern']}, got {value!r}")
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if "min" in meta and v < meta["min"]:
            raise ConfigError(path, f"must be >= {meta['min']}, got {v!r}")
        if "max" in meta and v > meta["max"]:
            raise ConfigError(path, f"must be <= {meta['max']}, got {v!r}")
        if "gt" in meta and not v > meta["gt"]:
            raise ConfigError(path, f"must be > {meta['gt']}, got {v!r}")


def build(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, validating every field; missing fields take defaults.

    Unknown keys are errors (they are almost always typos). A dataclass may define
    ``validate(self) -> None`` for cross-field checks; it raises ``ConfigError`` with paths relative to
    the dataclass, which are prefixed here.
    """
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = to_dict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(key, f"unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{path}.{name}" if path else name
        value = _coerce(data[name], hints[name], key)
        _check_bounds(value, f.metadata, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults must satisfy bounds too (guards preset typos)
        if name not in kwargs:
            _check_bounds(getattr(obj, name), f.metadata, f"{path}.{name}" if path else name)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except (ConfigError, EnvConfigError) as e:
            if path and not e.path.startswith(path + "."):
                raise ConfigError(f"{path}.{e.path}", e.problem) from None
            raise ConfigError(e.path, e.problem) from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain nested dict/list (tuples become lists, so the result is YAML/JSON friendly)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values; ``sep="/"`` gives Tune's keys)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def merge_dicts(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``over`` replaces; inputs are not modified."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
