"""Interaction logs: one Parquet file, one row per environment step, with exact behaviour probabilities.

These logs are what off-policy evaluation (:mod:`rllib_rec.offpolicy.estimators`) and offline training read. Each
step of the shop offers K candidate slots (item ids) and the policy picks a slot; a row stores the candidates and
the behaviour distribution over them, never anything sized by the catalog. The schema (version
:data:`SCHEMA_VERSION`, stored in the Parquet schema metadata under :data:`VERSION_KEY`; the catalog size N under
:data:`N_ITEMS_KEY`):

====================  ===================================  ===============================================
column                type                                 meaning
====================  ===================================  ===============================================
episode_id            int64                                episode index within the file (0, 1, ...)
episode_seed          int64                                ``ECommerceEnv.reset(seed=...)``: identifies the
                                                           simulated user (same seed -> same user)
step                  int32                                0-based step within the episode
history_items         fixed_size_list<int32>[H]            observation ``items`` (item id + 1; 0 = pad)
history_events        fixed_size_list<int32>[H]            observation ``events`` (envs.response codes)
candidates            fixed_size_list<int32>[K]            observation ``candidates`` (item ids 0..N-1)
candidate_mask        fixed_size_list<int8>[K]             observation ``candidate_mask`` (1 = on offer)
action                int32                                the chosen candidate slot (0..K-1)
item                  int32                                the recommended item: ``candidates[action]``
behaviour_prob        float32                              P(behaviour policy chose ``action`` | obs) > 0
behaviour_dist        list<float32> (length K), nullable   the behaviour policy's full distribution over
                                                           the K slots (null where unknown; a variable-size
                                                           list because pyarrow 25 cannot read back null
                                                           fixed-size-list entries from Parquet)
reward                float32                              the env's reward for this step
event                 int8                                 the event the action produced: 0 PAD 1 ORGANIC
                                                           2 IGNORED 3 VIEW 4 CLICK 5 PURCHASE
terminated            bool                                 the episode ended (churn): do not bootstrap
truncated             bool                                 the episode hit max_steps: bootstrap from next
policy_id             string                               which behaviour policy logged the row
timestamp             timestamp[us, tz=UTC]                wall-clock time the step was logged
next_history_items    fixed_size_list<int32>[H]            the observation after the step (for the last
next_history_events   fixed_size_list<int32>[H]            row of an episode: the env's final observation)
next_candidates       fixed_size_list<int32>[K]
next_candidate_mask   fixed_size_list<int8>[K]
====================  ===================================  ===============================================

H is the env's ``history_length``, K its candidate slots per step (``n_candidates``, or N when every item is a
candidate) and N its ``n_items``; all three are fixed per file, and a row's bytes do not depend on N. Rows of
one episode are consecutive and ordered by step (checked on read; ``collect`` also writes episodes in
``episode_id`` order), so a transition ``(obs, action, reward, next_obs, terminated)`` is one row. Optional
metadata: :data:`ENV_CONFIG_KEY` (JSON of the env config, so a reader can rebuild the simulator) and
:data:`COLLECT_KEY` (JSON: how the file was collected). Extra columns are allowed and ignored.

Version 1 files (item-indexed: ``action_mask``/``next_action_mask`` of N entries, ``action`` = the item, a
``behaviour_dist`` over the N items) are the K = N case of version 2 and are converted on read: candidates =
``0..N-1`` at every step, ``candidate_mask`` = ``action_mask``, ``item`` = ``action``. The converted table
carries :data:`CONVERTED_KEY` in its metadata.

Files are written by :class:`LogWriter` into a temporary file next to the target and renamed into place
only when complete, so a crash never leaves a half-written log under the final name, and an existing
file is never overwritten unless asked. :func:`read_logs` validates everything above and raises
:class:`LogSchemaError` with a one-line message naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from envs import OBS_KEYS
from rllib_rec.errors import LogSchemaError

__all__ = [
    "SCHEMA_VERSION",
    "VERSION_KEY",
    "N_ITEMS_KEY",
    "ENV_CONFIG_KEY",
    "COLLECT_KEY",
    "CONVERTED_KEY",
    "COLUMNS",
    "LogSchemaError",
    "LogDims",
    "log_schema",
    "LogWriter",
    "read_logs",
    "read_metadata",
    "LogArrays",
    "log_arrays",
]

SCHEMA_VERSION = 2
VERSION_KEY = b"rllib_rec.offpolicy.logs.schema_version"
N_ITEMS_KEY = b"rllib_rec.offpolicy.logs.n_items"
ENV_CONFIG_KEY = b"rllib_rec.offpolicy.logs.env_config"
COLLECT_KEY = b"rllib_rec.offpolicy.logs.collect"
CONVERTED_KEY = b"rllib_rec.offpolicy.logs.converted_from"  # on a table read from an older version
DEFAULT_ROW_GROUP_SIZE = 8192

# Scalar columns and their types; list columns are described by (value type, dimension name).
_SCALARS: dict[str, pa.DataType] = {
    "episode_id": pa.int64(),
    "episode_seed": pa.int64(),
    "step": pa.int32(),
    "action": pa.int32(),
    "item": pa.int32(),
    "behaviour_prob": pa.float32(),
    "reward": pa.float32(),
    "event": pa.int8(),
    "terminated": pa.bool_(),
    "truncated": pa.bool_(),
    "policy_id": pa.string(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_LISTS: dict[str, tuple[pa.DataType, str]] = {
    "history_items": (pa.int32(), "H"),
    "history_events": (pa.int32(), "H"),
    "candidates": (pa.int32(), "K"),
    "candidate_mask": (pa.int8(), "K"),
    "behaviour_dist": (pa.float32(), "K"),
    "next_history_items": (pa.int32(), "H"),
    "next_history_events": (pa.int32(), "H"),
    "next_candidates": (pa.int32(), "K"),
    "next_candidate_mask": (pa.int8(), "K"),
}
COLUMNS = (
    "episode_id", "episode_seed", "step", "history_items", "history_events", "candidates", "candidate_mask",
    "action", "item", "behaviour_prob", "behaviour_dist", "reward", "event", "terminated", "truncated",
    "policy_id", "timestamp", "next_history_items", "next_history_events", "next_candidates", "next_candidate_mask",
)
_NULLABLE = {"behaviour_dist"}
# Observation key -> its column (the next observation's columns have the prefix "next_").
OBS_COLUMNS = {"items": "history_items", "events": "history_events", "candidates": "candidates",
               "candidate_mask": "candidate_mask"}
assert tuple(OBS_COLUMNS) == OBS_KEYS

# Version 1 (item-indexed): its columns, and where each version-2 column comes from when converting.
_V1_SCALARS = {k: v for k, v in _SCALARS.items() if k != "item"}
_V1_LISTS: dict[str, tuple[pa.DataType, str]] = {
    "history_items": (pa.int32(), "H"),
    "history_events": (pa.int32(), "H"),
    "action_mask": (pa.int8(), "N"),
    "behaviour_dist": (pa.float32(), "N"),
    "next_history_items": (pa.int32(), "H"),
    "next_history_events": (pa.int32(), "H"),
    "next_action_mask": (pa.int8(), "N"),
}
_V1_COLUMNS = tuple(c for c in COLUMNS if c in _V1_SCALARS or c in _V1_LISTS) + ("action_mask", "next_action_mask")
_V1_SOURCE = {"candidate_mask": "action_mask", "next_candidate_mask": "next_action_mask", "item": "action"}
_ALL_ITEMS = ("candidates", "next_candidates")  # arange(N) at every step of a version-1 log


@dataclass(frozen=True)
class LogDims:
    """A log's sizes: N items in the catalog, K candidate slots per step, H history events; its file version."""

    n_items: int
    n_candidates: int
    history_length: int
    version: int = SCHEMA_VERSION


