"""Embed a folder of audio files (or a manifest) with an export, into a searchable catalogue.

Uses only the export (docs/design.md, contract 2): its config.json and saved_model/,
or model.tflite with --tflite (LiteRT, no TensorFlow model code). Each file is
decoded, cut into segments of the export's length every --hop-seconds, and
embedded; a track's embedding is the mean of its segments', re-normalised. A hop
shorter than a segment makes the segments overlap, for a finer time axis in dml
timeline (the hop is recorded in EMB_DIR/config.json).
Files that cannot be decoded or are shorter than one segment are skipped and
listed in EMB_DIR/skipped.csv. Results are saved every 64 files; running the same
command again after an interruption continues where it stopped.

Writes EMB_DIR/tracks.npy + tracks.csv, segments.npy + segments.csv,
skipped.csv and config.json (the export's, plus the export path for dml similar).
"""

from __future__ import annotations

import argparse

from disentangled_ml.cli import CliError

HELP = "embed audio files with an export (resumable): track and segment embeddings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml.catalogue_search import DEFAULT_SHARD_SIZE

    parser.add_argument("export_dir", metavar="EXPORT_DIR", help="export directory (dml export)")
    parser.add_argument("source", metavar="AUDIO_DIR|MANIFEST",
                        help="folder of audio files (searched recursively) or a manifest CSV (labels are kept)")
    parser.add_argument("--out", metavar="EMB_DIR", required=True, help="catalogue directory to write or resume")
    parser.add_argument("--hop-seconds", type=float, default=None, metavar="S",
                        help="seconds between segment starts; None is one segment length (no overlap)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="segments per forward pass")
    parser.add_argument("--tflite", action="store_true",
                        help="run EXPORT_DIR/model.tflite with LiteRT instead of the SavedModel")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, metavar="N",
                        help="files per saved shard (the unit an interrupted run resumes from)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.catalogue_search import SearchError, embed_collection

    try:
        summary = embed_collection(args.export_dir, args.source, args.out, hop_seconds=args.hop_seconds,
                                   batch_size=args.batch_size, backend="tflite" if args.tflite else "saved_model",
                                   shard_size=args.shard_size, progress=not args.no_progress)
    except SearchError as e:
        raise CliError(str(e)) from None
    print(f"{summary['tracks']} tracks ({summary['segments']} segments) in {summary['out_dir']}; "
          f"{summary['embedded_this_run']} file(s) processed this run")
    if summary["skipped"]:
        print(f"{summary['skipped']} file(s) skipped (listed in {args.out}/skipped.csv):")
        for row in summary["skipped_rows"][:20]:
            print(f"  {row['track_id']}: {row['reason']}")
        if summary["skipped"] > 20:
            print(f"  ... and {summary['skipped'] - 20} more")
    return 0
