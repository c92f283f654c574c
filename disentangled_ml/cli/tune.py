"""Search lambda (track regularisation weight), triplet margin and learning rate (and optionally the backbone width) with keras-tuner.

Every trial trains on the same splits and fixed validation triplets (prepared
once in TUNE_DIR/data) for --epochs epochs of --steps-per-epoch steps, with the
schedule of `dml train`, and is scored on the validation triplets (--objective).
Rerun the same command to resume an interrupted search: finished trials are
kept. At the end a results table is printed and TUNE_DIR/results.csv,
results.json and best.json (the best trial's full config, for
`dml train PREPARED_DIR --out RUN --config TUNE_DIR/best.json`) are written.
TensorBoard: `tensorboard --logdir TUNE_DIR/tensorboard` (HParams tab).

Distributed: start one chief (`--chief --oracle-port PORT`, trains nothing) and
any number of workers (`--worker 0`, `--worker 1`, ... with the same
--oracle-ip/--oracle-port and the same other options) that share TUNE_DIR.
"""

from __future__ import annotations

import argparse

from disentangled_ml.cli import CliError
from disentangled_ml.cli.common import add_config_arguments, load_config

HELP = "hyperparameter search over lambda, margin and learning rate (resumable, distributable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prepared_dir", metavar="PREPARED_DIR", nargs="?",
                        help="directory written by `dml prepare` (not needed with --summary)")
    parser.add_argument("--out", metavar="TUNE_DIR",
                        help="search directory (trials, TensorBoard logs, results); an existing search there is resumed")
    parser.add_argument("--summary", metavar="TUNE_DIR",
                        help="print the results table of an existing search and rewrite its results.csv, "
                             "results.json and best.json; trains nothing")
    parser.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="random",
                        help="search strategy; bayesian = Gaussian-process Bayesian optimisation after "
                             "max(2, min(3 x dimensions, max-trials / 2)) random trials; hyperband sets its "
                             "own trial count from --epochs (its maximum) and factor 3")
    parser.add_argument("--max-trials", type=int, default=None, metavar="N",
                        help="trials in total, counting those of an interrupted run (random and bayesian; "
                             "default 10; not with hyperband)")
    add_config_arguments(parser, "base config.json for everything not searched; default: PREPARED_DIR/config.json",
                         epochs_help="epochs per trial (train.epochs{default}); early "
                                     "stopping on val_mean_acc may end a trial sooner")
    parser.add_argument("--lambda-range", nargs=2, type=float, default=[0.01, 1.0], metavar=("MIN", "MAX"),
                        help="smallest and largest non-zero lambda (loss.track_weight, dimensionless, > 0); "
                             "tried on a log-spaced grid of --lambda-points values, plus 0")
    parser.add_argument("--lambda-points", type=int, default=5, metavar="N",
                        help="number of log-spaced non-zero lambda values")
    parser.add_argument("--no-zero-lambda", action="store_true",
                        help="do not try lambda = 0 (training without track regularisation)")
    parser.add_argument("--margin-range", nargs=2, type=float, default=[0.05, 0.5], metavar=("MIN", "MAX"),
                        help="triplet margin range (loss.margin, Euclidean distance on unit-norm embeddings, "
                             ">= 0), sampled uniformly; MIN = MAX fixes it")
    parser.add_argument("--lr-range", nargs=2, type=float, default=[1e-4, 1e-2], metavar=("MIN", "MAX"),
                        help="Adam learning rate range (train.learning_rate, > 0), sampled log-uniformly; "
                             "MIN = MAX fixes it")
    parser.add_argument("--widths", metavar="W1,W2,...",
                        help="backbone stem widths to try (model.width, filters, comma-separated, each >= 4); "
                             "default: keep the config's width")
    parser.add_argument("--objective", default="mean", metavar="SPEC",
                        help="what a trial maximises on the validation triplets: 'mean' (mean triplet accuracy "
                             "over the conditions, val_mean_acc), one condition ('genre', or 'track'), or "
                             "weights 'genre=0.5,mood=0.5' (weighted mean of those accuracies)")
    parser.add_argument("--seed", type=int, default=1,
                        help="oracle seed (>= 1): the same seed draws the same hyperparameters")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--chief", action="store_true",
                      help="distributed search: serve the oracle at --oracle-ip:--oracle-port; trains nothing and "
                           "returns when all trials have ended")
    role.add_argument("--worker", type=int, metavar="ID",
                      help="distributed search: worker number ID (>= 0) that trains trials handed out by the chief")
    parser.add_argument("--oracle-ip", default="127.0.0.1", metavar="IP",
                        help="with --chief/--worker: the chief's address (the chief listens on it)")
    parser.add_argument("--oracle-port", type=int, metavar="PORT",
                        help="with --chief/--worker: the chief's TCP port")
    parser.add_argument("--connect-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="with --worker: how long to wait for the chief to answer, in seconds")
    parser.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                        help="with --worker: how often to tell the chief this worker is alive while it trains")
    parser.add_argument("--worker-lease", type=float, default=600.0, metavar="SECONDS",
                        help="with --chief: after this long without word from a worker, give its trial to the next "
                             "worker that asks (or to the same --worker ID restarted) and stop waiting for it; keep "
                             "it several heartbeats long")
    parser.add_argument("--quiet", action="store_true", help="no per-trial display or Keras progress lines")


