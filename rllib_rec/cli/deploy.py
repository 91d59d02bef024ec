"""Commands that ship a model: export, serve, submit.

Each command imports what it runs when it runs: ``rllib-rec --help`` and ``rllib-rec serve`` must not load
torch, TensorFlow, Keras, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from rllib_rec.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for add in (_add_export, _add_serve, _add_submit, _add_head):
        add(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to a verified TFLite model (+ JSON sidecar), logged and registered in MLflow",
        description="Rebuild the checkpoint's Q-network under the TensorFlow Keras backend (in a child process), "
        "convert it with TFLite builtin ops only and check it against the checkpoint on --samples simulator "
        "observations (float: max |dQ| <= 1e-4 and 100% top-1 agreement; fp16 / dynamic-int8: a tolerance "
        "relative to the Q scale and >= 99% top-1). A model that fails is not written; existing files are "
        "never overwritten. Several --checkpoint paths (runs of one config on different training seeds) export "
        "as one model acting on the mean of their Q-values: an ensemble, served like a single network.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", nargs="+", metavar="PATH",
                     help="checkpoint directory, or a run directory (its selected, else latest, checkpoint); "
                     "several: one ensemble model over their mean Q-values")
    src.add_argument("--best", metavar="BEST_JSON", help='JSON file {"checkpoint": PATH, ...} (written by a sweep)')
    p.add_argument("--quantize", nargs="+", default=["none"], metavar="MODE",
                   help="none (float32, default), fp16, dynamic-int8; several modes export several files")
    p.add_argument("--out", help="output directory (default: <run>/exports/<checkpoint name>; an ensemble: "
                   "<first run>/exports/ensemble-<N>-<digest of its members>)")
    p.add_argument("--samples", type=int, default=1000, help="simulator observations for the parity check "
                   "(>= 1000, default 1000)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the run's "
                   "local sqlite store)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log or register in MLflow")
    p.set_defaults(func=_cmd_export)


def _add_serve(sub: argparse._SubParsersAction) -> None:
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


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="run an rllib-rec command as a Ray job on a running cluster (like `ray job submit`)",
        description="Submit `rllib-rec ARGS...` as a Ray job and follow its logs. A job runs in a temporary "
        "copy of the working dir, deleted with the job, so results must go elsewhere: relative output paths "
        "(run.output_dir, sweep.storage_path, --out) and MLflow stores under the working dir are refused "
        "(--allow-ephemeral to override), as are inputs the package leaves out. Ships the source tree (no "
        ".git, venvs, runs, exports, stores, logs, data), sets KERAS_BACKEND once via the runtime_env, runs the "
        "project's interpreter, uses Ray 2.60 token auth (RAY_AUTH_MODE=token unless set) and prints the "
        "equivalent `ray job submit` command. Example: rllib-rec submit --address http://127.0.0.1:8265 -- "
        "train --config configs/debug.yaml --set run.output_dir=/shared/runs",
    )
    p.add_argument("--address", required=True, help="job server, e.g. http://127.0.0.1:8265")
    p.add_argument("--python", help="interpreter on the cluster (default: this one)")
    p.add_argument("--working-dir", default=".", help="source tree to ship (default: .)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI the job logs to, sent as its MLFLOW_TRACKING_URI "
                   "(default: $MLFLOW_TRACKING_URI here; neither: the cluster's environment, else the sqlite "
                   "store under run.output_dir). Credentials never travel with the job: the cluster's "
                   "environment must hold MLFLOW_TRACKING_USERNAME/PASSWORD")
    p.add_argument("--allow-ephemeral", action="store_true", help="submit even if results would stay in the "
                   "job's temporary working dir (lost when the job ends)")
    p.add_argument("--agent-wait", type=float, default=60.0, metavar="S", help="retry for up to S seconds while "
                   "the head's job agent is not up yet (a head just started; default 60)")
    p.add_argument("--no-wait", action="store_true", help="return after submission instead of following the logs")
    p.add_argument("--dry-run", action="store_true", help="check and print the `ray job submit` command only")
    p.add_argument("--submission-id", help="job id to use (default: Ray chooses)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, metavar="-- ARGS", help="the rllib-rec command to run")
    p.set_defaults(func=_cmd_submit)


def _add_head(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "head",
        help="start/stop a private local Ray head for `submit` (own free ports and temp dir; stopped by PID)",
        description="A Ray head on this machine that collides with no other Ray: every port is a free port "
        "(the job server on 127.0.0.1; Ray binds some others on every interface) and the temp dir is its own. `start` prints the job server address on stdout (the rest on "
        "stderr) once the head's job agent answers; `stop` signals only that head's processes, found by its "
        "temp dir and GCS port (`ray stop` would stop every Ray instance on the machine); `status` prints the address.",
    )
    head_sub = p.add_subparsers(dest="head_command", metavar="ACTION", required=True)
    for action, text in (("start", "start a head"), ("stop", "stop the head of --temp-dir"),
                         ("status", "print the head's job server address (exit 1 if none runs)")):
        hp = head_sub.add_parser(action, help=text, description=text)
        hp.add_argument("--temp-dir", default=None, help="the head's own temp dir, at most 40 characters "
                        "(default: /tmp/rllib-rec-head-<uid>)")
        if action == "start":
            hp.add_argument("--num-cpus", type=int, default=None, help="CPUs the head offers (default: all)")
        hp.set_defaults(func=_cmd_head)


def _cmd_export(args: argparse.Namespace) -> None:
    from rllib_rec.deploy.export import export_checkpoint, summary_lines

    res = export_checkpoint(args.checkpoint, args.best, args.quantize, args.out, args.samples,
                            args.tracking_uri, track=not args.no_mlflow, log=lambda s: print(s, file=sys.stderr))
    print("\n".join(summary_lines(res)))


def _cmd_serve(args: argparse.Namespace) -> None:
    # Imported lazily and free of TF/torch/Keras/Ray: the serving process only loads LiteRT.
    from rllib_rec.deploy.serve import run_server

    run_server(args.model, host=args.host, port=args.port, threads=args.threads, max_body_bytes=args.max_body_bytes)


def _cmd_head(args: argparse.Namespace) -> int:
    from rllib_rec.deploy.head import DEFAULT_TEMP_DIR, head_info, start_head, stop_head

    temp_dir = args.temp_dir or DEFAULT_TEMP_DIR
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731 — stdout carries only the address
    if args.head_command == "start":
        print(start_head(temp_dir, args.num_cpus, log=log), flush=True)
    elif args.head_command == "stop":
        stop_head(temp_dir, log=log)
    else:
        info = head_info(temp_dir)
        if info is None:
            log(f"no Ray head runs in {temp_dir}")
            return 1
        print(info["address"], flush=True)
    return 0


def _parse_job_args(job_args: list[str], build_parser: Callable[[], argparse.ArgumentParser]) -> argparse.Namespace:
    """The job's own command line, parsed (and so checked) here by rllib-rec's parser; one line if wrong."""
    parser = build_parser()

    def refuse(message: str, prog: str = parser.prog) -> None:
        raise UsageError(f"job command ({prog}): {message}")

    parser.error = refuse  # type: ignore[method-assign]
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # noqa: SLF001
        for name, sp in getattr(action, "choices", {}).items():
            sp.error = lambda message, prog=f"rllib-rec {name}": refuse(message, prog)  # type: ignore[method-assign]
    ns, extra = parser.parse_known_args(job_args)
    if extra:
        refuse(f"unrecognized arguments: {' '.join(extra)}", f"rllib-rec {ns.command}")
    if ns.command is None:
        raise UsageError("nothing to submit: give the rllib-rec command after --, e.g. -- train --config X")
    if ns.command in ("submit", "head"):
        raise UsageError(f"`{ns.command}` cannot run as a job; run it here")
    return ns


def _cmd_submit(args: argparse.Namespace) -> int:
    # Ray reads RAY_AUTH_MODE once, when it is first imported (the checks below import it): set it first.
    # Ray 2.60 heads (`ray start`, `ray up`) use token auth.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from rllib_rec.deploy.submit import check_job_outputs, submit

    job_args = list(args.job_args)
    if job_args[:1] == ["--"]:
        job_args = job_args[1:]
    if not job_args:
        raise UsageError("nothing to submit: give the rllib-rec command after --, e.g. -- train --config X")
    ns = _parse_job_args(job_args, args.build_parser)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    check_job_outputs(ns.command, ns, tracking_uri, args.working_dir, args.allow_ephemeral)
    return submit(args.address, job_args, args.python, args.working_dir, args.no_wait, args.dry_run,
                  args.submission_id, tracking_uri, args.agent_wait)
