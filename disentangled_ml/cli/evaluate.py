"""Score a trained run on its fixed test (or validation) triplets, against the paper's baselines.

Reports, per condition, triplet accuracy in the condition's own slice and on the
whole embedding (Lee et al. 2020, Table 1), the disentanglement matrix (every
condition's triplets measured in every slice), the accuracy of each label
condition by (anchor's class, negative's class), and retrieval precision@k and mAP
with track embeddings (the mean of up to --segments-per-track segments), for the
trained model and for the baselines: MFCC-VQ (the paper's), MFCC statistics and
the same network untrained. Every accuracy has its 95 % Wilson interval, and per
condition the model (in its slice) is compared with its whole embedding and each
baseline on the same triplets (exact McNemar test; '*' in the table marks p < .05).
Writes RUN_DIR/eval_<split>/metrics.json (with "comparisons"), triplet_correct.csv
(every triplet's correct/incorrect per embedder and view), accuracy.png,
disentanglement.png and class_pairs.png, and prints the tables.

The same accuracies and matrix are also given on confounded triplets, a second
fixed set per label condition whose positive shares as few, and whose negative as
many, of the anchor's other labels as the split allows: built once into
RUN_DIR/<split>_confounded_triplets.csv and reused, reported under "confounded"
in metrics.json, as a second panel of accuracy.png and in
disentanglement_confounded.png.

The model is RUN_DIR/embedding.keras, or --model: another .keras file or an
export directory (with saved_model/, docs/design.md, contract 2). The prepared
collection is --prepared, or the prepared_dir recorded in RUN_DIR/run.json.

With --triplets FILE it scores a CSV of triplets instead (e.g. human-rated ones such as
dim-sim): one per row, columns anchor, positive, negative (audio paths, relative to the
CSV's folder), optional anchor_start, positive_start, negative_start (seconds, default 0)
and condition (the view that scores it; empty: the whole embedding and every view). The
first argument is then a run directory or an export directory (--tflite FILE scores one
of its .tflite files with LiteRT). Accuracy with 95 % Wilson intervals per condition and
view and overall, printed and written to DIR/eval_triplets_<file name>/triplet_metrics.json
(with triplet_scores.csv: every row's distances); bad rows (missing or undecodable file,
a start past the end, an unknown condition, an empty path) are left out and listed with
their line and reason. Exit status 1 when no row could be scored.
"""

from __future__ import annotations

import argparse
import logging
import os

from disentangled_ml.cli import CliError
from disentangled_ml.evaluation.baselines import (DEFAULT_CODEBOOK_SIZE, DEFAULT_FIT_CROPS_PER_TRACK,
                                                  DEFAULT_FIT_TRACKS)
from disentangled_ml.evaluation.metrics import DEFAULT_K, DEFAULT_SEGMENTS_PER_TRACK
from disentangled_ml.run_directory import RunDirectory, RunDirectoryError

