"""The Open Bandit Dataset samples: real logged bandit feedback for checking the OPE estimators.

Open Bandit Dataset (Saito, Aihara, Matsutani, Narita: "Open Bandit Dataset and Pipeline", NeurIPS
Datasets & Benchmarks 2021; ZOZO, Inc.): ZOZOTOWN fashion recommendations, 80 items shown in 3 slate
positions, clicks as rewards, with the logging policy's propensities. The 10,000-row samples for the
uniform-random and Bernoulli Thompson Sampling (BTS) logging policies, campaign "all", ship with the
``obp`` 0.5.7 package under the Apache License 2.0, together with the BTS policy's (80 items, 3 positions)
action distribution.

Two layouts are read:

* obp's CSV layout (as in ``../shared/data/obd``): ``DIR/{random,bts}/all/all.csv`` and
  ``DIR/bts_all_eval_policy_action_dist.npy``;
* the compact copy written by :func:`write_compact` (``tests/data/obd``): ``DIR/{random,bts}_all.parquet``
  with only the columns used here, and the same ``.npy``.

As obp does, rows are sorted by timestamp and positions are made 0-based. The target policy's
probability for a row is taken at the row's logged position: ``pi[i, a] = action_dist[a, position_i]``.

In the terms of the candidate-set logs (:mod:`rllib_rec.offpolicy.logs`, version 2) every row offers all 80
items as its candidates, K = N = 80 with slot ``a`` = item ``a``: :attr:`OBDLogs.action` is the slot,
:attr:`OBDLogs.candidates` the item ids, and the estimators see the same [rows, K] arrays as on simulated logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rllib_rec.errors import OBDError
from rllib_rec.offpolicy.estimators import Estimate, TabularRewardModel, estimate, mean_with_ci, position_key

__all__ = [
    "N_ITEMS",
    "N_CANDIDATES",
    "N_POSITIONS",
    "BEHAVIOURS",
    "OBDError",
    "OBDLogs",
    "load_obd",
    "load_bts_action_dist",
    "write_compact",
    "evaluate_obd",
]

N_ITEMS = 80
N_CANDIDATES = N_ITEMS  # every item is a candidate at every row: slot a = item a
N_POSITIONS = 3
BEHAVIOURS = ("random", "bts")
USER_FEATURES = tuple(f"user_feature_{k}" for k in range(4))
COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES)
ACTION_DIST_FILE = "bts_{campaign}_eval_policy_action_dist.npy"




@dataclass
class OBDLogs:
    """One logging policy's rows, sorted by timestamp (``n`` rows)."""

    behaviour: str  # "random" or "bts"
    timestamp: np.ndarray  # [n] datetime64[ns] (UTC)
    item_id: np.ndarray  # [n] int64 in [0, 80)
    position: np.ndarray  # [n] int64 in [0, 3) (0-based)
    click: np.ndarray  # [n] int64 0/1
    pscore: np.ndarray  # [n] float64: the logging policy's probability of (item, position)
    user_features: np.ndarray  # [n, 4] int64 category codes of the hashed user features

    @property
    def n_rows(self) -> int:
        return len(self.item_id)

    @property
    def action(self) -> np.ndarray:
        """[n] the logged candidate slot: the item id (all 80 items are the candidates)."""
        return self.item_id

    @property
    def candidates(self) -> np.ndarray:
        """[n, 80] the candidates' item ids at every row: 0..79 (a read-only broadcast view)."""
        return np.broadcast_to(np.arange(N_CANDIDATES, dtype=np.int64), (self.n_rows, N_CANDIDATES))


def _paths(directory: Path, behaviour: str, campaign: str) -> tuple[Path, Path]:
    return directory / f"{behaviour}_{campaign}.parquet", directory / behaviour / campaign / "all.csv"


def _read_table(directory: Path, behaviour: str, campaign: str) -> tuple[pa.Table, Path]:
    compact, csv = _paths(directory, behaviour, campaign)
    try:
        if compact.is_file():
            return pq.read_table(compact, columns=list(COLUMNS)), compact
        if csv.is_file():
            opts = pacsv.ConvertOptions(include_columns=list(COLUMNS))  # skips the 80 affinity columns
            return pacsv.read_csv(csv, convert_options=opts), csv
    except (pa.ArrowException, OSError) as e:
        path = compact if compact.is_file() else csv
        raise OBDError(f"{path}: unreadable Open Bandit Dataset file ({' '.join(str(e).split())[:160]})") from None
    raise OBDError(f"{directory}: no Open Bandit Dataset logs for {behaviour!r} (looked for {compact.name} and "
                   f"{behaviour}/{campaign}/all.csv)")


def _directory(directory: str | os.PathLike[str]) -> Path:
    """``directory`` as a Path, or an OBDError naming it if it is not a directory (rather than naming the
    first file that is then not found in it)."""
    d = Path(directory)
    if not d.is_dir():
        why = "no such directory" if not d.exists() else "not a directory"
        raise OBDError(f"{directory}: {why} (give the Open Bandit Dataset directory: obp's CSV layout or the "
                       "compact copy in tests/data/obd)")
    return d


