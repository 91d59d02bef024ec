"""``rllib-rec export``: checkpoint -> verified TFLite model (+ JSON sidecar), logged and registered in MLflow.

Several checkpoints (runs of one network and shop on different training seeds) export as one model that acts
on the mean of their Q-values: an ensemble, served like a single network.

Two processes, because Keras freezes its backend at first import and the CLI/training side runs Keras on
torch:

1. This process (torch Keras) restores the checkpoint's RLModule, dumps its Q-network weights (by Keras
   variable path) to an ``.npz`` in a temp dir, and records the module's own Q-values on ``samples``
   observations drawn from the simulator with an epsilon-greedy policy (the reference, "Q_checkpoint").
2. A child (:mod:`rllib_rec.deploy.convert`, ``KERAS_BACKEND=tensorflow``) rebuilds the network from the
   checkpoint's own spec, converts it to TFLite with builtin ops only and measures parity.

The parity gate (:data:`TOLERANCES`) then decides: a model that fails is never written. Files are
written under a hidden temp name and hard-linked into place (``os.link`` refuses to replace), so an
existing export is never overwritten and a failed command leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs import EVENT_NAMES, ECommerceEnv
from rllib_rec.agent.runtime import set_torch_threads
from rllib_rec.agent.spec import MASKED_Q
from rllib_rec.console import progress, ticking
from rllib_rec.deploy.convert import INPUTS, SIGNATURE, tflite_ops
from rllib_rec.errors import ExportError
from rllib_rec.training.checkpoints import (
    checkpoint_config,
    checkpoint_meta,
    checkpoint_named_by,
    load_module,
    resolve_checkpoint,
)
from rllib_rec.training.tracking import TrackingError, connect, redact, resolve_tracking_uri

__all__ = [
    "QUANT_MODES",
    "TOLERANCES",
    "ExportError",
    "ExportResult",
    "Tolerance",
    "check_gate",
    "export_checkpoint",
    "model_filename",
    "resolve_source",
    "resolve_sources",
    "sample_observations",
    "tflite_ops",
]

QUANT_MODES = ("none", "fp16", "dynamic-int8")
SIDECAR_FORMAT = "rllib-rec-tflite/1"
_FILE_STEMS = {"none": "model", "fp16": "model_fp16", "dynamic-int8": "model_int8"}


@dataclass(frozen=True)
class Tolerance:
    """Parity gate of one quantisation mode: ``max|Q_tflite - Q_ckpt| <= atol + rtol * q_scale`` over
    candidate items (``q_scale`` = max |Q_ckpt| over candidates, so the quantised bounds follow the size
    of the Q-values rather than a fixed number), and masked top-1 agreement >= ``top1``."""

    atol: float
    rtol: float
    top1: float

    def bound(self, q_scale: float) -> float:
        return self.atol + self.rtol * q_scale


# float: the conversion must be numerically the same network (observed ~1e-6).
# fp16: weights rounded to 11 significant bits (relative error ~5e-4 per weight, accumulated over a few
# layers) -> 1% of the Q scale. dynamic-int8: weights (tensors >= 1024 elements) in 8 bits with float
# activations -> 5% of the Q scale. Both must still pick the same item on >= 99% of observations.
TOLERANCES: dict[str, Tolerance] = {
    "none": Tolerance(atol=1e-4, rtol=0.0, top1=1.0),
    "fp16": Tolerance(atol=1e-4, rtol=1e-2, top1=0.99),
    "dynamic-int8": Tolerance(atol=1e-3, rtol=5e-2, top1=0.99),
}


@dataclass
class ExportResult:
    checkpoint: Path  # the first member's, for an ensemble
    out_dir: Path
    files: dict[str, Path]  # mode -> .tflite path (its sidecar is the same path with .json)
    parity: dict[str, dict[str, Any]]
    registered: dict[str, str] = field(default_factory=dict)  # mode -> "name/version"
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    members: list[Path] = field(default_factory=list)  # every checkpoint exported (one, or an ensemble's)

    @property
    def source(self) -> str:
        """The exported checkpoint, or an ensemble's members joined by " + "."""
        return source_label(self.members or [self.checkpoint])


def source_label(ckpts: Sequence[Path]) -> str:
    return " + ".join(str(c) for c in ckpts)


