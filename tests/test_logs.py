"""Interaction logs: schema round trip, clear errors on bad files, version-1 files converted on read, row bytes
independent of the catalog size, atomic writes, and `rllib-rec collect`."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs import OBS_KEYS, ECommerceEnv
from envs.baselines import history_policy
from rllib_rec.cli import main
from rllib_rec.config import load_config
from rllib_rec.offpolicy.logs import (
    COLUMNS,
    CONVERTED_KEY,
    N_ITEMS_KEY,
    SCHEMA_VERSION,
    VERSION_KEY,
    LogSchemaError,
    LogWriter,
    log_arrays,
    read_logs,
    read_metadata,
)

ROOT = pathlib.Path(__file__).parent.parent
N_ITEMS, N_CANDS, HIST = 50, 7, 5


def _obs(rng: np.random.Generator, n_items: int, n_cands: int, mask: np.ndarray | None = None) -> dict:
    """An observation: a history of item tokens, K distinct candidate ids from the catalog and a mask."""
    return {"items": rng.integers(0, n_items + 1, HIST).astype(np.int32),
            "events": rng.integers(0, 6, HIST).astype(np.int32),
            "candidates": rng.choice(n_items, n_cands, replace=False).astype(np.int32),
            "candidate_mask": np.ones(n_cands, np.int8) if mask is None else mask}


def _rows(n_episodes: int = 3, seed: int = 0, n_items: int = N_ITEMS, n_cands: int = N_CANDS) -> list[dict]:
    """Hand-made rows with varied values (incl. episodes of different lengths and null distributions)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ep in range(n_episodes):
        length = ep + 1
        for t in range(length):
            mask = (rng.random(n_cands) < 0.6).astype(np.int8)
            mask[t % n_cands] = 1
            a = int(np.flatnonzero(mask)[0])
            dist = None if ep == 1 else (mask / mask.sum()).astype(np.float32)
            obs, nxt = _obs(rng, n_items, n_cands, mask), _obs(rng, n_items, n_cands)
            rows.append(dict(episode_id=ep, episode_seed=100 + ep, step=t, obs=obs, action=a,
                             item=int(obs["candidates"][a]), behaviour_prob=float(1 / mask.sum()), behaviour_dist=dist,
                             reward=float(rng.choice([0.0, 0.2, 1.0, 2.0])), event=int(rng.integers(2, 6)),
                             terminated=bool(ep == 2 and t == length - 1), truncated=bool(ep < 2 and t == length - 1),
                             next_obs=nxt, policy_id=f"p{ep}", timestamp_us=1_700_000_000_000_000 + 1000 * len(rows)))
    return rows


def _write(path: pathlib.Path, rows: list[dict], n_items: int = N_ITEMS, n_cands: int = N_CANDS, **kw) -> pathlib.Path:
    with LogWriter(path, n_items=n_items, n_candidates=n_cands, history_length=HIST, **kw) as w:
        for r in rows:
            w.add(**r)
    return path


