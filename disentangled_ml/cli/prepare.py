"""Validate a labelled collection, estimate missing tempi with madmom, and summarise its labels.

MANIFEST is checked whole before any work: every bad row (empty path, a tempo
that is not a BPM, a track id repeated on another file or with other labels or
tempo) is reported with its line, in the error message and in
OUT/manifest_problems.csv, and the run stops, unless --skip-bad-rows is given:
then the good rows are prepared and the bad ones are listed in OUT/rejected.csv
(reason bad_manifest_row). A row repeating another exactly counts once, with a
warning.

Every file of MANIFEST (docs/design.md, contract 1) is decoded once at the
configured sample rate; files that are missing, in an unsupported format,
undecodable, shorter than one segment or silent are listed with their reason
in OUT/rejected.csv and never stop the run. Accepted tracks go to
OUT/manifest.csv with their tempo filled (tempo_source says whether it came
from the manifest or is a madmom estimate). Per-condition label counts, with
single-member classes and unusable conditions flagged, are printed and written
to OUT/labels.json. Results are cached per file under OUT/cache, so a rerun
(after an interruption, or on a grown collection) only analyses new files.
"""

from __future__ import annotations

import argparse
import logging
import os

from disentangled_ml.cli import CliError

HELP = "validate a manifest's audio, estimate missing tempi, summarise labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV (path, track_id, genre, mood, ..., tempo)")
    parser.add_argument("--out", required=True, metavar="PREPARED_DIR",
                        help="output folder for the prepared collection (created; reruns reuse its cache)")
    parser.add_argument("--config", metavar="CONFIG.json", default=None,
                        help="configuration JSON (None = the built-in Config); the frontend's sample rate "
                             "(Hz) and segment length (s), data.silence_rms_db (dBFS) and data.tempo_min_bpm/"
                             "tempo_max_bpm (BPM) apply here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes (0 = in this process, for debugging)")
    parser.add_argument("--no-tempo", action="store_true",
                        help="do not estimate missing tempi with madmom (they stay unknown)")
    parser.add_argument("--cache-audio", action="store_true",
                        help="also write the decoded mono audio (int16 at the configured rate) as TFRecord "
                             "shards in PREPARED_DIR/audio")
    parser.add_argument("--shards", type=int, default=None, metavar="N",
                        help="number of audio shards with --cache-audio (None = one per 256 tracks)")
    parser.add_argument("--tempo-bin-bpm", type=float, default=10.0, metavar="BPM",
                        help="width of the tempo bins in the label summary, in BPM")
    parser.add_argument("--skip-bad-rows", action="store_true",
                        help="prepare the manifest's good rows when some are bad, listing the bad ones in "
                             "PREPARED_DIR/rejected.csv (reason bad_manifest_row); by default bad rows stop the "
                             "run before any work, listed in PREPARED_DIR/manifest_problems.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.config import Config, ConfigError
    from disentangled_ml.data.manifest import ManifestError
    from disentangled_ml.data.prepare import PrepareError, format_label_report, format_summary, prepare_collection

    if args.jobs < 0:
        raise CliError(f"--jobs {args.jobs}: give a number of worker processes >= 1, or 0.")
    if args.shards is not None and args.shards < 1:
        raise CliError(f"--shards {args.shards}: give a number of shards >= 1.")
    try:
        config = Config.from_json(args.config) if args.config else Config()
    except ConfigError as e:
        raise CliError(str(e)) from None
    # With --jobs 0 the decoding happens here; tensorflow-io's resampler warns about
    # retracing on every file of a new length, which says nothing to the user.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        summary = prepare_collection(
            args.manifest, args.out, config, jobs=args.jobs, estimate_tempo=not args.no_tempo,
            cache_audio=args.cache_audio, shards=args.shards, progress=not args.no_progress,
            tempo_bin_bpm=args.tempo_bin_bpm, skip_bad_rows=args.skip_bad_rows,
        )
    except (ManifestError, PrepareError) as e:
        raise CliError(str(e)) from None
    print(format_label_report(summary.labels))
    print()
    print(format_summary(summary))
    bad_rows = summary.rejected.get("bad_manifest_row", 0)
    print(f"wrote {os.path.join(args.out, 'manifest.csv')} ({summary.accepted} track(s)), rejected.csv, "
          "labels.json, config.json, summary.json"
          + (f", manifest_problems.csv ({bad_rows} bad manifest row(s) skipped)" if bad_rows else ""))
    if summary.accepted == 0:
        print("no track was accepted; see rejected.csv for the reasons.")
        return 1
    return 0