def model_filename(mode: str) -> str:
    """``model.tflite`` for float, ``model_fp16.tflite`` / ``model_int8.tflite`` for quantised exports."""
    return f"{_FILE_STEMS[mode]}.tflite"


# --------------------------------------------------------------------------------------------- sources
def resolve_source(checkpoint: str | None = None, best: str | None = None) -> Path:
    """The checkpoint to export: ``--checkpoint`` (checkpoint or run dir) or ``--best best.json``, a JSON
    object ``{"checkpoint": path, ...}`` written by the sweep (a relative path is relative to the JSON)."""
    if (checkpoint is None) == (best is None):
        raise ExportError("give exactly one of --checkpoint PATH or --best best.json")
    if checkpoint is not None:
        return resolve_checkpoint(checkpoint)
    return resolve_checkpoint(checkpoint_named_by(Path(best).expanduser(), ExportError))


def resolve_sources(checkpoints: str | Sequence[str] | None = None, best: str | None = None) -> list[Path]:
    """The checkpoints to export: one (``--checkpoint`` or ``--best``), or several for an ensemble; the
    same checkpoint named twice is refused (an ensemble of one network with itself is that network)."""
    if isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if checkpoints is not None and not checkpoints:
        raise ExportError("--checkpoint: give at least one checkpoint or run directory")
    if checkpoints is None or len(checkpoints) == 1:
        return [resolve_source(checkpoints[0] if checkpoints else None, best)]
    if best is not None:
        raise ExportError("give exactly one of --checkpoint PATH or --best best.json")
    ckpts = [resolve_checkpoint(c) for c in checkpoints]
    for i, c in enumerate(ckpts):
        if c in ckpts[:i]:
            raise ExportError(f"--checkpoint {checkpoints[i]}: checkpoint {c} is given twice")
    return ckpts


def _run_dir(ckpt: Path) -> Path | None:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def _default_out(ckpts: Sequence[Path]) -> Path:
    """``<run>/exports/<checkpoint name>``; an ensemble's goes beside its first member's exports, named by
    a digest of its members."""
    ckpt = ckpts[0]
    run_dir = _run_dir(ckpt)
    exports = (run_dir or ckpt.parent) / "exports"
    if len(ckpts) == 1:
        return exports / ckpt.name
    digest = hashlib.sha256("\n".join(sorted(str(c) for c in ckpts)).encode()).hexdigest()[:8]
    return exports / f"ensemble-{len(ckpts)}-{digest}"


