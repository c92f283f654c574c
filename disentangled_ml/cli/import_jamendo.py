"""Turn MTG-Jamendo autotagging TSVs into a manifest (docs/design.md, contract 1).

Reads autotagging_genre.tsv, autotagging_moodtheme.tsv and autotagging_instrument.tsv
(from a directory, or any MTG-Jamendo TSVs named explicitly, e.g. one split's files),
merges them by TRACK_ID, and writes a manifest with genre, mood and instrument
columns ("mood/theme" tags go to mood; several tags are "|"-joined; a track missing
from a file has unknown labels for that condition). Artist and album ids go to
<manifest stem>.artists.csv, for artist-level splits. Tempo is left empty for
`dml prepare` to estimate.
"""

from __future__ import annotations

import argparse
import logging
import os

from disentangled_ml.cli import CliError

HELP = "import MTG-Jamendo autotagging TSVs as a manifest"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SPLIT_DIR_OR_TSVS",
                        help="MTG-Jamendo's data/ directory (its autotagging_{genre,moodtheme,instrument}.tsv are "
                             "read) and/or TSV files in the autotagging format")
    parser.add_argument("--audio-root", required=True, metavar="DIR",
                        help="folder the audio archives were unpacked into; audio is DIR/PATH (e.g. DIR/14/214.mp3)")
    parser.add_argument("--out", required=True, metavar="CSV", help="manifest to write (CSV)")
    parser.add_argument("--min-duration", type=float, default=None, metavar="SECONDS",
                        help="leave out tracks whose DURATION is shorter than this many seconds; None keeps all")
    parser.add_argument("--low-quality", action="store_true",
                        help="the audio is the 'audio-low' download, whose files are named NN/ID.low.mp3")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.data.jamendo import artists_path, import_jamendo
    from disentangled_ml.data.manifest import ManifestError, label_counts

    if not os.path.isdir(args.audio_root):
        raise CliError(f"--audio-root {args.audio_root} is not a directory; give the folder the MTG-Jamendo "
                       "audio archives were unpacked into.")
    try:
        tracks = import_jamendo(args.sources, args.audio_root, args.out, min_duration=args.min_duration,
                                low_quality=args.low_quality)
    except ManifestError as e:
        raise CliError(str(e)) from None

    counts = label_counts(tracks)
    print(f"wrote {args.out}: {len(tracks)} tracks")
    for condition in ("genre", "mood", "instrument"):
        labelled = sum(1 for t in tracks if t.labels.get(condition))
        print(f"  {condition:<10} {labelled:>6} tracks labelled, {len(counts.get(condition, {})):>4} distinct labels")
    print(f"artist ids: {artists_path(args.out)}")
    # A partial download is common; prepare will report and skip the missing files.
    missing = sum(1 for t in tracks if not os.path.isfile(t.path))
    if missing:
        example = next(t.path for t in tracks if not os.path.isfile(t.path))
        log.warning("%d of %d audio files are not under %s (e.g. %s); `dml prepare` will leave them out%s.",
                    missing, len(tracks), args.audio_root, example,
                    "" if args.low_quality or not example.endswith(".mp3") else
                    " (for the audio-low download pass --low-quality)")
    return 0