def test_round_trip_is_identical(tmp_path) -> None:
    rows = _rows()
    path = _write(tmp_path / "logs.parquet", rows, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3  # 6 rows in bounded row groups of 2
    table = read_logs(path)
    assert table.schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
    assert table.schema.metadata[N_ITEMS_KEY] == str(N_ITEMS).encode()
    a = log_arrays(table)
    assert (a.n_rows, a.n_items, a.n_candidates, a.history_length) == (len(rows), N_ITEMS, N_CANDS, HIST)
    for i, r in enumerate(rows):
        for k in OBS_KEYS:
            np.testing.assert_array_equal(a.obs[k][i], r["obs"][k])
            np.testing.assert_array_equal(a.next_obs[k][i], r["next_obs"][k])
        assert (a.episode_id[i], a.episode_seed[i], a.step[i], a.action[i], a.item[i]) == (
            r["episode_id"], r["episode_seed"], r["step"], r["action"], r["item"])
        assert a.behaviour_prob[i] == np.float32(r["behaviour_prob"]) and a.reward[i] == np.float32(r["reward"])
        assert (a.event[i], a.terminated[i], a.truncated[i], a.policy_id[i]) == (
            r["event"], r["terminated"], r["truncated"], r["policy_id"])
        if r["behaviour_dist"] is None:
            assert np.isnan(a.behaviour_dist[i]).all()
        else:
            np.testing.assert_array_equal(a.behaviour_dist[i], r["behaviour_dist"])
    assert a.obs["items"].dtype == np.int32 and a.obs["candidates"].dtype == np.int32
    assert a.obs["candidate_mask"].dtype == np.int8
    ts = table.column("timestamp")
    assert ts.type == pa.timestamp("us", tz="UTC") and ts[0].value == rows[0]["timestamp_us"]
    # Writing what was read gives the same table.
    path2 = tmp_path / "copy.parquet"
    pq.write_table(table, path2)
    assert read_logs(path2).equals(table)


def _one_line(e: pytest.ExceptionInfo, path: pathlib.Path, needle: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and needle in msg, msg


def test_truncated_garbage_and_missing_files(tmp_path) -> None:
    good = _write(tmp_path / "good.parquet", _rows())
    data = good.read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogSchemaError) as e:
        read_logs(cut)
    _one_line(e, cut, "truncated or corrupt")
    junk = tmp_path / "junk.parquet"
    junk.write_text("episode_id,step\n0,0\n")
    with pytest.raises(LogSchemaError) as e:
        read_logs(junk)
    _one_line(e, junk, "not a Parquet file")
    with pytest.raises(LogSchemaError) as e:
        read_logs(tmp_path / "nope.parquet")
    _one_line(e, tmp_path / "nope.parquet", "no such file")


def test_foreign_parquet_and_schema_mismatches(tmp_path) -> None:
    foreign = ROOT / "tests" / "data" / "obd" / "random_all.parquet"  # a real Parquet file, not a log
    with pytest.raises(LogSchemaError) as e:
        read_logs(foreign)
    _one_line(e, foreign, "not an rllib-rec interaction log")

    table = read_logs(_write(tmp_path / "good.parquet", _rows()))
    cases = {
        "version": (table.replace_schema_metadata({VERSION_KEY: b"99"}), "schema version '99'"),
        "missing": (table.drop_columns(["reward"]), "missing column 'reward'"),
        "type": (table.set_column(table.schema.get_field_index("reward"), "reward",
                                  pa.array(np.zeros(table.num_rows), pa.float64())), "column 'reward' has type double"),
        "length": (table.set_column(table.schema.get_field_index("next_candidate_mask"), "next_candidate_mask",
                                    pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows * 3, np.int8)), 3)),
                   "column 'next_candidate_mask' has length 3"),
        "no N": (table.replace_schema_metadata({VERSION_KEY: b"2"}), "no rllib_rec.offpolicy.logs.n_items"),
        "K > N": (table.replace_schema_metadata({**table.schema.metadata, N_ITEMS_KEY: b"5"}),
                  "7 candidate slots per step but only 5 items"),
        "id >= N": (table.replace_schema_metadata({**table.schema.metadata, N_ITEMS_KEY: b"10"}),
                    "outside the catalog [0, 10)"),
        "item": (table.set_column(table.schema.get_field_index("item"), "item",
                                  pa.array(np.full(table.num_rows, N_ITEMS - 1, np.int32))), "is not the candidate in slot"),
        "masked": (table.set_column(table.schema.get_field_index("action"), "action",
                                    pa.array(np.flatnonzero(np.array(table.column("candidate_mask")[0].as_py()) == 0)[:1]
                                             .repeat(table.num_rows).astype(np.int32))), "masked candidate slot"),
        "order": (table.take([1, 0, 2, 3, 4, 5]), "out of order"),
        "dist": (table.set_column(table.schema.get_field_index("behaviour_dist"), "behaviour_dist",
                                  pa.array([[0.5, 0.5]] * table.num_rows, pa.list_(pa.float32()))),
                 "behaviour_dist has 2 entries, expected 7"),
    }
    for name, (bad, needle) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(bad, path)
        with pytest.raises(LogSchemaError) as e:
            read_logs(path)
        _one_line(e, path, needle)