def log_schema(
    n_items: int, n_candidates: int, history_length: int, metadata: Mapping[bytes, bytes] | None = None
) -> pa.Schema:
    """The Arrow schema of a log for an env with ``n_items`` items, ``n_candidates`` candidate slots per step
    and ``history_length`` history events (N is only metadata: no column is sized by it)."""
    if not 1 <= n_candidates <= n_items:
        raise ValueError(f"n_candidates must be in [1, n_items={n_items}], got {n_candidates}")
    dims = {"H": int(history_length), "K": int(n_candidates)}
    fields = []
    for name in COLUMNS:
        if name in _SCALARS:
            fields.append(pa.field(name, _SCALARS[name], nullable=False))
        else:
            value_type, dim = _LISTS[name]
            typ = pa.list_(value_type) if name in _NULLABLE else pa.list_(value_type, dims[dim])
            fields.append(pa.field(name, typ, nullable=name in _NULLABLE))
    meta = {VERSION_KEY: str(SCHEMA_VERSION).encode(), N_ITEMS_KEY: str(int(n_items)).encode()}
    meta.update(metadata or {})
    return pa.schema(fields, metadata=meta)


def _fixed_list(values: np.ndarray, value_type: pa.DataType, size: int) -> pa.Array:
    """[n, size] numpy -> FixedSizeListArray."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, size)


def _nullable_list(values: np.ndarray, value_type: pa.DataType, valid: np.ndarray) -> pa.Array:
    """[n, size] numpy -> ListArray of length-``size`` lists, null where ``valid`` is False."""
    n, size = values.shape
    counts = np.where(valid, size, 0)
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32))
    flat = pa.array(np.ascontiguousarray(values[valid]).reshape(-1), type=value_type)
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


class LogWriter:
    """Write an interaction log in bounded row groups; the file appears under ``path`` only when complete.

    Use as a context manager::

        with LogWriter("logs.parquet", n_items=10_000, n_candidates=100, history_length=20) as w:
            w.add(episode_id=0, episode_seed=7, step=0, obs=obs, action=3, item=int(obs["candidates"][3]),
                  behaviour_prob=0.1, ...)

    On a clean exit the temporary file is renamed to ``path``; on an exception it is deleted and ``path``
    is untouched. ``path`` must not exist unless ``overwrite=True`` (checked when opening, so a long
    collection fails before it starts, and again when finishing).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_items: int,
        n_candidates: int,
        history_length: int,
        overwrite: bool = False,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        metadata: Mapping[bytes, bytes] | None = None,
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        self.path = Path(path)
        self.dims = LogDims(int(n_items), int(n_candidates), int(history_length))
        self.overwrite = overwrite
        self.row_group_size = row_group_size
        self.schema = log_schema(n_items, n_candidates, history_length, metadata)
        self.rows_written = 0  # rows in row groups already written
        self.rows_added = 0  # rows passed to add()
        self._buf: list[dict[str, Any]] = []
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._finished = False

    # -- context manager ---------------------------------------------------------------------------------------
    def __enter__(self) -> LogWriter:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def open(self) -> None:
        if self._writer is not None:
            return
        self._check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique hidden temp file in the same directory: os.replace is atomic within one filesystem, and two
        # writers aimed at the same path cannot clobber each other's partial output.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp = Path(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the log should get the usual permissions
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema, compression="zstd")

    def _check_target(self) -> None:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path}: already exists; refusing to overwrite it (choose another path "
                                  "or allow overwriting)")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a directory")

    # -- rows ----------------------------------------------------------------------------------------------------
    def add(
        self,
        *,
        episode_id: int,
        episode_seed: int,
        step: int,
        obs: Mapping[str, np.ndarray],
        action: int,
        item: int,
        behaviour_prob: float,
        reward: float,
        event: int,
        terminated: bool,
        truncated: bool,
        next_obs: Mapping[str, np.ndarray],
        policy_id: str,
        behaviour_dist: np.ndarray | None = None,
        timestamp_us: int | None = None,
    ) -> None:
        """Append one step. ``obs``/``next_obs`` are the env's observation dicts (:data:`envs.OBS_KEYS`),
        ``action`` the candidate slot and ``item`` its item id (``info["item"]``)."""
        if self._writer is None:
            self.open()
        row = {
            "episode_id": episode_id, "episode_seed": episode_seed, "step": step, "action": action, "item": item,
            "behaviour_prob": behaviour_prob, "behaviour_dist": behaviour_dist, "reward": reward, "event": event,
            "terminated": terminated, "truncated": truncated, "policy_id": policy_id,
            "timestamp": time.time_ns() // 1000 if timestamp_us is None else timestamp_us,
        }
        for key, column in OBS_COLUMNS.items():
            row[column], row[f"next_{column}"] = obs[key], next_obs[key]
        self._buf.append(row)
        self.rows_added += 1
        if len(self._buf) >= self.row_group_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one row group."""
        if not self._buf or self._writer is None:
            return
        rows, self._buf = self._buf, []
        columns = {f.name: self._column(f, rows) for f in self.schema}
        _check_slots(columns, len(rows))
        self._writer.write_table(pa.Table.from_arrays(list(columns.values()), schema=self.schema))
        self.rows_written += len(rows)

    def _column(self, f: pa.Field, rows: list[dict[str, Any]]) -> pa.Array:
        name = f.name
        if name not in _LISTS:
            return pa.array([r[name] for r in rows], type=f.type)
        value_type, dim = _LISTS[name]
        size = self.dims.history_length if dim == "H" else self.dims.n_candidates
        dtype = value_type.to_pandas_dtype()
        if name in _NULLABLE:
            valid = np.array([r[name] is not None for r in rows])
            vals = np.zeros((len(rows), size), dtype=dtype)
            for i, r in enumerate(rows):
                if r[name] is not None:
                    vals[i] = r[name]
            return _nullable_list(vals, value_type, valid)
        vals = np.stack([np.asarray(r[name]) for r in rows])
        if vals.shape != (len(rows), size):
            raise ValueError(f"{name}: expected rows of length {size}, got shape {vals.shape[1:]}")
        return _fixed_list(vals.astype(dtype, copy=False), value_type, size)

    # -- end -----------------------------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Flush, close and move the file into place; returns the final path."""
        if self._finished:
            return self.path
        if self._writer is None:
            self.open()
        try:
            self.flush()
            assert self._writer is not None and self._tmp is not None
            self._writer.close()
            self._writer = None
            if self.path.exists() and not self.overwrite:
                # Someone created the file while we were writing: keep both, say where ours is.
                raise FileExistsError(f"{self.path}: appeared while writing; refusing to overwrite it "
                                      f"(the new log is kept at {self._tmp})")
            os.replace(self._tmp, self.path)
        except FileExistsError:
            self._finished = True
            raise
        except BaseException:
            self.abort()
            raise
        self._finished = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far (the target path is untouched)."""
        self._buf = []
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
        self._finished = True


def _check_slots(columns: Mapping[str, pa.Array], n_rows: int) -> None:
    """Each row's ``action`` is a valid slot and ``item`` the candidate in it (ValueError: a writer's bug)."""
    problem = _slot_problem(columns, n_rows)
    if problem:
        raise ValueError(problem)


def _slot_problem(columns: Mapping[str, Any], n_rows: int) -> str | None:
    """The first row whose action is not an offered slot or whose item is not that slot's candidate."""
    cands = _flat(columns["candidates"]).reshape(n_rows, -1)  # [n, K]
    mask = _flat(columns["candidate_mask"]).reshape(n_rows, -1)
    action = np.asarray(columns["action"], dtype=np.int64)
    item = np.asarray(columns["item"], dtype=np.int64)
    k = cands.shape[1]
    bad = np.flatnonzero((action < 0) | (action >= k))
    if bad.size:
        return f"row {bad[0]}: action {action[bad[0]]} is not a candidate slot in [0, {k})"
    rows = np.arange(n_rows)
    bad = np.flatnonzero(mask[rows, action] == 0)
    if bad.size:
        return f"row {bad[0]}: action {action[bad[0]]} is a masked candidate slot"
    bad = np.flatnonzero(cands[rows, action] != item)
    if bad.size:
        i = bad[0]
        return f"row {i}: item {item[i]} is not the candidate in slot {action[i]} (that is {cands[i, action[i]]})"
    return None