# --------------------------------------------------------------------------------------------- samples
def sample_observations(
    env_config: Any,
    n: int,
    q_fn: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
    *,
    epsilon: float = 0.5,
    seed: int = 20_240_601,
    n_envs: int = 16,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``n`` observations from the simulator under an epsilon-greedy policy over ``q_fn`` (uniform over the
    candidates where ``q_fn`` is None), and ``q_fn``'s Q-values for them.

    Epsilon-greedy rather than uniform so that the samples include the histories the trained policy
    actually produces (repeated clicks on what it likes) as well as cold starts and random ones.
    """
    rng = np.random.default_rng(seed)
    envs = [ECommerceEnv(env_config) for _ in range(max(1, min(n_envs, n)))]
    obs_list = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
    next_seed = seed + len(envs)
    rows: dict[str, list[np.ndarray]] = {k: [] for k in INPUTS}
    qs: list[np.ndarray] = []
    while len(rows["items"]) < n:
        batch = {k: np.stack([o[k] for o in obs_list]) for k in INPUTS}
        q = q_fn(batch) if q_fn is not None else None
        take = min(len(envs), n - len(rows["items"]))
        for k in INPUTS:
            rows[k].extend(batch[k][:take])
        if q is not None:
            qs.extend(q[:take])
        for i, env in enumerate(envs):
            allowed = np.flatnonzero(batch["candidate_mask"][i])
            if q is not None and rng.random() >= epsilon:
                a = int(allowed[np.argmax(q[i][allowed])])
            else:
                a = int(rng.choice(allowed))
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                obs, _ = env.reset(seed=next_seed)
                next_seed += 1
            obs_list[i] = obs
    out = {k: np.stack(v).astype(np.int32) for k, v in rows.items()}
    return out, (np.stack(qs).astype(np.float32) if q_fn is not None else None)


def _module_weights(module: Any) -> dict[str, np.ndarray]:
    """The Q-network weights of a restored RLModule by Keras variable path (a seam for tests)."""
    from rllib_rec.agent.model import q_model_weights

    return q_model_weights(module.qnet)


def _mean_q_fn(modules: Sequence[Any]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The modules' Q-values, averaged (one module: its own). Masked slots stay MASKED_Q in the mean."""
    import torch
    from ray.rllib.algorithms.dqn.default_dqn_rl_module import QF_PREDS
    from ray.rllib.core.columns import Columns

    def q_fn(batch: dict[str, np.ndarray]) -> np.ndarray:
        obs = {Columns.OBS: {k: torch.from_numpy(v) for k, v in batch.items()}}
        with torch.no_grad():
            q = torch.stack([m.compute_q_values(obs)[QF_PREDS] for m in modules]).mean(0)
        return q.cpu().numpy().astype(np.float32)

    return q_fn


def _check_members(ckpts: Sequence[Path], modules: Sequence[Any], configs: Sequence[Any]) -> None:
    """An ensemble's members must be one network (the same spec, so one signature) for one shop."""
    spec, env = modules[0].spec.to_dict(), configs[0].env
    for ckpt, module, cfg in zip(ckpts[1:], modules[1:], configs[1:], strict=True):
        other = module.spec.to_dict()
        differs = sorted(k for k in spec.keys() | other.keys() if spec.get(k) != other.get(k))
        if cfg.env != env:
            differs.append("env")
        if differs:
            raise ExportError(f"--checkpoint {ckpt}: not the same network and shop as {ckpts[0]} "
                              f"(differs in {', '.join(differs)}); an ensemble's members are one network for one shop")


# --------------------------------------------------------------------------------------------- gate
def check_gate(parity: dict[str, Any], mode: str) -> str | None:
    """None if ``parity`` (figures from the converter child) passes ``mode``'s gate, else why not."""
    tol = TOLERANCES[mode]
    bound = tol.bound(float(parity["q_scale"]))
    worst = float(parity["max_abs_diff"])
    worst_batch = float(parity.get("max_abs_diff_batched", 0.0))
    if not (np.isfinite(worst) and np.isfinite(worst_batch)):
        return "non-finite Q-values"
    if worst > bound:
        return f"max |Q_tflite - Q_checkpoint| {worst:.3g} > {bound:.3g}"
    if worst_batch > bound:
        return f"batched max |Q_tflite - Q_checkpoint| {worst_batch:.3g} > {bound:.3g}"
    if float(parity["top1_agreement"]) < tol.top1:
        return f"top-1 agreement {parity['top1_agreement']:.2%} < {tol.top1:.0%}"
    if not parity.get("masked_ok", False):
        return "non-candidate items are no longer masked"
    return None


def export_checkpoint(
    checkpoint: str | Sequence[str] | None = None,
    best: str | None = None,
    quantize: Sequence[str] = ("none",),
    out: str | None = None,
    samples: int = 1000,
    tracking_uri: str | None = None,
    track: bool = True,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export, verify, write and (with ``track``) log + register one model per quantisation mode.

    ``checkpoint`` is one checkpoint (or run directory), or several: one model then acts on the mean of their
    Q-values (an ensemble of runs of one config). All modes pass the gate or nothing is written. Raises
    ``RllibRecError``s with one-line messages."""
    modes = _check_modes(quantize, samples)
    ckpts = resolve_sources(checkpoint, best)
    configs = [checkpoint_config(c) for c in ckpts]
    cfg, meta = configs[0], checkpoint_meta(ckpts[0])
    out_dir = Path(out).expanduser().resolve() if out else _default_out(ckpts)
    targets = _targets(out_dir, modes)
    # Tracking first: fail in seconds, before any conversion work, if the store is unusable.
    uri, experiment_id = _connect_tracking(ckpts[0], cfg, out_dir, tracking_uri) if track else (None, None)

    # Progress: three stages (the conversion, a TensorFlow child process, is most of the time).
    with progress(3, "export", unit="stage") as bar, ticking(bar):
        bar.set_postfix_str("restoring the checkpoint, reference Q-values", refresh=False)
        t0 = time.perf_counter()
        modules = [load_module(c) for c in ckpts]
        _check_members(ckpts, modules, configs)
        set_torch_threads(1)  # a 2-thread forward of this small net is ~100x slower on a busy 2-core box
        weights = [_module_weights(m) for m in modules]
        obs, q_ref = sample_observations(cfg.env, samples, _mean_q_fn(modules))
        log(f"checkpoint {source_label(ckpts)}: {sum(map(len, weights))} weight tensors, {samples} reference "
            f"observations ({time.perf_counter() - t0:.1f}s)")
        bar.update(1)

        created_out = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=out_dir))
        ok = False
        try:
            # The checkpoint's own network spec, as it was trained, is what the converter rebuilds.
            names = ", ".join("float32" if m == "none" else m for m in modes)
            bar.set_postfix_str(f"converting {names} (TensorFlow child process), parity", refresh=False)
            result = _convert(work, modules[0].spec.to_dict(), weights, obs, q_ref, modes, log)
            _gate(result, modes, source_label(ckpts))
            bar.update(1)
            bar.set_postfix_str("writing" + (", MLflow" if track else ""), refresh=False)
            _write_files(work, targets, result, ckpts, cfg, samples)
            ok = True
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if not ok and created_out and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a failed export leaves no trace, not even the directory it would have made

        res = ExportResult(ckpts[0], out_dir, targets, {m: result["modes"][m]["parity"] for m in modes},
                           members=list(ckpts))
        if track:
            _track(res, cfg, meta, uri, experiment_id, log)
        bar.update(1)
    return res


def _check_modes(quantize: Sequence[str], samples: int) -> list[str]:
    modes = list(dict.fromkeys(quantize))
    bad = [m for m in modes if m not in QUANT_MODES]
    if bad or not modes:
        raise ExportError(f"--quantize {bad[0] if bad else ''!r}: choose from {', '.join(QUANT_MODES)}")
    if samples < 1000:
        raise ExportError(f"--samples must be >= 1000 for a meaningful parity gate, got {samples}")
    return modes


def _targets(out_dir: Path, modes: Sequence[str]) -> dict[str, Path]:
    """Where each mode's file goes; refused now if --out is not a directory or a file would be replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir}: exists and is not a directory (give a directory for the model files)")
    targets = {m: out_dir / model_filename(m) for m in modes}
    for path in targets.values():
        for p in (path, path.with_suffix(".json")):
            if p.exists():
                raise ExportError(f"{p}: already exists; refusing to overwrite an export (choose another --out)")
    return targets


def _connect_tracking(ckpt: Path, cfg: Any, out_dir: Path, tracking_uri: str | None) -> tuple[str, str]:
    """The store: --tracking-uri, $MLFLOW_TRACKING_URI, the run's own local store, or the config's."""
    run_dir = _run_dir(ckpt)
    store_dir = run_dir.parent if run_dir else out_dir
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        local = store_dir / "mlflow.db"
        uri = f"sqlite:///{local}" if local.is_file() else resolve_tracking_uri(cfg.run.output_dir)
    return uri, connect(uri, cfg.run.experiment, store_dir)


def _convert(work: Path, spec: dict[str, Any], weights: Sequence[dict[str, np.ndarray]], obs: dict[str, np.ndarray],
             q_ref: np.ndarray, modes: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Run the TensorFlow-side converter (``rllib_rec.deploy.convert``) on a job in ``work``: one network per
    entry of ``weights`` (each {variable path: array}), averaged when there are several."""
    paths = sorted(weights[0])
    np.savez(work / "weights.npz", **{f"m{k}_w{i}": member[p] for k, member in enumerate(weights)
                                      for i, p in enumerate(paths)})
    np.savez(work / "samples.npz", q_ref=q_ref, **obs)
    (work / "job.json").write_text(json.dumps({"spec": spec, "weight_paths": paths, "members": len(weights),
                                               "modes": list(modes)}))
    t1 = time.perf_counter()
    _run_converter(work)
    result = json.loads((work / "result.json").read_text())
    log(f"converted to TFLite (TFLITE_BUILTINS), quantisation: {', '.join(modes)} ({time.perf_counter() - t1:.1f}s)")
    if "dynamic-int8" in modes and not result["modes"]["dynamic-int8"]["tensor_types"].get("INT8"):
        log("note: dynamic-int8 quantised no tensor (TFLite only quantises weights with >= 1024 elements); "
            "the file is numerically the float model")
    return result


def _gate(result: dict[str, Any], modes: Sequence[str], source: str) -> None:
    """Every mode's parity figures against its tolerance (recorded in the figures); ExportError if any fails."""
    failures = []
    for m in modes:
        r = result["modes"][m]
        parity = r["parity"]
        tol = TOLERANCES[m]
        parity.update(tolerance=tol.bound(parity["q_scale"]), tolerance_atol=tol.atol,
                      tolerance_rtol=tol.rtol, top1_required=tol.top1)
        non_builtin = [op for op in r["ops"] if op.startswith(("CUSTOM", "UNKNOWN", "FLEX"))]
        why = check_gate(parity, m) or (f"non-builtin ops {non_builtin}" if non_builtin else None)
        parity["passed"] = why is None
        if why:
            failures.append(f"{m}: {why}")
    if failures:
        raise ExportError(f"parity gate failed for {source} ({'; '.join(failures)}); nothing written")


def _write_files(work: Path, targets: dict[str, Path], result: dict[str, Any], ckpts: Sequence[Path], cfg: Any,
                 samples: int) -> None:
    """Each model and its sidecar, hard-linked into place: all of them, or (on a clash) none."""
    written: list[Path] = []
    try:
        for m, target in targets.items():
            sidecar = _sidecar(m, target.name, result, ckpts, cfg, EVENT_NAMES, samples)
            tmp_json = work / f"{_FILE_STEMS[m]}.json"
            tmp_json.write_text(json.dumps(sidecar, indent=2) + "\n")
            for src, dst in ((work / f"{m}.tflite", target), (tmp_json, target.with_suffix(".json"))):
                os.link(src, dst)  # fails instead of replacing an existing file
                written.append(dst)
    except FileExistsError as e:
        for p in written:
            p.unlink(missing_ok=True)
        raise ExportError(f"{e.filename}: already exists; refusing to overwrite an export") from None


def _member(ckpt: Path) -> dict[str, Any]:
    meta = checkpoint_meta(ckpt)
    return {"checkpoint": str(ckpt), "iteration": meta.get("iteration"), "mlflow_run_id": meta.get("mlflow_run_id"),
            "config_hash": meta.get("config_hash"), "training_seed": checkpoint_config(ckpt).run.seed}


def _sidecar(mode: str, filename: str, result: dict[str, Any], ckpts: Sequence[Path], cfg: Any,
             event_names: Sequence[str], samples: int) -> dict[str, Any]:
    r = result["modes"][mode]
    spec = result["spec"]
    members = [_member(c) for c in ckpts]
    reference = "RLModule.compute_q_values (torch)"
    return {
        "format": SIDECAR_FORMAT,
        "model_file": filename,
        "quantization": mode,
        "signature": SIGNATURE,
        "inputs": r["inputs"],
        "output": r["output"],
        "n_items": spec["n_items"],
        "n_candidates": spec["n_candidates"],
        "embed_dim": spec["embed_dim"],
        "id_buckets": spec["id_buckets"],
        "history_length": spec["history_length"],
        "n_event_types": spec["n_event_types"],
        "item_ids": (f"0..{spec['n_items'] - 1}; history items enter the model as tokens i + 1 (0 = padding), "
                     "oldest first and left-padded; candidates as item ids in n_candidates slots with a mask"),
        "event_codes": {name: code for code, name in enumerate(event_names)},
        "masked_q": MASKED_Q,
        "model_spec": spec,
        "config_name": cfg.name,
        "config_hash": cfg.config_hash(),
        "source_config_hash": members[0]["config_hash"],
        "env_preset": cfg.env.preset,
        "source_checkpoint": source_label(ckpts),
        "source_iteration": members[0]["iteration"],
        "source_mlflow_run_id": members[0]["mlflow_run_id"],
        # One entry per network; with several the model's output is the mean of their Q-values.
        "members": members,
        "parity": {**r["parity"], "samples": samples,
                   "reference": reference if len(ckpts) == 1 else f"mean of the members' {reference}",
                   "policy": "epsilon-greedy (0.5) over the checkpoint's Q-values"},
        "ops": r["ops"],
        "tensor_types": r["tensor_types"],
        "size_bytes": r["size_bytes"],
        "sha256": r["sha256"],
        "converter": r["converter"],
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _run_converter(work: Path) -> None:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "rllib_rec.deploy.convert", "--convert", str(work)], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not (work / "result.json").is_file():
        err = (work / "error.txt").read_text().strip() if (work / "error.txt").is_file() else ""
        if not err:
            lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
            err = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ExportError(f"TFLite conversion failed: {' '.join(err.split())[:300]}")


def _track(res: ExportResult, cfg: Any, meta: dict[str, Any], uri: str, experiment_id: str,
           log: Callable[[str], None]) -> None:
    """Log the files to the checkpoint's MLflow run (a new run in its experiment if that run is not in this
    store) and register one model version per file. ``mlflow.register_model`` needs an MLflow-format model
    in MLflow 3, so the version is created from the artifact directory with the client API."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    ensemble = len(res.members) > 1
    try:
        run_id = None if ensemble else meta.get("mlflow_run_id")  # an ensemble gets a run of its own
        if run_id:
            try:
                client.get_run(run_id)
            except Exception:  # noqa: BLE001 — not in this store (e.g. another tracking URI)
                run_id = None
        if not run_id:
            run_id = client.create_run(experiment_id, run_name=f"export-{cfg.name}{'-ensemble' if ensemble else ''}",
                                       tags={"source_checkpoint": res.source}).info.run_id
            client.set_terminated(run_id)
        name = f"rllib-rec-{cfg.name}"
        try:
            client.get_registered_model(name)
        except Exception:  # noqa: BLE001 — does not exist yet
            client.create_registered_model(name, description="rllib-rec Transformer-DQN Q-network, TFLite")
        for mode, path in res.files.items():
            artifact_path = f"tflite/{res.out_dir.name if ensemble else res.checkpoint.name}/{mode}"
            client.log_artifact(run_id, str(path), artifact_path)
            client.log_artifact(run_id, str(path.with_suffix(".json")), artifact_path)
            p = res.parity[mode]
            prefix = f"export_{mode.replace('-', '_')}"
            for key in ("max_abs_diff", "top1_agreement"):
                client.log_metric(run_id, f"{prefix}_{key}", float(p[key]))
            client.set_tag(run_id, f"{prefix}_path", str(path))
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            same = _registered_version(client, name, mode, res.source, sha)
            if same is not None:  # the same checkpoint exported again to the same bytes: one model version
                res.registered[mode] = f"{name}/{same} (already registered: same checkpoint and file SHA-256)"
                continue
            mv = client.create_model_version(
                name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                tags={"quantization": mode, "file": path.name, "config_hash": cfg.config_hash(),
                      "checkpoint": res.source, "sha256": sha, "max_abs_diff": f"{p['max_abs_diff']:.3g}",
                      "top1_agreement": f"{p['top1_agreement']:.4f}"},
            )
            res.registered[mode] = f"{name}/{mv.version}"
        res.mlflow_run_id, res.tracking_uri = run_id, uri
    except Exception as e:  # noqa: BLE001 — files are written and valid; say so and what failed
        msg = redact(" ".join(str(e).split()))[:200]
        raise TrackingError(f"exported to {res.out_dir}, but MLflow logging at {redact(uri)} failed: "
                            f"{type(e).__name__}: {msg}") from None
    log(f"logged to MLflow run {run_id} at {redact(uri)}")  # the versions are in the summary lines


def _registered_version(client: Any, name: str, mode: str, source: str, sha256: str) -> str | None:
    """The version of model ``name`` already registered for this checkpoint (or ensemble's members), mode and
    file digest, if any."""
    for v in client.search_model_versions(f"name='{name}'"):
        tags = v.tags or {}
        if (tags.get("checkpoint"), tags.get("quantization"), tags.get("sha256")) == (source, mode, sha256):
            return str(v.version)
    return None


def summary_lines(res: ExportResult) -> list[str]:
    """One line per exported file for the CLI."""
    lines = []
    for mode, path in res.files.items():
        p = res.parity[mode]
        lines.append(
            f"{path}  {path.stat().st_size / 1024:.0f} KiB  {mode:<12}  max|dQ| {p['max_abs_diff']:.2e} "
            f"(<= {p['tolerance']:.1e})  top-1 {p['top1_agreement']:.2%}"
        )
    for mode, version in res.registered.items():
        name_version, _, note = version.partition(" ")
        lines.append(f"registered {name_version} ({mode}{'; ' + note.strip('()') if note else ''})")
    return lines