def test_writer_never_overwrites_and_leaves_nothing_on_failure(tmp_path) -> None:
    path = _write(tmp_path / "logs.parquet", _rows())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        _write(path, _rows(seed=1))
    assert path.read_bytes() == before
    with pytest.raises(RuntimeError, match="boom"), LogWriter(tmp_path / "new.parquet", n_items=N_ITEMS,
                                                              n_candidates=N_CANDS, history_length=HIST,
                                                              row_group_size=1) as w:
        for r in _rows():
            w.add(**r)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.parquet"]  # no partial file, no temp file
    _write(path, _rows(seed=1), overwrite=True)
    assert path.read_bytes() != before and read_logs(path).num_rows == len(_rows())


# ------------------------------------------------------------------------------------------- rllib-rec collect


def _check_behaviour(a, eps: float) -> None:
    """Distributions are exact: on the valid candidates, sum to 1, and the logged prob is the dist at the action;
    the logged item is the candidate in the chosen slot."""
    mask = a.obs["candidate_mask"].astype(bool)
    dist = a.behaviour_dist.astype(np.float64)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-6)
    assert (dist[~mask] == 0).all()
    rows = np.arange(a.n_rows)
    assert (a.behaviour_prob == a.behaviour_dist[rows, a.action]).all()
    assert (a.item == a.obs["candidates"][rows, a.action]).all() and mask[rows, a.action].all()
    n_mask = mask.sum(axis=1)
    uniform = eps / n_mask
    greedy_p = 1 - eps + eps / n_mask
    assert np.all(np.isclose(a.behaviour_prob, uniform, rtol=1e-6) | np.isclose(a.behaviour_prob, greedy_p, rtol=1e-6))


