"""``rllib-rec``: one CLI for the whole workflow. Thin: parse, load config, call one function."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rllib_rec.errors import RllibRecError, UsageError

__all__ = ["main", "build_parser"]

EPILOG = """\
Config files are YAML with sections env, model, dqn, run (see configs/ and README). Override any key
with --set section.key=value (repeatable), e.g. --set env.preset=seed --set dqn.lr=1e-3.
"""


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="experiment YAML (e.g. configs/default.yaml)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set dqn.lr=1e-3 (repeatable; validated like the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rllib-rec",
        description="Long-term-engagement recommender: Transformer-DQN on Ray RLlib in a simulated shop.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "baselines",
        help="evaluate the baseline policies (random, popularity, history, myopic/planning oracles)",
        description="Run every baseline policy on seeded episodes of the config's env and print a table: "
        "mean return ± 95% CI, episode length, clicks, purchases and churn per episode.",
    )
    _add_config_args(p)
    p.add_argument("--episodes", type=int, default=1000, help="episodes per policy (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: run.eval_seed)")
    p.add_argument("--policies", nargs="+", default=None, help="subset of policies to run (default: all)")

    p = sub.add_parser(
        "train",
        help="train the Transformer-DQN locally (single node), tracked in MLflow, checkpointed",
        description="Train with RLlib DQN on the config's shop. Prints a progress line per iteration, "
        "checkpoints every run.checkpoint_every iterations and at the end, evaluates the greedy policy "
        "beside the baselines, and records params, metrics, the config, a learning-curve PNG and the "
        "checkpoint path in MLflow (local sqlite store under run.output_dir unless MLFLOW_TRACKING_URI "
        "or --tracking-uri says otherwise).",
    )
    _add_config_args(p, required=False)
    p.add_argument("--resume", metavar="RUN", help="continue RUN (run directory or name under run.output_dir) "
                   "from its last complete checkpoint; --set run.iterations=N extends it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.add_argument("--no-tracking", action="store_true", help="train without MLflow (metrics.jsonl, checkpoints "
                   "and evaluation are still written to the run directory)")
    p.add_argument("--offline", metavar="LOGS", help="learn from a Parquet interaction log (`rllib-rec collect`) "
                   "instead of the simulator: the replay buffer is filled once from the log (behaviour "
                   "probabilities drive the IPS weights) and no env step is taken; the simulator only "
                   "evaluates the result, beside the logging policy's own return")

    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint's greedy policy beside the baselines on held-out seeds",
        description="Greedy rollouts of a trained checkpoint on held-out episode seeds, in the same table "
        "format as `baselines` and on the same seeds.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint directory, or a run directory (its latest)")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the run's run.eval_episodes)")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: the run's run.eval_seed)")

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

    p = sub.add_parser(
        "demo",
        help="the main job on embedded defaults: train configs/debug.yaml, export + check TFLite, recommend",
        description="Train the debug config locally, export the final checkpoint to TFLite through the parity "
        "gate, answer one recommendation with LiteRT, and print where the run, checkpoint, MLflow store and "
        "model are. This is what `make demo` runs.",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a debug-config key, e.g. --set run.output_dir=/tmp/runs",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")

    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep with Ray Tune (ASHA), every trial in MLflow, best checkpoint -> best.json",
        description="Run tune.Tuner on the DQN config of the sweep file's base experiment with sweep.search_space "
        "sampled into it; print the trials sorted by sweep.metric and write <storage_path>/<name>/best.json "
        "(consumed by `rllib-rec export --best`). --resume continues an interrupted sweep without rerunning "
        "finished trials.",
    )
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep in <storage_path>/<name>")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or local sqlite)")
    p.add_argument("--no-tracking", action="store_true", help="sweep without MLflow (trials, best.json and "
                   "trials.txt are still written)")

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

    p = sub.add_parser(
        "collect",
        help="roll a behaviour policy in the simulator and write an interaction log (Parquet) for OPE / offline RL",
        description="Run --episodes seeded episodes (seeds --seed, --seed+1, ...) of the config's env with a "
        "behaviour policy and write one row per step to --out (schema: rllib_rec/offpolicy/logs.py). Behaviour "
        "probabilities are exact: random = 1/|candidates|; epsilon-greedy = (1-eps)*1[a == greedy] + "
        "eps/|candidates|. The file appears only when complete; an existing file is never overwritten "
        "unless --overwrite.",
    )
    _add_config_args(p, required=False)
    p.add_argument("--policy", required=True, metavar="POLICY",
                   help="random | epsilon-greedy (over --checkpoint if given, else over --base) | checkpoint | "
                   "a baseline name (popularity, history, myopic_oracle, planning_oracle; epsilon-greedy with "
                   "--epsilon)")
    p.add_argument("--checkpoint", help="checkpoint (or run) directory for --policy checkpoint/epsilon-greedy; "
                   "its config's env is used unless --config is given")
    p.add_argument("--base", default="history", help="baseline under --policy epsilon-greedy without "
                   "--checkpoint (default history)")
    p.add_argument("--epsilon", type=float, default=None, help="exploration rate (default 0.1 for "
                   "epsilon-greedy, 0 otherwise)")
    p.add_argument("--episodes", type=int, required=True, help="episodes to log")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument("--seed", type=int, default=None, help="first episode seed (default: run.seed)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser(
        "ope",
        help="off-policy evaluation (IPS, SNIPS, DM, DR with bootstrap CIs and ESS) on logs or the Open Bandit Dataset",
        description="Estimate a target policy's value from an interaction log written by `collect`: per-step "
        "IPS, SNIPS, DM and DR (reward model: mean reward per item x history-feature cell), 95% percentile-"
        "bootstrap intervals and the effective sample size of the importance weights; for multi-step episodes "
        "also per-decision and trajectory-wise IPS of the episode return. With --obd DIR: evaluate the "
        "Bernoulli-TS policy on the Open Bandit Dataset's uniform-random logs and the uniform-random policy on "
        "its Bernoulli-TS logs (DIR: obp's CSV layout or the compact copy in tests/data/obd).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--logs", help="interaction log (.parquet) written by `rllib-rec collect`")
    src.add_argument("--obd", metavar="DIR", help="Open Bandit Dataset directory")
    tgt = p.add_mutually_exclusive_group()
    tgt.add_argument("--checkpoint", help="target: this checkpoint's epsilon-greedy policy (greedy by default)")
    tgt.add_argument("--policy", help="target: random, popularity or history (observation-only policies)")
    p.add_argument("--epsilon", type=float, default=0.0, help="target exploration rate (default 0: greedy)")
    _add_config_args(p, required=False)
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap samples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--gamma", type=float, default=1.0, help="discount of the episode-return estimators (default 1)")

    p = sub.add_parser("show-config", help="print the resolved config (after presets and --set) as YAML")
    _add_config_args(p)
    return parser


def _cmd_baselines(args: argparse.Namespace) -> None:
    from envs.baselines import BASELINES, run_episodes
    from rllib_rec.config import load_config
    from rllib_rec.tables import policy_table

    cfg = load_config(args.config, args.overrides)
    if args.episodes < 2:
        raise UsageError(f"--episodes must be >= 2 for a confidence interval, got {args.episodes}")
    names = args.policies or list(BASELINES)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise UsageError(f"unknown policy {unknown[0]!r} (choose from {', '.join(BASELINES)})")
    seed = cfg.run.eval_seed if args.seed is None else args.seed
    print(f"env preset={cfg.env.preset} items={cfg.env.catalog.n_items} episodes={args.episodes} seeds={seed}..",
          file=sys.stderr)
    summaries = {}
    for name in names:
        t0 = time.perf_counter()
        summaries[name] = run_episodes(cfg.env, BASELINES[name], args.episodes, seed=seed).summary()
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(policy_table(summaries))


def _cmd_train(args: argparse.Namespace) -> None:
    from rllib_rec.training.train import summary_lines, train

    if not args.config and not args.resume:
        raise UsageError("give --config FILE (or --resume RUN)")
    if args.no_tracking and args.tracking_uri:
        raise UsageError("--no-tracking and --tracking-uri contradict each other; give one")
    result = train(args.config, args.overrides, resume=args.resume, tracking_uri=args.tracking_uri,
                   offline=args.offline, track=not args.no_tracking)
    print("\n".join(summary_lines(result)))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from rllib_rec.tables import policy_table
    from rllib_rec.training.evaluate import evaluate_checkpoint

    if args.episodes is not None and args.episodes < 2:
        raise UsageError(f"--episodes must be >= 2 for a confidence interval, got {args.episodes}")
    print(policy_table(evaluate_checkpoint(args.checkpoint, args.episodes, args.seed)))


def _cmd_export(args: argparse.Namespace) -> None:
    from rllib_rec.deploy.export import export_checkpoint, summary_lines

    res = export_checkpoint(args.checkpoint, args.best, args.quantize, args.out, args.samples,
                            args.tracking_uri, track=not args.no_mlflow, log=lambda s: print(s, file=sys.stderr))
    print("\n".join(summary_lines(res)))


def _cmd_serve(args: argparse.Namespace) -> None:
    # Imported lazily and free of TF/torch/Keras/Ray: the serving process only loads LiteRT.
    from rllib_rec.deploy.serve import run_server

    run_server(args.model, host=args.host, port=args.port, threads=args.threads, max_body_bytes=args.max_body_bytes)


def _cmd_demo(args: argparse.Namespace) -> None:
    from rllib_rec.cli.demo import run_demo

    print("\n".join(run_demo(args.overrides, args.tracking_uri)))


def _cmd_tune(args: argparse.Namespace) -> None:
    from rllib_rec.tuning.sweep import run_sweep

    if args.no_tracking and args.tracking_uri:
        raise UsageError("--no-tracking and --tracking-uri contradict each other; give one")
    res = run_sweep(args.config, args.overrides, resume=args.resume, tracking_uri=args.tracking_uri,
                    log=lambda s: print(s, file=sys.stderr), track=not args.no_tracking)
    print(f"best.json: {res.best_json}")
    print(f"best checkpoint: {res.best['checkpoint']}  ({res.best['metric']}={res.best['value']:.4g})")


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


def _resolve_env_config(config: str | None, overrides: list[str], ckpt_cfg=None):  # noqa: ANN001, ANN202
    """--config (+ --set) if given, else the checkpoint's config (+ --set)."""
    from rllib_rec.config import config_from_dict, load_config, merge_dicts, parse_overrides

    if config is not None or ckpt_cfg is None:
        return load_config(config, overrides)
    return config_from_dict(merge_dicts(ckpt_cfg.to_dict(), parse_overrides(overrides)),
                            "<checkpoint config> + --set" if overrides else "<checkpoint config>")


