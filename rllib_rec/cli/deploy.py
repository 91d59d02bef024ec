"""Commands that ship a model: export, serve, submit.

Each command imports what it runs when it runs: ``rllib-rec --help`` and ``rllib-rec serve`` must not load
torch, TensorFlow, Keras, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys

from rllib_rec.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to a verified TFLite model (+ JSON sidecar), logged and registered in MLflow",
        description="Rebuild the checkpoint's Q-network under the TensorFlow Keras backend (in a child process), "
        "convert it with TFLite builtin ops only and check it against the checkpoint on --samples simulator "
        "observations (float: max |dQ| <= 1e-4 and 100% top-1 agreement; fp16 / dynamic-int8: a tolerance "
        "relative to the Q scale and >= 99% top-1). A model that fails is not written; existing files are "
        "never overwritten.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint directory, or a run directory (its latest)")
    src.add_argument("--best", metavar="BEST_JSON", help='JSON file {"checkpoint": PATH, ...} (written by a sweep)')
    p.add_argument("--quantize", nargs="+", default=["none"], metavar="MODE",
                   help="none (float32, default), fp16, dynamic-int8; several modes export several files")
    p.add_argument("--out", help="output directory (default: <run>/exports/<checkpoint name>)")
    p.add_argument("--samples", type=int, default=1000, help="simulator observations for the parity check "
                   "(>= 1000, default 1000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the run's "
                   "local sqlite store)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log or register in MLflow")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve a .tflite export over HTTP (FastAPI + uvicorn, LiteRT only: no TF/torch/Keras/Ray)",
        description="POST /recommend {items, events, candidates?, k} -> top-k items with Q-values; GET /health. "
        "Reads the export's JSON sidecar (same path, .json). Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--model", required=True, help="the .tflite file written by `rllib-rec export`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=int, default=1, help="LiteRT interpreter threads (default 1)")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024, metavar="N",
                   help="refuse request bodies over N bytes with 413 (default 65536)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "submit",
        help="run an rllib-rec command as a Ray job on a running cluster (wraps `ray job submit`)",
        description="Submit `rllib-rec ARGS...` as a Ray job: ships the source tree (no .git, venvs, runs), "
        "sets KERAS_BACKEND once via the runtime_env, runs the project's interpreter, and uses Ray 2.60 "
        "token auth (RAY_AUTH_MODE=token unless set). Prints the equivalent `ray job submit` command. "
        "Example: rllib-rec submit --address http://127.0.0.1:8265 -- train --config configs/debug.yaml",
    )
    p.add_argument("--address", required=True, help="job server, e.g. http://127.0.0.1:8265")
    p.add_argument("--python", help="interpreter on the cluster (default: this one)")
    p.add_argument("--working-dir", default=".", help="source tree to ship (default: .)")
    p.add_argument("--no-wait", action="store_true", help="return after submission instead of streaming logs")
    p.add_argument("--dry-run", action="store_true", help="only print the `ray job submit` command")
    p.add_argument("--submission-id", help="job id to use (default: Ray chooses)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="the rllib-rec command to run")
    p.set_defaults(func=_cmd_submit)


def _cmd_export(args: argparse.Namespace) -> None:
    from rllib_rec.deploy.export import export_checkpoint, summary_lines

    res = export_checkpoint(args.checkpoint, args.best, args.quantize, args.out, args.samples,
                            args.tracking_uri, track=not args.no_mlflow, log=lambda s: print(s, file=sys.stderr))
    print("\n".join(summary_lines(res)))


def _cmd_serve(args: argparse.Namespace) -> None:
    # Imported lazily and free of TF/torch/Keras/Ray: the serving process only loads LiteRT.
    from rllib_rec.deploy.serve import run_server

    run_server(args.model, host=args.host, port=args.port, threads=args.threads, max_body_bytes=args.max_body_bytes)


def _cmd_submit(args: argparse.Namespace) -> int:
    from rllib_rec.deploy.submit import submit

    job_args = [a for a in args.job_args]
    if job_args[:1] == ["--"]:
        job_args = job_args[1:]
    try:
        return submit(args.address, job_args, args.python, args.working_dir, args.no_wait, args.dry_run,
                      args.submission_id)
    except ValueError as e:
        raise UsageError(str(e)) from None
