"""Export a trained run for servers and devices (docs/design.md, contract 2).

Writes EXPORT_DIR/saved_model (signatures serving_default: waveform "audio" ->
"embedding" + one output per condition; log_mel: log-mel input -> the same),
model.tflite (float32), model_fp16.tflite, model_int8.tflite (dynamic range),
model_int8_full.tflite (full integer, calibrated on training-split segments; the
STFT/mel/log frontend stays float), config.json (sample rate, segment length,
slices, mask mode, the whole frontend, versions, the training config) and
parity.json (every variant against the Keras model, plus triplet accuracy per
condition on the run's test triplets, and the export's wall time per stage).

Fails (exit status 1) when a float32 variant differs from the Keras model by
more than 1e-4; the export is then marked invalid in its config.json.
"""

from __future__ import annotations

import argparse
import logging

from disentangled_ml.cli import CliError

HELP = "export a run as SavedModel + TFLite (float32, fp16, int8) with parity checks"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml.export import DEFAULT_CALIBRATION_SEGMENTS, DEFAULT_MAX_TRIPLETS, DEFAULT_PARITY_SEGMENTS

    parser.add_argument("source", metavar="RUN_DIR_OR_KERAS",
                        help="training run directory (dml train) or a .keras model file inside one")
    parser.add_argument("--out", metavar="EXPORT_DIR", required=True, help="export directory to create")
    parser.add_argument("--prepared", metavar="PREPARED_DIR", default=None,
                        help="prepared collection of the run (calibration and parity audio); None reads "
                             "prepared_dir from RUN_DIR/run.json, and without one synthetic signals are used")
    parser.add_argument("--no-int8-full", action="store_true",
                        help="skip the full-integer model_int8_full.tflite")
    parser.add_argument("--calibration-segments", type=int, default=DEFAULT_CALIBRATION_SEGMENTS, metavar="N",
                        help="training-split segments (of frontend.segment_seconds each) that calibrate the "
                             "full-integer model")
    parser.add_argument("--parity-segments", type=int, default=DEFAULT_PARITY_SEGMENTS, metavar="N",
                        help="test-split segments every variant is compared on")
    parser.add_argument("--max-triplets", type=int, default=DEFAULT_MAX_TRIPLETS, metavar="N",
                        help="score every variant on at most N test triplets per condition in parity.json "
                             "(0: all of them, slow on a large test split)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty EXPORT_DIR")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="segments per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seeds the choice of calibration and parity segments")


def _print_summary(result) -> None:
    parity, files = result["parity"], result["config"]["files"]
    print(f"export written to {result['out_dir']}")
    print(f"{'variant':<22}{'file':<26}{'size':>12}{'max|diff|':>12}{'min cos':>10}")
    for name, v in parity["variants"].items():
        size = files.get(v["file"], {}).get("size_bytes", 0)
        print(f"{name:<22}{v['file']:<26}{size / 1e6:>10.2f}MB{v['max_abs_diff']:>12.2e}{v['min_cosine']:>10.5f}")
    acc = parity.get("triplet_accuracy", {})
    if "accuracy" in acc:
        conds = list(acc["n_triplets"])
        print("triplet accuracy on the test triplets (condition sub-spaces):")
        print(f"{'variant':<14}" + "".join(f"{c:>12}" for c in conds))
        for name, row in acc["accuracy"].items():
            print(f"{name:<14}" + "".join(f"{row[c]:>12.3f}" for c in conds))
    else:
        print(f"triplet accuracy: {acc.get('skipped')}")
    timing = parity.get("timing")
    if timing:
        slowest = sorted(timing["stages_s"].items(), key=lambda kv: -kv[1])[:3]
        print(f"took {timing['total_s']:.1f} s; slowest stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in slowest)
              + " (all of them in parity.json, timing)")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.export import ExportError, ParityError, export_run

    if args.calibration_segments < 1 or args.parity_segments < 1 or args.batch_size < 1:
        raise CliError("--calibration-segments, --parity-segments and --batch-size must be >= 1.")
    try:
        result = export_run(args.source, args.out, prepared_dir=args.prepared, int8_full=not args.no_int8_full,
                            calibration_segments=args.calibration_segments, parity_segments=args.parity_segments,
                            max_triplets=args.max_triplets, overwrite=args.overwrite, seed=args.seed,
                            batch_size=args.batch_size)
    except ParityError as e:
        log.error("%s", e)
        print(f"dml export: PARITY CHECK FAILED: {e}")
        return 1
    except ExportError as e:
        raise CliError(str(e)) from None
    _print_summary(result)
    return 0