def _widths(text):
    if text is None:
        return None
    try:
        return tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise CliError(f"--widths {text!r}: give comma-separated integers, e.g. 16,32,64") from None


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.config import ConfigError
    from disentangled_ml.data.manifest import ManifestError
    from disentangled_ml.tuning.hypermodel import SearchSpace
    from disentangled_ml.tuning.search import format_table, run_search, summarize

    if args.summary:
        if args.prepared_dir or args.out:
            raise CliError("--summary TUNE_DIR takes no PREPARED_DIR or --out.")
        try:
            summary = summarize(args.summary, write=True)
        except ConfigError as e:
            raise CliError(str(e)) from None
        print(format_table(summary))
        print(f"{len(summary.completed)} of {len(summary.rows)} trial(s) completed; wrote results.csv, results.json"
              + (" and best.json" if summary.best else "") + f" in {args.summary}")
        return 0

    if not args.prepared_dir or not args.out:
        raise CliError("give PREPARED_DIR and --out TUNE_DIR (or --summary TUNE_DIR).")
    if (args.chief or args.worker is not None) and args.oracle_port is None:
        raise CliError("--chief and --worker need --oracle-port PORT (the same for the chief and every worker).")
    if args.tuner == "hyperband" and args.max_trials is not None:
        raise CliError("--max-trials does not apply to --tuner hyperband: it derives its trial count from --epochs "
                       "(its maximum epochs per trial) and factor 3.")
    max_trials = None if args.tuner == "hyperband" else (10 if args.max_trials is None else args.max_trials)
    if max_trials is not None and max_trials < 1:
        raise CliError(f"--max-trials {max_trials}: give at least 1 trial.")
    role = "chief" if args.chief else ("worker" if args.worker is not None else None)

    cfg = load_config(args)
    try:
        space = SearchSpace(lambda_range=tuple(args.lambda_range), lambda_points=args.lambda_points,
                            include_zero_lambda=not args.no_zero_lambda, margin_range=tuple(args.margin_range),
                            learning_rate_range=tuple(args.lr_range), widths=_widths(args.widths),
                            objective=args.objective)
        summary = run_search(args.prepared_dir, args.out, cfg, space, tuner=args.tuner, max_trials=max_trials,
                             seed=args.seed, role=role, worker_id=args.worker,
                             oracle_ip=args.oracle_ip if role else None, oracle_port=args.oracle_port,
                             verbose=0 if args.quiet else 2, connect_timeout_s=args.connect_timeout,
                             heartbeat_s=args.heartbeat, worker_lease_s=args.worker_lease)
    except (ConfigError, ManifestError) as e:
        raise CliError(str(e)) from None
    if role == "worker":
        print(f"worker {args.worker}: done; the chief writes the results in {args.out}")
        return 0
    print(format_table(summary))
    print(f"{len(summary.completed)} of {len(summary.rows)} trial(s) completed; wrote results.csv, results.json"
          + (" and best.json" if summary.best else "") + f" in {args.out}")
    if summary.best is not None:
        print(f"retrain the best: dml train {args.prepared_dir} --out RUN_DIR --config {args.out}/best.json")
    print(f"TensorBoard: tensorboard --logdir {args.out}/tensorboard")
    return 0
