"""Interaction logs: schema round trip, clear errors on bad files, atomic writes, and `rllib-rec collect`."""

from __future__ import annotations

import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs import ECommerceEnv
from envs.baselines import history_policy
from rllib_rec.cli import main
from rllib_rec.config import load_config
from rllib_rec.offpolicy.logs import (
    SCHEMA_VERSION,
    VERSION_KEY,
    LogSchemaError,
    LogWriter,
    log_arrays,
    read_logs,
    read_metadata,
)

ROOT = pathlib.Path(__file__).parent.parent
N_ITEMS, HIST = 7, 5


def _rows(n_episodes: int = 3, seed: int = 0) -> list[dict]:
    """Hand-made rows with varied values (incl. episodes of different lengths and null distributions)."""
    rng = np.random.default_rng(seed)
    rows = []
    for ep in range(n_episodes):
        length = ep + 1
        for t in range(length):
            mask = (rng.random(N_ITEMS) < 0.6).astype(np.int8)
            mask[t % N_ITEMS] = 1
            a = int(np.flatnonzero(mask)[0])
            dist = None if ep == 1 else (mask / mask.sum()).astype(np.float32)
            obs = {"items": rng.integers(0, N_ITEMS + 1, HIST).astype(np.int32),
                   "events": rng.integers(0, 6, HIST).astype(np.int32), "action_mask": mask}
            nxt = {"items": rng.integers(0, N_ITEMS + 1, HIST).astype(np.int32),
                   "events": rng.integers(0, 6, HIST).astype(np.int32),
                   "action_mask": np.ones(N_ITEMS, np.int8)}
            rows.append(dict(episode_id=ep, episode_seed=100 + ep, step=t, obs=obs, action=a,
                             behaviour_prob=float(1 / mask.sum()), behaviour_dist=dist,
                             reward=float(rng.choice([0.0, 0.2, 1.0, 2.0])), event=int(rng.integers(2, 6)),
                             terminated=bool(ep == 2 and t == length - 1), truncated=bool(ep < 2 and t == length - 1),
                             next_obs=nxt, policy_id=f"p{ep}", timestamp_us=1_700_000_000_000_000 + 1000 * len(rows)))
    return rows


def _write(path: pathlib.Path, rows: list[dict], **kw) -> pathlib.Path:
    with LogWriter(path, n_items=N_ITEMS, history_length=HIST, **kw) as w:
        for r in rows:
            w.add(**r)
    return path


def test_round_trip_is_identical(tmp_path) -> None:
    rows = _rows()
    path = _write(tmp_path / "logs.parquet", rows, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3  # 6 rows in bounded row groups of 2
    table = read_logs(path)
    assert table.schema.metadata[VERSION_KEY] == str(SCHEMA_VERSION).encode()
    a = log_arrays(table)
    assert a.n_rows == len(rows) and a.n_items == N_ITEMS
    for i, r in enumerate(rows):
        for k in ("items", "events", "action_mask"):
            np.testing.assert_array_equal(a.obs[k][i], r["obs"][k])
            np.testing.assert_array_equal(a.next_obs[k][i], r["next_obs"][k])
        assert (a.episode_id[i], a.episode_seed[i], a.step[i], a.action[i]) == (
            r["episode_id"], r["episode_seed"], r["step"], r["action"])
        assert a.behaviour_prob[i] == np.float32(r["behaviour_prob"]) and a.reward[i] == np.float32(r["reward"])
        assert (a.event[i], a.terminated[i], a.truncated[i], a.policy_id[i]) == (
            r["event"], r["terminated"], r["truncated"], r["policy_id"])
        if r["behaviour_dist"] is None:
            assert np.isnan(a.behaviour_dist[i]).all()
        else:
            np.testing.assert_array_equal(a.behaviour_dist[i], r["behaviour_dist"])
    assert a.obs["items"].dtype == np.int32 and a.obs["action_mask"].dtype == np.int8
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
        "length": (table.set_column(table.schema.get_field_index("next_action_mask"), "next_action_mask",
                                    pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows * 3, np.int8)), 3)),
                   "column 'next_action_mask' has length 3"),
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
                                                              history_length=HIST, row_group_size=1) as w:
        for r in _rows():
            w.add(**r)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs.parquet"]  # no partial file, no temp file
    _write(path, _rows(seed=1), overwrite=True)
    assert path.read_bytes() != before and read_logs(path).num_rows == len(_rows())


# ------------------------------------------------------------------------------------------- rllib-rec collect


def _check_behaviour(a, eps: float) -> None:
    """Distributions are exact: on the mask, sum to 1, and the logged prob is the dist at the action."""
    mask = a.obs["action_mask"].astype(bool)
    dist = a.behaviour_dist.astype(np.float64)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0, atol=1e-6)
    assert (dist[~mask] == 0).all()
    rows = np.arange(a.n_rows)
    assert (a.behaviour_prob == a.behaviour_dist[rows, a.action]).all()
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
    np.testing.assert_allclose(a.behaviour_prob, 1 / a.obs["action_mask"].sum(axis=1), rtol=1e-6)
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
    for k in ("items", "events", "action_mask"):
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
