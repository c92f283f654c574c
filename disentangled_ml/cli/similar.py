"""Find the tracks of a catalogue (dml embed) most similar to a query, in one kind of similarity.

QUERY is a track_id of the catalogue or an audio file (embedded with the export
the catalogue was made with). Distance is Euclidean in a condition's sub-space
(--condition genre: its slice of the embedding), or a weighted combination
(--weights genre=0.5,mood=0.5: sqrt of the weighted sum of squared slice
distances); with neither, the whole embedding. Catalogues below --exact-below
tracks are searched exactly; larger ones through hnswlib indexes cached in
EMB_DIR/index_<condition>.bin.
"""

from __future__ import annotations

import argparse
import json

from disentangled_ml.cli import CliError

HELP = "nearest tracks to a query track or audio file, per condition or weighted"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml.catalogue_search import DEFAULT_EXACT_BELOW

    parser.add_argument("catalogue", metavar="EMB_DIR", help="catalogue directory (dml embed)")
    parser.add_argument("query", metavar="QUERY", help="a track_id of the catalogue or an audio file path")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--condition", default=None,
                       help="condition whose sub-space measures similarity (e.g. genre, mood, instrument, tempo, "
                            "whole); None is the whole embedding")
    group.add_argument("--weights", default=None, metavar="C=W,...",
                       help="weighted combination of conditions, e.g. genre=0.5,mood=0.5 (weights >= 0)")
    parser.add_argument("--k", type=int, default=10, help="number of results, in tracks")
    parser.add_argument("--exact-below", type=int, default=DEFAULT_EXACT_BELOW, metavar="N",
                        help="search exactly below N tracks; hnswlib from N tracks on")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.catalogue_search import Catalogue, SearchError, parse_weights

    try:
        cat = Catalogue(args.catalogue, exact_below=args.exact_below)
        weights = parse_weights(args.weights) if args.weights else None
        if args.condition is not None:
            cat.check_view(args.condition)
        vector, index = cat.query_vector(args.query)
        results = cat.describe(cat.search(vector, condition=args.condition, weights=weights, k=args.k,
                                          exclude=index))
    except SearchError as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps({"query": args.query, "condition": args.condition, "weights": weights,
                          "results": results}, indent=2))
        return 0
    if not results:
        print("no results (the catalogue holds no other track)")
        return 0
    cols = list(results[0])
    rows = [[f"{r[c]:.4f}" if c == "distance" else str(r[c]) for c in cols] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return 0