def _load_checkpoint_module(path: str):  # noqa: ANN202
    from rllib_rec.training.checkpoints import checkpoint_config, load_module, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    return ckpt, checkpoint_config(ckpt), load_module(ckpt)


def _check_module_fits(module, n_items: int, history_length: int, what: str) -> None:  # noqa: ANN001
    m_items = int(module.action_space.n)
    m_hist = int(module.observation_space["items"].shape[0])
    if (m_items, m_hist) != (n_items, history_length):
        raise UsageError(f"checkpoint expects {m_items} items and history {m_hist}, {what} has {n_items} items "
                       f"and history {history_length}")


def _cmd_collect(args: argparse.Namespace) -> None:
    from envs import ECommerceEnv
    from envs.baselines import BASELINES
    from rllib_rec.offpolicy.collect import collect_logs, make_behaviour

    choices = ["random", "epsilon-greedy", "checkpoint", *[b for b in BASELINES if b != "random"]]
    if args.policy not in choices:
        raise UsageError(f"unknown --policy {args.policy!r} (choose from {', '.join(choices)})")
    if args.episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {args.episodes}")
    if args.epsilon is not None and not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    if args.policy == "checkpoint" and not args.checkpoint:
        raise UsageError("--policy checkpoint needs --checkpoint")
    if args.checkpoint and args.policy not in ("checkpoint", "epsilon-greedy"):
        raise UsageError(f"--checkpoint applies to --policy checkpoint or epsilon-greedy, not {args.policy!r}")
    if not args.config and not args.checkpoint:
        raise UsageError("give --config FILE (or --checkpoint CKPT to use its config)")
    out = Path(args.out)
    if out.exists() and not args.overwrite:  # before any expensive work
        raise UsageError(f"{out}: already exists; refusing to overwrite it (use --overwrite or another --out)")
    module = ckpt = ckpt_cfg = None
    if args.checkpoint:
        ckpt, ckpt_cfg, module = _load_checkpoint_module(args.checkpoint)
    cfg = _resolve_env_config(args.config, args.overrides, ckpt_cfg)
    env = ECommerceEnv(cfg.env)
    if module is not None:
        _check_module_fits(module, env.n_items, env.history_length, "the config's env")
    seed = cfg.run.seed if args.seed is None else args.seed
    try:
        behaviour = make_behaviour(args.policy, env, epsilon=args.epsilon, base=args.base, module=module,
                                   checkpoint=str(ckpt) if ckpt else None, seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"collect: policy={behaviour.policy_id} env preset={cfg.env.preset} items={env.n_items} "
          f"episodes={args.episodes} seeds={seed}..", file=sys.stderr)
    try:
        res = collect_logs(out, cfg.env, behaviour, args.episodes, seed=seed, overwrite=args.overwrite,
                           log=lambda s: print(s, file=sys.stderr))
    except (FileExistsError, IsADirectoryError) as e:
        raise UsageError(str(e)) from None
    print(res.summary())


