"""The TensorFlow side of ``rllib-rec export``, run as a child process with ``KERAS_BACKEND=tensorflow``.

``python -m rllib_rec.deploy.convert --convert JOB_DIR`` reads the job the parent wrote (the network's spec,
its weights by Keras variable path, reference observations and the checkpoint's Q-values), rebuilds the
network from the spec, loads the weights (strictly: a wrong architecture fails; an ensemble's members become
one model over their mean Q-values), exports a SavedModel, converts it with ``TFLITE_BUILTINS`` only (no Flex: pip TensorFlow cannot run it) per quantisation mode, and
runs every sample through ``ai_edge_litert`` at batch 1 (what ``serve`` does) and as one batch. The parity
figures go to ``result.json``; the parent decides the gate. A separate process because Keras freezes its
backend at first import and the parent runs Keras on torch: for the same reason Keras, TensorFlow and
LiteRT are imported inside the functions here (the parent imports this module for its constants).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SIGNATURE", "INPUTS", "MASKED_THRESHOLD", "tflite_ops"]

SIGNATURE = "serving_default"
INPUTS = ("items", "events", "candidates", "candidate_mask")
# Entries of the Q-vector for invalid slots are MASKED_Q = -3e4 (rllib_rec.agent.model); anything above this
# threshold in a masked slot means the mask was lost in conversion.
MASKED_THRESHOLD = -1e4


# --------------------------------------------------------------------------------------------- child
def _convert_main(work: Path) -> None:
    """Child process (KERAS_BACKEND=tensorflow): rebuild, load weights, convert, measure parity."""
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        raise RuntimeError("the converter child needs KERAS_BACKEND=tensorflow")
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    job = json.loads((work / "job.json").read_text())
    model = _rebuild(job, work / "weights.npz")
    saved = work / "saved_model"
    model.export(str(saved), format="tf_saved_model", verbose=False)

    with np.load(work / "samples.npz") as z:
        obs = {k: z[k] for k in INPUTS}
        q_ref = z["q_ref"]
    cand = obs["candidate_mask"] > 0
    q_scale = float(np.max(np.abs(np.where(cand, q_ref, 0.0))))

    out: dict[str, Any] = {"spec": job["spec"], "modes": {}}
    for mode in job["modes"]:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode in ("fp16", "dynamic-int8"):
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "fp16":
            conv.target_spec.supported_types = [tf.float16]
        blob = conv.convert()
        (work / f"{mode}.tflite").write_bytes(blob)

        interp = Interpreter(model_content=blob, num_threads=1)
        runner = interp.get_signature_runner(SIGNATURE)
        out_name = interp.get_signature_list()[SIGNATURE]["outputs"][0]
        q_single = np.stack([
            runner(**{k: obs[k][i : i + 1] for k in INPUTS})[out_name][0] for i in range(len(q_ref))
        ])
        q_batch = runner(**obs)[out_name]
        out["modes"][mode] = {
            "parity": _parity(q_single, q_batch, q_ref, cand, q_scale),
            "ops": tflite_ops(blob),
            "tensor_types": _tensor_types(blob),
            "size_bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "inputs": _io_details(runner.get_input_details()),
            "output": {**_io_details(runner.get_output_details())[out_name], "name": out_name},
            "converter": {"tensorflow": tf.__version__, "keras": keras.__version__,
                          "supported_ops": ["TFLITE_BUILTINS"],
                          "optimizations": [] if mode == "none" else ["DEFAULT"],
                          "supported_types": ["float16"] if mode == "fp16" else []},
        }
    (work / "result.json").write_text(json.dumps(out))

def _rebuild(job: dict[str, Any], weights_file: Path) -> Any:
    """The job's network(s) with their weights loaded; several become one model over their mean Q-values."""
    from rllib_rec.agent.model import build_mean_q_model, build_q_model, load_q_model_weights
    from rllib_rec.agent.spec import QNetSpec

    # The per-item tables come with the weights, so the catalog need not be rebuilt here.
    spec = QNetSpec.from_dict({**job["spec"], "catalog": None})
    n_members = int(job.get("members", 1))
    members = []
    with np.load(weights_file) as z:
        for k in range(n_members):
            model = build_q_model(spec, name="q_net" if n_members == 1 else f"q_net_{k}")
            try:
                load_q_model_weights(model, {p: z[f"m{k}_w{i}"] for i, p in enumerate(job["weight_paths"])})
            except (KeyError, ValueError) as e:
                raise RuntimeError(f"checkpoint weights do not fit the model built from its recorded config: {e}"
                                   ) from None
            members.append(model)
    return members[0] if n_members == 1 else build_mean_q_model(members)


def _io_details(details: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{signature name: {tensor, shape, dtype}} from a signature runner. The tensors' order is not the
    declared order (and their names carry a ``serving_default_`` prefix), so callers map by name."""
    return {name: {"tensor": d["name"], "shape": [int(s) for s in d["shape_signature"]],
                   "dtype": np.dtype(d["dtype"]).name} for name, d in details.items()}

def _parity(q_single: np.ndarray, q_batch: np.ndarray, q_ref: np.ndarray, cand: np.ndarray,
            q_scale: float) -> dict[str, Any]:
    diff = np.abs(q_single - q_ref)[cand]
    diff_b = np.abs(q_batch - q_ref)[cand]
    masked_ref = np.where(cand, q_ref, -np.inf)
    top_ref = np.argmax(masked_ref, axis=1)
    top_tfl = np.argmax(np.where(cand, q_single, -np.inf), axis=1)
    srt = np.sort(masked_ref, axis=1)
    gap = srt[:, -1] - srt[:, -2] if masked_ref.shape[1] > 1 else np.full(len(srt), np.inf)
    masked = ~cand
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "max_abs_diff_batched": float(diff_b.max()) if diff_b.size else 0.0,
        "q_scale": q_scale,
        "top1_agreement": float(np.mean(top_ref == top_tfl)),
        "top1_disagreements": int(np.sum(top_ref != top_tfl)),
        "min_top2_gap": float(np.min(gap[np.isfinite(gap)])) if np.isfinite(gap).any() else None,
        "masked_ok": bool(np.all(q_single[masked] <= MASKED_THRESHOLD)) if masked.any() else True,
    }

def _child(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--convert":
        print("usage: python -m rllib_rec.deploy.export --convert JOB_DIR (internal; use `rllib-rec export`)",
              file=sys.stderr)
        return 2
    work = Path(argv[1])
    try:
        _convert_main(work)
    except Exception as e:  # noqa: BLE001 — reported to the parent as one line
        (work / "error.txt").write_text(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
        return 1
    return 0

def tflite_ops(model: bytes) -> list[str]:
    """Operator names of a .tflite flatbuffer (``CUSTOM:<name>`` for custom/Flex ops), sorted.

    Reads the flatbuffer schema shipped with ai-edge-litert, so it needs no TensorFlow.
    """
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    ops = set()
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        name = names.get(code, f"UNKNOWN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = f"CUSTOM:{custom.decode() if isinstance(custom, bytes) else custom}"
        ops.add(name)
    return sorted(ops)

def _tensor_types(model: bytes) -> dict[str, int]:
    """How many tensors of each type (how much of the model a quantisation mode actually changed)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    m = schema.Model.GetRootAsModel(model, 0)
    counts: dict[str, int] = {}
    for s in range(m.SubgraphsLength()):
        g = m.Subgraphs(s)
        for t in range(g.TensorsLength()):
            name = names.get(g.Tensors(t).Type(), "?")
            counts[name] = counts.get(name, 0) + 1
    return counts


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
