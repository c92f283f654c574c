"""Show how each condition's slice of one track moves over time, segment by segment.

TRACK is a track_id of the catalogue (its segments as dml embed stored them) or an
audio file, embedded now every --hop-seconds (default: the catalogue's hop) with
the export the catalogue records, or --export EXPORT_DIR (the same model). For every
condition and segment: the classes of the --k nearest labelled catalogue tracks
(track embeddings, in that condition's slice) with their vote shares; for tempo,
which has a BPM per track instead of classes, the kNN tempo estimate (weighted
geometric mean of the neighbours' BPM); and the distance from the track's mean in
that slice. A catalogue track is left out of its own neighbours.

Writes DIR/timeline.json (every number) and DIR/timeline.png (one row per
condition, time in seconds on the x-axis).
"""

from __future__ import annotations

import argparse

from disentangled_ml.cli import CliError

HELP = "per-segment timeline of a track: kNN class (or tempo) and distance from its mean, per condition"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml.timeline import DEFAULT_K, WEIGHTINGS

    parser.add_argument("catalogue", metavar="EMB_DIR", help="catalogue directory (dml embed), with labels")
    parser.add_argument("track", metavar="TRACK", help="a track_id of the catalogue or an audio file path")
    parser.add_argument("--out", metavar="DIR", required=True,
                        help="folder to write timeline.json and timeline.png into (earlier ones there are replaced)")
    parser.add_argument("--export", metavar="EXPORT_DIR", default=None,
                        help="export that embeds an audio file; None is the one the catalogue was made with")
    parser.add_argument("--hop-seconds", type=float, default=None, metavar="S",
                        help="seconds between segment starts of an audio file; None is the catalogue's hop")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="nearest labelled tracks per segment")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default="distance",
                        help="neighbour weights in the vote and the tempo estimate: 1/distance, or equal")
    parser.add_argument("--conditions", default=None, metavar="C,...",
                        help="conditions to show (each must have labels in the catalogue); None is all of them, "
                             "those without labels with their distance from the mean only")


def _summary(name: str, entry: dict) -> str:
    if entry["kind"] == "classes":
        runs = " | ".join(f"{r['start_s']:.1f}-{r['end_s']:.1f} s {r['class']} ({r['mean_share']:.2f})"
                          for r in entry["runs"])
        return f"{name} (k={entry['k']} of {entry['labelled_tracks']} labelled tracks): {runs}"
    if entry["kind"] == "tempo":
        bpm = [r["bpm"] for r in entry["segments"]]
        return (f"{name} (k={entry['k']} of {entry['labelled_tracks']} tracks with a BPM): kNN estimate "
                f"{min(bpm):.0f}-{max(bpm):.0f} BPM, first segment {bpm[0]:.0f}, last {bpm[-1]:.0f}")
    return f"{name}: distance from the mean only ({entry['reason']})"


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.catalogue_search import Catalogue, SearchError
    from disentangled_ml.timeline import build_timeline, load_track, write_timeline

    conditions = None
    if args.conditions is not None:
        conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
        if not conditions:
            raise CliError("--conditions is empty; give e.g. mood,tempo.")
    try:
        catalogue = Catalogue(args.catalogue)
        segments = load_track(catalogue, args.track, export_dir=args.export, hop_seconds=args.hop_seconds)
        timeline = build_timeline(catalogue, segments, k=args.k, weighting=args.weighting, conditions=conditions)
    except SearchError as e:
        raise CliError(str(e)) from None
    paths = write_timeline(timeline, args.out)
    n = len(timeline["segments"])
    print(f"{args.track} ({timeline['source'].replace('_', ' ')}): {n} segment(s) of "
          f"{timeline['segment_seconds']:g} s every {timeline['hop_seconds']:g} s")
    for name, entry in timeline["conditions"].items():
        print("  " + _summary(name, entry))
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0