def _cmd_ope(args: argparse.Namespace) -> None:
    from rllib_rec.offpolicy.estimators import estimates_table

    if args.n_bootstrap < 2:
        raise UsageError(f"--n-bootstrap must be >= 2, got {args.n_bootstrap}")
    if args.obd:
        from rllib_rec.offpolicy.obd import evaluate_obd

        if args.checkpoint or args.policy or args.config:
            raise UsageError("--obd evaluates its own two policies; --checkpoint/--policy/--config do not apply")
        results = evaluate_obd(args.obd, n_bootstrap=args.n_bootstrap, seed=args.seed)
        for i, (name, ests) in enumerate(results.items()):
            print(("\n" if i else "") + f"Open Bandit Dataset: {name} (reward = click)")
            print(estimates_table(ests))
            ratio = ests[0].value / ests[-1].value
            print(f"IPS / logged click rate = {ratio:.6f}")
        return
    _ope_logs(args, estimates_table)


def _ope_logs(args: argparse.Namespace, estimates_table) -> None:  # noqa: ANN001
    from envs import ECommerceEnv, make_env_config
    from rllib_rec.offpolicy.estimators import evaluate_logs, target_distribution
    from rllib_rec.offpolicy.logs import log_arrays, read_logs, read_metadata

    if not args.checkpoint and not args.policy:
        raise UsageError("give the target policy: --checkpoint CKPT or --policy random|popularity|history")
    if not 0.0 <= args.epsilon <= 1.0:
        raise UsageError(f"--epsilon must be in [0, 1], got {args.epsilon}")
    meta = read_metadata(args.logs)  # validates the file before anything expensive
    n_items, hist = meta["n_items"], meta["history_length"]
    env = module = None
    if args.policy:
        if args.policy not in ("random", "popularity", "history"):
            raise UsageError(f"--policy {args.policy!r} cannot be evaluated on logs (choose random, popularity or "
                           "history; the oracles read hidden state that logs do not record)")
        if args.config:
            env_cfg = _resolve_env_config(args.config, args.overrides).env
        elif meta["env_config"] is not None:
            env_cfg = make_env_config(meta["env_config"], "env")
        else:
            raise UsageError(f"{args.logs}: no env config in the log's metadata; give --config")
        env = ECommerceEnv(env_cfg)
        if (env.n_items, env.history_length) != (n_items, hist):
            raise UsageError(f"env has {env.n_items} items and history {env.history_length}, the log has "
                           f"{n_items} and {hist}")
        target = args.policy if args.epsilon == 0 or args.policy == "random" else \
            f"epsilon-greedy({args.policy},eps={args.epsilon:g})"
    else:
        _, _, module = _load_checkpoint_module(args.checkpoint)
        _check_module_fits(module, n_items, hist, "the log")
        target = f"checkpoint {args.checkpoint}" + (f" (epsilon {args.epsilon:g})" if args.epsilon else " (greedy)")
    arrays = log_arrays(read_logs(args.logs))
    pi = target_distribution(arrays, args.policy, env, module, args.epsilon)
    ests = evaluate_logs(arrays, pi, n_bootstrap=args.n_bootstrap, seed=args.seed, gamma=args.gamma)
    n_ep = len(set(arrays.episode_id.tolist()))
    print(f"target: {target}; logs: {args.logs} ({arrays.n_rows:,} rows, {n_ep:,} episodes, behaviour "
          f"{', '.join(sorted(set(arrays.policy_id.tolist())))})")
    print("IPS/SNIPS/DM/DR estimate the expected reward per decision on the logged states"
          + ("; PDIS / trajectory IS estimate the episode return" if (arrays.step > 0).any() else ""))
    print(estimates_table(ests))


def _cmd_show_config(args: argparse.Namespace) -> None:
    import yaml

    from rllib_rec.config import load_config

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


COMMANDS = {
    "baselines": _cmd_baselines,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "show-config": _cmd_show_config,
    "export": _cmd_export,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
    "tune": _cmd_tune,
    "submit": _cmd_submit,
    "collect": _cmd_collect,
    "ope": _cmd_ope,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from rllib_rec.training.tracking import redact

    try:
        rc = COMMANDS[args.command](args)
    except RllibRecError as e:
        # redact: a config error may quote the offending value, and a value may be a credentialed URL
        print(f"rllib-rec {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rllib-rec {args.command}: interrupted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