def _flat(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a fixed-size-list column as one flat numpy array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise LogSchemaError(f"{path}: no such file")
    if path.is_dir():
        raise LogSchemaError(f"{path}: is a directory, not a Parquet log file")
    try:
        return pq.ParquetFile(str(path))
    except (pa.ArrowException, OSError) as e:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PAR1":  # starts like Parquet, but the footer is gone or damaged
            raise LogSchemaError(f"{path}: truncated or corrupt Parquet file ({_short(e)})") from None
        raise LogSchemaError(f"{path}: not a Parquet file") from None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:160]


def check_schema(schema: pa.Schema, where: str) -> LogDims:
    """Validate ``schema`` against this module's (version 2, or version 1 to be converted); returns its sizes."""
    meta = schema.metadata or {}
    if VERSION_KEY not in meta:
        raise LogSchemaError(f"{where}: not an rllib-rec interaction log (no {VERSION_KEY.decode()} in the "
                             "Parquet schema metadata)")
    version = meta[VERSION_KEY].decode(errors="replace")
    if version == "1":  # item-indexed: K = N, converted on read
        dims = _check_columns(schema, where, _V1_SCALARS, _V1_LISTS, _V1_COLUMNS)
        return LogDims(dims["N"], dims["N"], dims["H"], version=1)
    if version != str(SCHEMA_VERSION):
        raise LogSchemaError(f"{where}: log schema version {version!r}, this rllib-rec reads versions 1 and "
                             f"{SCHEMA_VERSION}")
    dims = _check_columns(schema, where, _SCALARS, _LISTS, COLUMNS)
    n_items = _n_items(meta, where)
    if n_items < dims["K"]:
        raise LogSchemaError(f"{where}: {dims['K']} candidate slots per step but only {n_items} items "
                             f"({N_ITEMS_KEY.decode()})")
    return LogDims(n_items, dims["K"], dims["H"])