def load_obd(directory: str | os.PathLike[str], behaviour: str, campaign: str = "all") -> OBDLogs:
    """Load the ``behaviour`` ("random" or "bts") logs of ``campaign`` from ``directory`` (either layout)."""
    if behaviour not in BEHAVIOURS:
        raise OBDError(f"unknown OBD behaviour policy {behaviour!r} (choose from {', '.join(BEHAVIOURS)})")
    table, path = _read_table(_directory(directory), behaviour, campaign)
    try:
        ts = table.column("timestamp")
        if not pa.types.is_timestamp(ts.type):
            ts = pc.cast(ts, pa.timestamp("ns", tz="UTC"))
        order = np.argsort(ts.to_numpy().astype("datetime64[ns]"), kind="stable")  # obp sorts by timestamp
        def ints(name: str) -> np.ndarray:
            return table.column(name).to_numpy().astype(np.int64)[order]
        feats = np.stack([
            pc.dictionary_encode(pc.cast(table.column(f), pa.string())).combine_chunks().indices.to_numpy()
            .astype(np.int64)[order]
            for f in USER_FEATURES
        ], axis=1)
        logs = OBDLogs(
            behaviour=behaviour,
            timestamp=ts.to_numpy().astype("datetime64[ns]")[order],
            item_id=ints("item_id"),
            position=ints("position") - 1,  # the files count positions from 1
            click=ints("click"),
            pscore=table.column("propensity_score").to_numpy().astype(np.float64)[order],
            user_features=feats,
        )
    except (KeyError, pa.ArrowException, ValueError) as e:
        raise OBDError(f"{path}: malformed Open Bandit Dataset file ({' '.join(str(e).split())[:160]})") from None
    problems = [
        (logs.item_id.min() < 0 or logs.item_id.max() >= N_ITEMS, f"item_id outside [0, {N_ITEMS})"),
        (logs.position.min() < 0 or logs.position.max() >= N_POSITIONS, f"position outside [1, {N_POSITIONS}]"),
        (not np.isin(logs.click, (0, 1)).all(), "click not 0/1"),
        (not ((logs.pscore > 0) & (logs.pscore <= 1)).all(), "propensity_score outside (0, 1]"),
    ]
    for bad, what in problems:
        if bad:
            raise OBDError(f"{path}: {what}")
    return logs


def load_bts_action_dist(directory: str | os.PathLike[str], campaign: str = "all") -> np.ndarray:
    """The Bernoulli-TS policy's action distribution, (80 items, 3 positions), each position summing to 1."""
    path = _directory(directory) / ACTION_DIST_FILE.format(campaign=campaign)
    try:
        dist = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise OBDError(f"{path}: cannot read the BTS action distribution ({type(e).__name__})") from None
    if dist.shape != (N_ITEMS, N_POSITIONS) or not np.allclose(dist.sum(axis=0), 1.0):
        raise OBDError(f"{path}: expected an ({N_ITEMS}, {N_POSITIONS}) distribution over items per position, "
                       f"got shape {dist.shape}")
    return dist.astype(np.float64)


def write_compact(src: str | os.PathLike[str], dst: str | os.PathLike[str], campaign: str = "all") -> list[Path]:
    """Copy the columns used here from obp's CSV layout into ``dst`` as zstd Parquet (+ the ``.npy``).

    Values are unchanged (positions stay 1-based, rows in file order); only the unnamed index column and
    the 80 user-item affinity columns are dropped. Existing files are not overwritten.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for behaviour in BEHAVIOURS:
        table, _ = _read_table(src, behaviour, campaign)
        small = pa.table({
            "timestamp": table.column("timestamp"),
            "item_id": pc.cast(table.column("item_id"), pa.int8()),
            "position": pc.cast(table.column("position"), pa.int8()),
            "click": pc.cast(table.column("click"), pa.int8()),
            "propensity_score": table.column("propensity_score"),
            **{f: pc.dictionary_encode(table.column(f)) for f in USER_FEATURES},
        })
        out = _paths(dst, behaviour, campaign)[0]
        if out.exists():
            raise FileExistsError(f"{out}: already exists; refusing to overwrite it")
        pq.write_table(small, out, compression="zstd", compression_level=19)
        written.append(out)
    npy = dst / ACTION_DIST_FILE.format(campaign=campaign)
    if npy.exists():
        raise FileExistsError(f"{npy}: already exists; refusing to overwrite it")
    np.save(npy, load_bts_action_dist(src, campaign))
    written.append(npy)
    return written


def evaluate_obd(
    directory: str | os.PathLike[str], n_bootstrap: int = 1000, seed: int = 0, campaign: str = "all"
) -> dict[str, list[Estimate]]:
    """IPS, SNIPS, DM and DR of (a) the Bernoulli-TS action distribution on the uniform-random logs and
    (b) the uniform-random policy (1/80 per item at every position) on the Bernoulli-TS logs.

    The reward model is the click rate per (item, position) with shrinkage (toward the position's click rate
    moved by the item's). Keys of the result name the
    target and the logs; each list ends with the logs' own mean click rate (``logged click rate``: the value
    of the logging policy) for scale.
    """
    action_dist = load_bts_action_dist(directory, campaign)
    out = {}
    for name, behaviour in (("Bernoulli TS on uniform-random logs", "random"),
                            ("uniform random on Bernoulli-TS logs", "bts")):
        logs = load_obd(directory, behaviour, campaign)
        if behaviour == "random":
            pi = action_dist.T[logs.position]  # [n, K]: the target's distribution at the logged position
        else:
            pi = np.full((logs.n_rows, N_CANDIDATES), 1.0 / N_CANDIDATES)
        model = TabularRewardModel(N_CANDIDATES, position_key, n_keys=N_POSITIONS)
        context = {"position": logs.position, "candidates": logs.candidates}
        ests = estimate(pi, logs.action, logs.click, logs.pscore, context, model, n_bootstrap=n_bootstrap,
                        seed=seed)
        ests.append(mean_with_ci("logged click rate", logs.click, n_bootstrap, seed))
        out[name] = ests
    return out
