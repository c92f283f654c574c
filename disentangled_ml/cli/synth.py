"""Generate a synthetic labelled collection: audio files plus manifest.csv (docs/design.md, contract 1).

Every track draws four factors independently: genre (drum pattern and accompaniment
style), mood (major/minor harmony and brightness), instrument (timbre of the lead
melody) and tempo (BPM, uniform). Key, levels, detuning, room and noise are random
nuisances. The same --seed gives the same manifest and the same decoded audio for
any --jobs. Files cycle through wav (16-bit), flac (16-bit) and ogg (Vorbis).
--no-percussion writes the drumless variant: the same manifest and pitched parts
without drums, so tempo lives only in the note onsets and mode only in the harmony.
OUT_DIR/synth.json records the variant, seed and synthesiser version.
"""

from __future__ import annotations

import argparse
import os
import time

from disentangled_ml.cli import CliError

HELP = "generate a synthetic collection with known genre, mood, instrument and tempo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml import synth

    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="folder for the audio files and manifest.csv (created; must be empty unless --overwrite)")
    parser.add_argument("--tracks", type=int, required=True, default=argparse.SUPPRESS, metavar="N",
                        help="number of tracks (1 to 9999)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (non-negative integer)")
    parser.add_argument("--min-seconds", type=float, default=synth.DEFAULT_MIN_SECONDS,
                        help=f"shortest track, seconds (at least {synth.MIN_TRACK_SECONDS:g}, one model segment)")
    parser.add_argument("--max-seconds", type=float, default=synth.DEFAULT_MAX_SECONDS,
                        help="longest track, seconds")
    parser.add_argument("--jobs", type=int, default=synth.default_jobs(),
                        help="worker processes (tracks are rendered in parallel)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow a non-empty OUT_DIR; earlier synth_*.wav/flac/ogg, manifest.csv and synth.json "
                             "there are replaced, other files kept")
    parser.add_argument("--no-percussion", action="store_true",
                        help="drumless variant: same labels and pitched parts, no drums (tempo only in the note "
                             "onsets, genre only in the accompaniment and bass); recorded in OUT_DIR/synth.json")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml import synth

    if args.tracks < 1:
        raise CliError(f"--tracks must be at least 1, got {args.tracks}.")
    if args.jobs < 1:
        raise CliError(f"--jobs must be at least 1 worker process, got {args.jobs}.")
    if args.min_seconds > args.max_seconds:
        raise CliError(f"--min-seconds {args.min_seconds:g} is greater than --max-seconds {args.max_seconds:g}.")
    start = time.perf_counter()
    try:
        manifest = synth.synthesize_collection(
            args.out_dir, args.tracks, args.seed, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
            jobs=args.jobs, overwrite=args.overwrite, progress=not args.no_progress,
            percussion=not args.no_percussion,
        )
    except synth.SynthError as e:
        # the library names arguments by their Python names; speak the CLI's language
        msg = str(e)
        for py, cli in (("min_seconds", "--min-seconds"), ("max_seconds", "--max-seconds"),
                        ("number of tracks", "--tracks"), ("seed", "--seed"), ("jobs", "--jobs")):
            msg = msg.replace(py, cli)
        raise CliError(msg) from None
    elapsed = time.perf_counter() - start
    variant = "; no percussion" if args.no_percussion else ""
    print(f"wrote {args.tracks} tracks and {manifest} in {elapsed:.1f} s "
          f"({os.path.dirname(manifest)}; seed {args.seed}{variant})")
    return 0