def _n_items(meta: Mapping[bytes, bytes], where: str) -> int:
    """The catalog size N from the schema metadata."""
    raw = meta.get(N_ITEMS_KEY)
    if raw is None:
        raise LogSchemaError(f"{where}: no {N_ITEMS_KEY.decode()} (the catalog size) in the Parquet schema metadata")
    try:
        n_items = int(raw.decode())
    except ValueError:
        n_items = 0
    if n_items < 1:
        raise LogSchemaError(f"{where}: {N_ITEMS_KEY.decode()} must be a positive integer, got "
                             f"{raw.decode(errors='replace')!r}")
    return n_items


def _check_columns(
    schema: pa.Schema,
    where: str,
    scalars: Mapping[str, pa.DataType],
    lists: Mapping[str, tuple[pa.DataType, str]],
    columns: tuple[str, ...],
) -> dict[str, int]:
    """Every column present with its type, and list columns of one dimension of equal length; the lengths."""
    names = set(schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise LogSchemaError(f"{where}: missing column {missing[0]!r}"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    dims: dict[str, int] = {}
    for name in columns:
        typ = schema.field(name).type
        if name in scalars:
            if typ != scalars[name]:
                raise LogSchemaError(f"{where}: column {name!r} has type {typ}, expected {scalars[name]}")
            continue
        value_type, dim = lists[name]
        if name in _NULLABLE:  # variable-size list; its entries' lengths are checked on read
            if not pa.types.is_list(typ) or typ.value_type != value_type:
                raise LogSchemaError(f"{where}: column {name!r} has type {typ}, expected list<{value_type}>")
            continue
        if not pa.types.is_fixed_size_list(typ) or typ.value_type != value_type:
            raise LogSchemaError(f"{where}: column {name!r} has type {typ}, expected "
                                 f"fixed_size_list<{value_type}>")
        size = typ.list_size
        if dims.setdefault(dim, size) != size:
            raise LogSchemaError(f"{where}: column {name!r} has length {size}, other columns say {dims[dim]}")
    return dims


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The log's metadata without reading its rows: ``{"schema_version" (of the file: 1 is converted on read),
    "n_items", "n_candidates", "history_length", "num_rows", "env_config" (dict or None), "collect" (dict or
    None)}``."""
    p = Path(path)
    pf = _open(p)
    dims = check_schema(pf.schema_arrow, str(p))
    meta = pf.schema_arrow.metadata or {}
    return {
        "schema_version": dims.version,
        "n_items": dims.n_items,
        "n_candidates": dims.n_candidates,
        "history_length": dims.history_length,
        "num_rows": pf.metadata.num_rows,
        "env_config": _json_meta(meta, ENV_CONFIG_KEY, p),
        "collect": _json_meta(meta, COLLECT_KEY, p),
    }


def _json_meta(meta: Mapping[bytes, bytes], key: bytes, path: Path) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except ValueError:
        raise LogSchemaError(f"{path}: metadata {key.decode()} is not valid JSON") from None


def read_logs(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read and validate an interaction log (all columns, or ``columns``), as a version-2 table: a version-1
    file is converted (see the module docstring)."""
    p = Path(path)
    pf = _open(p)
    dims = check_schema(pf.schema_arrow, str(p))
    try:
        table = _convert_v1(pf, dims, columns) if dims.version == 1 else pf.read(columns=columns)
    except (pa.ArrowException, OSError) as e:
        raise LogSchemaError(f"{p}: corrupt Parquet data ({_short(e)})") from None
    _check_rows(table, dims, p)
    return table


def _convert_v1(pf: pq.ParquetFile, dims: LogDims, columns: list[str] | None) -> pa.Table:
    """A version-1 (item-indexed) file as the version-2 table of the same steps: K = N slots, slot i = item i."""
    wanted = list(COLUMNS) if columns is None else list(columns)
    sources = sorted({_V1_SOURCE.get(c, c) for c in wanted if c not in _ALL_ITEMS})
    v1 = pf.read(columns=sources)
    meta = dict(pf.schema_arrow.metadata or {})
    meta.update({VERSION_KEY: str(SCHEMA_VERSION).encode(), CONVERTED_KEY: b"1"})
    schema = log_schema(dims.n_items, dims.n_candidates, dims.history_length, meta)
    n, n_items = pf.metadata.num_rows, dims.n_items
    fields, arrays = [], []
    for name in wanted:
        if name in _ALL_ITEMS:
            arr: pa.Array | pa.ChunkedArray = _fixed_list(
                np.tile(np.arange(n_items, dtype=np.int32), n), pa.int32(), n_items)
        else:
            arr = v1.column(_V1_SOURCE.get(name, name))
        field = schema.field(name) if name in COLUMNS else v1.schema.field(name)
        fields.append(field)
        arrays.append(arr if arr.type == field.type else arr.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def _check_rows(table: pa.Table, dims: LogDims, path: Path) -> None:
    """Row-level checks of whatever columns were read: episode order, slot/item consistency, id ranges."""
    names = set(table.column_names)
    if {"episode_id", "step"} <= names:
        _check_order(table, path)
    if "behaviour_dist" in names:
        lengths = pc.list_value_length(table.column("behaviour_dist")).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isnan(lengths.astype(float)) & (lengths != dims.n_candidates))
        if bad.size:
            raise LogSchemaError(f"{path}: row {bad[0]}: behaviour_dist has {int(lengths[bad[0]])} entries, "
                                 f"expected {dims.n_candidates} (one per candidate slot)")
    if table.num_rows == 0:
        return
    for name in ("candidates", "next_candidates", "item"):
        if name in names:
            ids = _flat(table.column(name)) if name != "item" else table.column(name).to_numpy()
            if ids.min() < 0 or ids.max() >= dims.n_items:
                bad_id = ids.min() if ids.min() < 0 else ids.max()
                raise LogSchemaError(f"{path}: column {name!r} holds item id {bad_id}, outside the catalog "
                                     f"[0, {dims.n_items})")
    if {"candidates", "candidate_mask", "action", "item"} <= names:
        problem = _slot_problem({c: table.column(c) for c in ("candidates", "candidate_mask")}
                                | {c: table.column(c).to_numpy() for c in ("action", "item")}, table.num_rows)
        if problem:
            raise LogSchemaError(f"{path}: {problem}")


def _check_order(table: pa.Table, path: Path) -> None:
    """Rows of an episode must be consecutive and ordered 0, 1, 2, ... (transitions are row-local)."""
    if table.num_rows == 0:
        return
    ep = table.column("episode_id").to_numpy()
    step = table.column("step").to_numpy()
    new_ep = np.r_[True, ep[1:] != ep[:-1]]
    expected = np.arange(len(ep)) - np.maximum.accumulate(np.where(new_ep, np.arange(len(ep)), 0))
    bad = np.flatnonzero(step != expected)
    if bad.size:
        i = int(bad[0])
        raise LogSchemaError(f"{path}: row {i}: episode {ep[i]} step {step[i]} out of order (expected step "
                             f"{expected[i]}; an episode's rows must be consecutive and ordered by step)")
    starts = ep[new_ep]
    if np.unique(starts).size != starts.size:
        raise LogSchemaError(f"{path}: an episode_id appears in two separate runs of rows")


# ---------------------------------------------------------------------------------------------- numpy view


@dataclass
class LogArrays:
    """A log as numpy arrays (dtypes of the env's observation space; ``n`` rows, ``K`` candidate slots, ``H``
    history events, catalog of ``n_items`` items).

    ``obs``/``next_obs`` are dicts with the observation's keys (:data:`envs.OBS_KEYS`): ``items`` [n, H] int32,
    ``events`` [n, H] int32, ``candidates`` [n, K] int32 and ``candidate_mask`` [n, K] int8, i.e. exactly what
    the env returned, ready for a module's ``forward`` or a replay buffer. ``action`` is the slot, ``item`` the
    item in it. ``behaviour_dist`` is [n, K] float32 with NaN rows where the file has null, or None if all
    are null. All arrays are writable copies.
    """

    episode_id: np.ndarray  # [n] int64
    episode_seed: np.ndarray  # [n] int64
    step: np.ndarray  # [n] int32
    obs: dict[str, np.ndarray]
    action: np.ndarray  # [n] int32: candidate slot
    item: np.ndarray  # [n] int32: obs["candidates"][i, action[i]]
    behaviour_prob: np.ndarray  # [n] float32
    behaviour_dist: np.ndarray | None  # [n, K] float32
    reward: np.ndarray  # [n] float32
    event: np.ndarray  # [n] int8
    terminated: np.ndarray  # [n] bool
    truncated: np.ndarray  # [n] bool
    next_obs: dict[str, np.ndarray]
    policy_id: np.ndarray  # [n] object (str)
    n_items: int  # N, the catalog size

    @property
    def n_rows(self) -> int:
        return len(self.action)

    @property
    def n_candidates(self) -> int:
        return self.obs["candidates"].shape[1]

    @property
    def history_length(self) -> int:
        return self.obs["items"].shape[1]

    @property
    def done(self) -> np.ndarray:
        """Episode ended (terminated or truncated). Bootstrap targets should use ``terminated`` only."""
        return self.terminated | self.truncated


_OBS_DTYPES = {"items": np.int32, "events": np.int32, "candidates": np.int32, "candidate_mask": np.int8}


def _list_to_numpy(col: pa.ChunkedArray, dtype: np.dtype, size: int | None = None) -> np.ndarray:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    size = arr.type.list_size if size is None else size
    if arr.null_count:
        out = np.full((len(arr), size), np.nan, dtype=dtype)
        valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
        # flatten() drops null entries and honours slicing offsets (unlike .values).
        out[valid] = arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, size)
        return out
    # A copy: Arrow's zero-copy views are read-only, and torch/replay code may write into these arrays.
    return np.array(arr.flatten().to_numpy(zero_copy_only=False), dtype=dtype).reshape(len(arr), size)