def test_collect_random_single_step(tmp_path, capsys) -> None:
    out = tmp_path / "random.parquet"
    rc = main(["collect", "--config", "configs/seed.yaml", "--set", "env.max_steps=1", "--policy", "random",
               "--episodes", "50", "--seed", "3", "--out", str(out)])
    assert rc == 0
    assert "wrote 50 rows (50 episodes, mean return" in capsys.readouterr().out
    a = log_arrays(read_logs(out))
    _check_behaviour(a, eps=1.0)
    np.testing.assert_allclose(a.behaviour_prob, 1 / a.obs["candidate_mask"].sum(axis=1), rtol=1e-6)
    assert (a.step == 0).all() and a.truncated.all() and (a.episode_seed == 3 + np.arange(50)).all()
    meta = read_metadata(out)
    assert meta["env_config"]["max_steps"] == 1 and meta["collect"]["policy_id"] == "random"
    # The same command again refuses to overwrite, with one line, and the file is untouched.
    before = out.read_bytes()
    rc = main(["collect", "--config", "configs/seed.yaml", "--policy", "random", "--episodes", "5",
               "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "refusing to overwrite" in err[0]
    assert out.read_bytes() == before


def test_collect_epsilon_greedy_history_episodes(tmp_path) -> None:
    out = tmp_path / "eg.parquet"
    assert main(["collect", "--config", "configs/default.yaml", "--set", "env.max_steps=8", "--policy",
                 "epsilon-greedy", "--epsilon", "0.3", "--episodes", "6", "--out", str(out)]) == 0
    a = log_arrays(read_logs(out))
    _check_behaviour(a, eps=0.3)
    # The greedy part is the history baseline on the logged observation.
    env = ECommerceEnv(load_config("configs/default.yaml", ["env.max_steps=8"]).env)
    rng = np.random.default_rng(0)
    for i in range(a.n_rows):
        obs = {k: v[i] for k, v in a.obs.items()}
        assert int(np.argmax(a.behaviour_dist[i])) == history_policy(obs, env, rng)
    # Transitions chain: next obs of a row is the obs of the next row of the same episode; episodes end once.
    same = a.episode_id[1:] == a.episode_id[:-1]
    for k in OBS_KEYS:
        np.testing.assert_array_equal(a.next_obs[k][:-1][same], a.obs[k][1:][same])
    assert a.done.sum() == 6 and a.done[-1] and (a.done[:-1] == ~same).all()
    assert (np.unique(a.episode_id) == np.arange(6)).all() and (np.diff(a.episode_id) >= 0).all()


def test_collect_checkpoint_policy(trained_debug, tmp_path) -> None:
    from rllib_rec.offpolicy.policies import checkpoint_greedy
    from rllib_rec.training.checkpoints import load_module

    out = tmp_path / "ckpt.parquet"
    assert main(["collect", "--checkpoint", str(trained_debug.checkpoint), "--policy", "epsilon-greedy",
                 "--epsilon", "0.2", "--episodes", "4", "--set", "env.max_steps=5", "--out", str(out)]) == 0
    a = log_arrays(read_logs(out))
    _check_behaviour(a, eps=0.2)
    greedy = checkpoint_greedy(load_module(trained_debug.checkpoint))(a.obs, None)
    assert (np.argmax(a.behaviour_dist, axis=1) == greedy).all()
    assert read_metadata(out)["collect"]["policy"] == "checkpoint"


# ------------------------------------------------------------------------------------------- version 1, row bytes

V1_COLUMNS = ("episode_id", "episode_seed", "step", "history_items", "history_events", "action_mask", "action",
              "behaviour_prob", "behaviour_dist", "reward", "event", "terminated", "truncated", "policy_id",
              "timestamp", "next_history_items", "next_history_events", "next_action_mask")


def _write_v1(v2: pa.Table, path: pathlib.Path) -> pathlib.Path:
    """What the version-1 writer wrote for the same steps: item-indexed masks of N entries, action = item, the
    behaviour distribution over the N items, schema version 1 and no catalog size in the metadata. Only
    defined where every item is a candidate at every step (candidates = 0..N-1, as in a K = N log)."""
    n_items = int(v2.schema.metadata[N_ITEMS_KEY])
    for name in ("candidates", "next_candidates"):
        flat = v2.column(name).combine_chunks().flatten().to_numpy()
        assert (flat.reshape(-1, n_items) == np.arange(n_items)).all()
    source = {"action_mask": "candidate_mask", "next_action_mask": "next_candidate_mask"}
    meta = {k: v for k, v in v2.schema.metadata.items() if k != N_ITEMS_KEY}
    meta[VERSION_KEY] = b"1"
    columns = [v2.column(source.get(c, c)) for c in V1_COLUMNS]
    fields = [pa.field(c, v2.schema.field(source.get(c, c)).type, nullable=c == "behaviour_dist") for c in V1_COLUMNS]
    pq.write_table(pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=meta)), path)
    return path


