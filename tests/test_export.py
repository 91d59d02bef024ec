"""TFLite export: the parity gate passes for a real checkpoint and fails for a corrupted one (writing
nothing), builtin ops only, the sidecar, MLflow registration, no overwrites, best.json.

Uses the session fixtures `trained_debug` / `exported` from conftest.py (one training run, one export of
every quantisation mode).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import mlflow
import numpy as np
import pytest
from conftest import EXPORT_TRAIN_OVERRIDES, ROOT

from rllib_rec.cli import main
from rllib_rec.deploy.export import (
    QUANT_MODES,
    TOLERANCES,
    ExportError,
    check_gate,
    model_filename,
    resolve_source,
    tflite_ops,
)
from rllib_rec.training.checkpoints import CheckpointError, checkpoint_config

MODES_FILES = {m: model_filename(m) for m in QUANT_MODES}


def _sidecar(out: pathlib.Path, mode: str) -> dict:
    return json.loads((out / MODES_FILES[mode]).with_suffix(".json").read_text())


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.is_file())).hexdigest()


def test_float_export_passes_the_gate(exported) -> None:
    p = _sidecar(exported, "none")["parity"]
    assert p["samples"] >= 1000
    assert p["max_abs_diff"] <= 1e-4 and p["max_abs_diff_batched"] <= 1e-4
    assert p["top1_agreement"] == 1.0 and p["masked_ok"] and p["passed"]


@pytest.mark.parametrize("mode,quantised_type", [("fp16", "FLOAT16"), ("dynamic-int8", "INT8")])
def test_quantised_exports_report_top1(exported, mode, quantised_type) -> None:
    side = _sidecar(exported, mode)
    p = side["parity"]
    assert p["top1_agreement"] >= 0.99 and p["passed"]
    assert p["max_abs_diff"] <= TOLERANCES[mode].bound(p["q_scale"])
    assert side["tensor_types"].get(quantised_type, 0) > 0, side["tensor_types"]  # really quantised
    assert (exported / MODES_FILES[mode]).stat().st_size < (exported / "model.tflite").stat().st_size


def test_tflite_has_builtin_ops_only_and_runs_in_litert(exported, trained_debug) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from rllib_rec.deploy.export import _mean_q_fn, sample_observations
    from rllib_rec.training.checkpoints import load_module

    cfg = checkpoint_config(trained_debug.checkpoint)
    obs, q_ref = sample_observations(cfg.env, 20, _mean_q_fn([load_module(trained_debug.checkpoint)]), seed=7)
    for mode, name in MODES_FILES.items():
        blob = (exported / name).read_bytes()
        ops = tflite_ops(blob)
        assert ops and all(not op.startswith(("CUSTOM", "UNKNOWN")) for op in ops), (mode, ops)
        assert "FULLY_CONNECTED" in ops and "SOFTMAX" in ops
        assert _sidecar(exported, mode)["ops"] == ops
        runner = Interpreter(model_content=blob, num_threads=1).get_signature_runner("serving_default")
        q = runner(**obs)["output_0"]  # a batch of 20 through the dynamic batch dimension
        cand = obs["candidate_mask"] > 0
        tol = 1e-4 if mode == "none" else TOLERANCES[mode].bound(float(np.abs(q_ref[cand]).max()))
        assert np.abs(q - q_ref)[cand].max() <= tol, mode
        assert np.all(q[~cand] <= -1e4)


def test_sidecar_describes_the_model(exported, trained_debug) -> None:
    from envs import EVENT_NAMES

    cfg = checkpoint_config(trained_debug.checkpoint)
    side = _sidecar(exported, "none")
    n, t = cfg.env.catalog.n_items, cfg.env.history_length
    k = n  # the debug shop offers every item at every step
    assert side["n_items"] == n and side["n_candidates"] == k and side["history_length"] == t
    assert side["embed_dim"] == 32 and side["id_buckets"] == cfg.model.id_buckets
    assert side["inputs"] == {
        "items": {"tensor": "serving_default_items:0", "shape": [-1, t], "dtype": "int32"},
        "events": {"tensor": "serving_default_events:0", "shape": [-1, t], "dtype": "int32"},
        "candidates": {"tensor": "serving_default_candidates:0", "shape": [-1, k], "dtype": "int32"},
        "candidate_mask": {"tensor": "serving_default_candidate_mask:0", "shape": [-1, k], "dtype": "int32"},
    }
    assert side["output"]["shape"] == [-1, k] and side["output"]["dtype"] == "float32"
    assert side["event_codes"] == {name: i for i, name in enumerate(EVENT_NAMES)}
    assert side["config_hash"] == cfg.config_hash() and side["config_name"] == "debug"
    assert side["source_checkpoint"] == str(trained_debug.checkpoint)
    assert side["quantization"] == "none" and side["model_file"] == "model.tflite"
    assert side["model_spec"]["embed_dim"] == 32
    for mode, fname in MODES_FILES.items():  # each sidecar pins its own file's bytes
        blob = (exported / fname).read_bytes()
        side = _sidecar(exported, mode)
        assert side["size_bytes"] == len(blob) and side["sha256"] == hashlib.sha256(blob).hexdigest()


def test_logged_to_the_checkpoint_run_and_registered(exported, trained_debug) -> None:
    client = mlflow.MlflowClient(trained_debug.tracking_uri)
    versions = client.search_model_versions("name='rllib-rec-debug'")
    assert sorted(v.tags["quantization"] for v in versions) == sorted(QUANT_MODES)
    assert {v.run_id for v in versions} == {trained_debug.mlflow_run_id}
    ckpt_name = trained_debug.checkpoint.name
    for mode, fname in MODES_FILES.items():
        logged = {pathlib.PurePosixPath(a.path).name
                  for a in client.list_artifacts(trained_debug.mlflow_run_id, f"tflite/{ckpt_name}/{mode}")}
        assert logged == {fname, fname.replace(".tflite", ".json")}
    metrics = client.get_run(trained_debug.mlflow_run_id).data.metrics
    assert metrics["export_none_top1_agreement"] == 1.0


@pytest.mark.hostile("file", rows=[("checkpoint whose converted weights differ from the trained ones (one tensor + 0.5)",
                                   "one line: parity gate failed; nothing written")])
def test_corrupted_weight_fails_the_gate_and_writes_nothing(trained_debug, tmp_path, monkeypatch, capsys) -> None:
    import rllib_rec.deploy.export as export

    real = export._module_weights

    def corrupted(module):
        w = real(module)
        key = next(k for k in sorted(w) if k.endswith("kernel") and "mlp_0" in k)
        w[key] = w[key] + 0.5  # one weight tensor off: the TFLite model is no longer the checkpoint
        return w

    monkeypatch.setattr(export, "_module_weights", corrupted)
    out = tmp_path / "bad"
    rc = main(["export", "--checkpoint", str(trained_debug.checkpoint), "--out", str(out), "--no-mlflow"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("rllib-rec export: error: parity gate failed") and "nothing written" in err[-1]
    assert "max |Q_tflite - Q_checkpoint|" in err[-1] or "top-1" in err[-1]
    assert not out.exists()  # no model, no sidecar, no temp dir, not even the output directory


@pytest.mark.hostile("CLI", rows=[("`export --out` a directory that already holds the export",
                                  "one line: already exists; nothing changed")])
def test_refuses_to_overwrite_an_export(exported, trained_debug, capsys) -> None:
    before = _digest(exported)
    rc = main(["export", "--checkpoint", str(trained_debug.checkpoint), "--out", str(exported), "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "already exists; refusing to overwrite" in err and len(err.splitlines()) == 1
    assert _digest(exported) == before


@pytest.mark.hostile("file", rows=[("`export --best` a JSON without `checkpoint`, not JSON, or naming no checkpoint",
                                   "one line each")])
def test_best_json_names_the_checkpoint(trained_debug, tmp_path) -> None:
    ckpt = trained_debug.checkpoint
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"checkpoint": str(ckpt), "metric": 1.0}))
    assert resolve_source(best=str(best)) == ckpt
    rel = ckpt.parent / "best.json"  # relative paths are relative to the JSON file
    try:
        rel.write_text(json.dumps({"checkpoint": ckpt.name}))
        assert resolve_source(best=str(rel)) == ckpt
    finally:
        rel.unlink()
    best.write_text(json.dumps({"path": str(ckpt)}))
    with pytest.raises(ExportError, match="best.json: key 'checkpoint'"):
        resolve_source(best=str(best))
    best.write_text("{not json")
    with pytest.raises(ExportError, match="not readable JSON"):
        resolve_source(best=str(best))
    best.write_text(json.dumps({"checkpoint": str(tmp_path / "nope")}))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_source(best=str(best))


@pytest.mark.hostile("CLI", rows=[("`export --quantize int4`", "one line: choose from none, fp16, dynamic-int8"),
                                  ("`export --samples 10`", "one line: --samples must be >= 1000")])
def test_bad_options_are_one_line_errors(trained_debug, capsys) -> None:
    for args, needle in [
        (["--quantize", "int4"], "--quantize 'int4': choose from none, fp16, dynamic-int8"),
        (["--samples", "10"], "--samples must be >= 1000"),
    ]:
        rc = main(["export", "--checkpoint", str(trained_debug.checkpoint), "--no-mlflow", *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and needle in err and len(err.splitlines()) == 1, err


def test_gate_logic() -> None:
    ok = {"max_abs_diff": 1e-6, "max_abs_diff_batched": 1e-6, "q_scale": 2.0, "top1_agreement": 1.0,
          "masked_ok": True}
    assert check_gate(ok, "none") is None
    assert check_gate({**ok, "max_abs_diff": 2e-4}, "none") == "max |Q_tflite - Q_checkpoint| 0.0002 > 0.0001"
    assert "top-1" in check_gate({**ok, "top1_agreement": 0.999}, "none")
    assert check_gate({**ok, "max_abs_diff": 1e-2, "top1_agreement": 0.995}, "fp16") is None  # 1e-2 <= 0.0201
    assert "top-1" in check_gate({**ok, "top1_agreement": 0.98}, "dynamic-int8")
    assert "non-finite" in check_gate({**ok, "max_abs_diff": float("nan")}, "fp16")
    assert "masked" in check_gate({**ok, "masked_ok": False}, "none")


@pytest.mark.hostile("CLI", rows=[("`export --out` an existing file", "one line at once (< 10 s), the file untouched")])
def test_out_naming_an_existing_file_is_refused_at_once(trained_debug, tmp_path) -> None:
    """Issue 18, item 2: `export --out <an existing file>` worked for 15 s, then exited 1 with a
    FileExistsError traceback. Now: one line, exit 2, before the checkpoint is even restored."""
    import subprocess
    import sys
    import time

    target = tmp_path / "model.tflite"
    target.write_bytes(b"not mine to overwrite")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rllib_rec", "export", "--checkpoint", str(trained_debug.checkpoint),
                           "--out", str(target), "--no-mlflow"], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).parent.parent)
    elapsed = time.monotonic() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0] == (f"rllib-rec export: error: --out {target}: exists and is not a directory (give a directory "
                        "for the model files)")
    assert elapsed < 10, elapsed  # no checkpoint restore, no conversion (the old failure came after ~15 s)
    assert target.read_bytes() == b"not mine to overwrite"


def test_re_exporting_a_checkpoint_reuses_its_model_version(exported, trained_debug, tmp_path, capsys) -> None:
    """Issue 18, item 12: re-exporting the same checkpoint registered a new model version each time, and
    "registered ..." was printed twice. The version whose tags name the same checkpoint, mode and file
    SHA-256 is reused, and the summary says so, once."""
    client = mlflow.MlflowClient(trained_debug.tracking_uri)
    before = {v.version for v in client.search_model_versions("name='rllib-rec-debug'")}
    float_version = next(v.version for v in client.search_model_versions("name='rllib-rec-debug'")
                         if v.tags["quantization"] == "none")
    assert main(["export", "--checkpoint", str(trained_debug.checkpoint), "--out", str(tmp_path / "again")]) == 0
    out, err = capsys.readouterr()
    assert {v.version for v in client.search_model_versions("name='rllib-rec-debug'")} == before
    assert f"registered rllib-rec-debug/{float_version} (none; already registered" in out
    assert (out + err).count("registered rllib-rec-debug") == 1
    assert (tmp_path / "again" / "model.tflite").read_bytes() == (exported / "model.tflite").read_bytes()


def test_several_checkpoints_export_as_one_model_over_their_mean_q(trained_debug, tmp_path, capsys) -> None:
    """An ensemble export: runs of one config on different training seeds become one TFLite model whose
    Q-values are the mean of the members' (not either member's), with both members in the sidecar, logged as
    an export run of its own and registered under the members' names."""
    from ai_edge_litert.interpreter import Interpreter

    from rllib_rec.deploy.export import _mean_q_fn, sample_observations
    from rllib_rec.deploy.serve import Recommender
    from rllib_rec.training.checkpoints import load_module
    from rllib_rec.training.train import train

    other = train(str(ROOT / "configs" / "debug.yaml"),
                  [f"run.output_dir={tmp_path / 'runs'}", "run.seed=2", *EXPORT_TRAIN_OVERRIDES], log=lambda s: None)
    members = [trained_debug.checkpoint, other.checkpoint]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "ensemble"
    rc = main(["export", "--checkpoint", *map(str, members), "--out", str(out), "--tracking-uri", uri])
    assert rc == 0, capsys.readouterr().err
    side = json.loads((out / "model.json").read_text())
    assert [m["checkpoint"] for m in side["members"]] == [str(c) for c in members]
    assert [m["training_seed"] for m in side["members"]] == [checkpoint_config(c).run.seed for c in members]
    assert side["parity"]["passed"] and side["parity"]["reference"].startswith("mean of the members'")

    modules = [load_module(c) for c in members]
    obs, _ = sample_observations(checkpoint_config(members[0]).env, 50, None, seed=11)
    q_members = [_mean_q_fn([m])(obs) for m in modules]
    runner = Interpreter(model_content=(out / "model.tflite").read_bytes(), num_threads=1).get_signature_runner(
        "serving_default")
    q = runner(**obs)["output_0"]
    cand = obs["candidate_mask"] > 0
    assert np.abs(q - (q_members[0] + q_members[1]) / 2)[cand].max() <= 1e-4
    assert all(np.abs(q - qm)[cand].max() > 1e-3 for qm in q_members)  # neither member alone
    assert np.all(q[~cand] <= -1e4)
    assert Recommender(out / "model.tflite").info()["networks"] == 2  # what /health reports

    client = mlflow.MlflowClient(uri)
    [version] = client.search_model_versions("name='rllib-rec-debug'")
    assert version.tags["checkpoint"] == " + ".join(map(str, members))
    assert client.get_run(version.run_id).info.run_name == "export-debug-ensemble"