def log_arrays(table: pa.Table) -> LogArrays:
    """Turn a table from :func:`read_logs` into numpy arrays for estimators and offline training."""

    def col(name: str, dtype: Any) -> np.ndarray:
        return np.array(table.column(name).to_numpy(), dtype=dtype)  # writable copy

    def obs(prefix: str) -> dict[str, np.ndarray]:
        return {key: _list_to_numpy(table.column(prefix + column), _OBS_DTYPES[key])
                for key, column in OBS_COLUMNS.items()}

    dist_col = table.column("behaviour_dist")
    n_candidates = table.schema.field("candidates").type.list_size
    dist = None if dist_col.null_count == len(dist_col) else _list_to_numpy(dist_col, np.float32, n_candidates)
    return LogArrays(
        episode_id=col("episode_id", np.int64),
        episode_seed=col("episode_seed", np.int64),
        step=col("step", np.int32),
        obs=obs(""),
        action=col("action", np.int32),
        item=col("item", np.int32),
        behaviour_prob=col("behaviour_prob", np.float32),
        behaviour_dist=dist,
        reward=col("reward", np.float32),
        event=col("event", np.int8),
        terminated=table.column("terminated").to_numpy(zero_copy_only=False).astype(bool),
        truncated=table.column("truncated").to_numpy(zero_copy_only=False).astype(bool),
        next_obs=obs("next_"),
        policy_id=table.column("policy_id").to_numpy(zero_copy_only=False),
        n_items=_n_items(table.schema.metadata or {}, "log table"),
    )