HELP = "evaluate a run: triplet accuracy, disentanglement, retrieval, baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="training run directory (written by dml train); with --triplets also an export "
                             "directory (dml export)")
    parser.add_argument("--triplets", metavar="FILE", default=None,
                        help="score this CSV of triplets (anchor, positive, negative audio paths; optional "
                             "<role>_start in seconds and condition) instead of the run's split; see the README, "
                             "'Triplets from a file'")
    parser.add_argument("--tflite", metavar="FILE", nargs="?", const="model.tflite", default=None,
                        help="with --triplets and an export directory: run this .tflite file of it with LiteRT "
                             "instead of the SavedModel (alone: model.tflite)")
    parser.add_argument("--prepared", metavar="PREPARED_DIR", default=None,
                        help="prepared collection the run was trained on; None reads prepared_dir from RUN_DIR/run.json")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="which fixed triplet set and tracks to score")
    parser.add_argument("--model", metavar="PATH", default=None,
                        help="a .keras file or an export directory with saved_model/ to evaluate; None is "
                             "RUN_DIR/embedding.keras")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output folder; None is RUN_DIR/eval_<split>, with the model's name appended "
                             "when --model is given (with --triplets: DIR/eval_triplets_<file name>)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="score the model only (no MFCC-VQ, MFCC statistics or untrained network)")
    parser.add_argument("--segments-per-track", type=int, default=DEFAULT_SEGMENTS_PER_TRACK, metavar="N",
                        help="non-overlapping segments (of frontend.segment_seconds each) averaged into a track "
                             "embedding for retrieval")
    parser.add_argument("--k", type=int, default=DEFAULT_K, metavar="K", help="retrieval cutoff of precision@K, in tracks")
    parser.add_argument("--vq-codebook", type=int, default=DEFAULT_CODEBOOK_SIZE, metavar="K",
                        help="codewords of the MFCC-VQ baseline's k-means codebook")
    parser.add_argument("--fit-tracks", type=int, default=DEFAULT_FIT_TRACKS, metavar="N",
                        help="training tracks (at most) whose crops fit the baselines "
                             f"({DEFAULT_FIT_CROPS_PER_TRACK} crops per track)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="crops per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seeds the baselines (crops, k-means, untrained weights)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_triplet_file(args: argparse.Namespace) -> int:
    """``dml evaluate DIR --triplets FILE``: score a triplet CSV, print and write the report."""
    given = [flag for flag, value in (("--prepared", args.prepared), ("--model", args.model),
                                      ("--no-baselines", args.no_baselines)) if value]
    if given:
        raise CliError(f"{', '.join(given)} do(es) not apply to --triplets: the model is the run or export "
                       "directory given, and the file is scored without baselines.")
    if args.batch_size < 1:
        raise CliError(f"--batch-size {args.batch_size}: give a number >= 1.")

    from disentangled_ml.evaluation.embedders import EvaluationError
    from disentangled_ml.evaluation.triplet_file import evaluate_triplet_file, format_triplet_report

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        result, paths = evaluate_triplet_file(args.run_dir, args.triplets, out_dir=args.out, tflite=args.tflite,
                                              batch_size=args.batch_size, progress=not args.no_progress)
    except EvaluationError as e:
        raise CliError(str(e)) from None
    print(format_triplet_report(result.report))
    print(f"\nwrote {paths['metrics']}, {paths['scores']}")
    if not result.report["scored"]:
        print("no row of the file could be scored (see the rows left out above).")
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.triplets is not None:
        return _run_triplet_file(args)
    if args.tflite is not None:
        raise CliError("--tflite applies to --triplets only; to evaluate an export on the split, pass --model "
                       "EXPORT_DIR (its SavedModel).")
    for name in ("segments_per_track", "k", "vq_codebook", "fit_tracks", "batch_size"):
        value = getattr(args, name)
        low = 2 if name == "vq_codebook" else 1
        if value < low:
            raise CliError(f"--{name.replace('_', '-')} {value}: give a number >= {low}.")
    if not os.path.isdir(args.run_dir):
        raise CliError(f"RUN_DIR {args.run_dir} is not a directory.")
    try:
        prepared = RunDirectory(args.run_dir).prepared_dir(args.prepared)
    except RunDirectoryError as e:
        raise CliError(str(e)) from None

    from disentangled_ml.evaluation.embedders import EvaluationError
    from disentangled_ml.evaluation.report import format_table
    from disentangled_ml.evaluation.runner import evaluate_run

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        metrics, paths = evaluate_run(
            args.run_dir, prepared, split=args.split, baselines=not args.no_baselines, model_path=args.model,
            out_dir=args.out, segments_per_track=args.segments_per_track, k=args.k, vq_codebook=args.vq_codebook,
            fit_tracks=args.fit_tracks, seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    except EvaluationError as e:
        raise CliError(str(e)) from None
    print(format_table(metrics))
    if metrics["dropped_triplets"]:
        print(f"\n{metrics['dropped_triplets']} triplet(s) left out: {len(metrics['failed_tracks'])} track(s) "
              "could not be decoded (see metrics.json, failed_tracks).")
    print("\nwrote " + ", ".join(paths[k] for k in ("metrics", "triplet_correct", "accuracy", "disentanglement",
                                                    "disentanglement_confounded", "class_pairs") if k in paths))
    conf = metrics.get("confounded")
    if conf and "file" in conf:
        print(f"confounded triplets: {conf['file']} ({'reused' if conf.get('reused') else 'built now'})")
    return 0