@pytest.mark.hostile("CLI", rows=[("`export --checkpoint A A` (one checkpoint named twice)",
                                  "one line: given twice; nothing written")])
def test_an_ensemble_of_one_checkpoint_twice_is_refused(trained_debug, tmp_path, capsys) -> None:
    ckpt = str(trained_debug.checkpoint)
    rc = main(["export", "--checkpoint", ckpt, ckpt, "--out", str(tmp_path / "twice"), "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is given twice" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "twice").exists()


def test_ensemble_members_must_be_one_network_for_one_shop() -> None:
    from types import SimpleNamespace

    from rllib_rec.deploy.export import _check_members

    def member(embed_dim: int, preset: str) -> tuple[SimpleNamespace, SimpleNamespace]:
        module = SimpleNamespace(spec=SimpleNamespace(to_dict=lambda: {"embed_dim": embed_dim, "n_items": 10}))
        return module, SimpleNamespace(env=SimpleNamespace(preset=preset))

    ckpts = [pathlib.Path("a"), pathlib.Path("b")]
    (m0, c0), (m1, c1), (m2, c2) = member(32, "default"), member(16, "default"), member(32, "large")
    _check_members(ckpts, [m0, m0], [c0, c0])
    with pytest.raises(ExportError, match=r"--checkpoint b: not the same network and shop as a \(differs in embed_dim\)"):
        _check_members(ckpts, [m0, m1], [c0, c1])
    with pytest.raises(ExportError, match=r"differs in env\)"):
        _check_members(ckpts, [m0, m2], [c0, c2])