def test_version_1_log_is_converted_to_what_version_2_collects(tmp_path) -> None:
    """A version-1 file is the K = N case: read back, it equals the version-2 log of the same episodes."""
    v2_path = tmp_path / "v2.parquet"
    assert main(["collect", "--config", "configs/default.yaml", "--set", "env.max_steps=6", "--set",
                 "env.item_dropout=0.3", "--policy", "epsilon-greedy", "--epsilon", "0.4", "--episodes", "5",
                 "--out", str(v2_path)]) == 0
    v2 = read_logs(v2_path)
    v1_path = _write_v1(v2, tmp_path / "v1.parquet")
    assert "action_mask" in pq.read_schema(v1_path).names and "candidates" not in pq.read_schema(v1_path).names

    meta = read_metadata(v1_path)
    assert (meta["schema_version"], meta["n_items"], meta["n_candidates"], meta["history_length"]) == (1, 30, 30, 20)
    converted = read_logs(v1_path)
    assert converted.schema.metadata[CONVERTED_KEY] == b"1"
    assert converted.schema.metadata[N_ITEMS_KEY] == b"30"
    assert converted.equals(v2)  # same columns, types and values (metadata aside)
    a, b = log_arrays(converted), log_arrays(v2)
    for f in ("episode_id", "episode_seed", "step", "action", "item", "behaviour_prob", "behaviour_dist", "reward",
              "event", "terminated", "truncated", "policy_id"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for k in OBS_KEYS:
        np.testing.assert_array_equal(a.obs[k], b.obs[k])
        np.testing.assert_array_equal(a.next_obs[k], b.next_obs[k])
    assert a.n_items == 30 and (a.obs["candidate_mask"] == 0).any()  # stock-outs: masks are not all ones
    # A subset of columns converts too; a version-1 file with a bad column is refused in one line.
    part = read_logs(v1_path, columns=["item", "candidates", "reward"])
    assert part.column_names == ["item", "candidates", "reward"] and part.column("item").equals(v2.column("item"))
    bad = tmp_path / "bad_v1.parquet"
    pq.write_table(pq.read_table(v1_path).drop_columns(["next_action_mask"]), bad)
    with pytest.raises(LogSchemaError) as e:
        read_logs(bad)
    _one_line(e, bad, "missing column 'next_action_mask'")


def test_unknown_schema_version_is_refused(tmp_path) -> None:
    table = read_logs(_write(tmp_path / "good.parquet", _rows()))
    path = tmp_path / "v3.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: b"3"}), path)
    with pytest.raises(LogSchemaError) as e:
        read_metadata(path)
    _one_line(e, path, "log schema version '3', this rllib-rec reads versions 1 and 2")


def test_row_bytes_do_not_depend_on_the_catalog_size(tmp_path) -> None:
    """The same steps (K = 100 candidates of ids < 1,000) logged for a 1,000-item and a 1,000,000-item catalog:
    the same schema but for the catalog size in the metadata, no column sized by N, the same bytes per row."""
    rows = _rows(n_episodes=6, n_items=1_000, n_cands=100)
    tables = {}
    for n_items in (1_000, 1_000_000):
        path = _write(tmp_path / f"n{n_items}.parquet", rows, n_items=n_items, n_cands=100)
        tables[n_items] = read_logs(path)
        assert read_metadata(path)["n_items"] == n_items
    small, big = tables[1_000], tables[1_000_000]
    assert small.schema.equals(big.schema, check_metadata=False) and small.equals(big)
    sizes = {f.name: f.type.list_size for f in big.schema if pa.types.is_fixed_size_list(f.type)}
    assert sizes == {"history_items": HIST, "history_events": HIST, "candidates": 100, "candidate_mask": 100,
                     "next_history_items": HIST, "next_history_events": HIST, "next_candidates": 100,
                     "next_candidate_mask": 100}
    fixed = [c for c in COLUMNS if c not in ("policy_id", "behaviour_dist")]  # the fixed-width columns
    per_row = {n: sum(t.column(c).nbytes for c in fixed) / t.num_rows for n, t in tables.items()}
    # 4 x H x 4 bytes (histories) + 2 x 100 x (4 + 1) (candidates, masks) + ~45 (scalars, bitmaps): ~1.15 kB.
    assert per_row[1_000] == per_row[1_000_000] < 4 * HIST * 4 + 2 * 100 * 5 + 100, per_row


def test_writer_refuses_an_item_that_is_not_the_chosen_candidate(tmp_path) -> None:
    rows = _rows()
    rows[2]["item"] = int(rows[2]["obs"]["candidates"][rows[2]["action"]]) + 1
    with pytest.raises(ValueError, match="row 2: item .* is not the candidate in slot"):
        _write(tmp_path / "bad.parquet", rows)
    assert not (tmp_path / "bad.parquet").exists()
    assert set(COLUMNS) == set(read_logs(_write(tmp_path / "ok.parquet", _rows())).column_names)
