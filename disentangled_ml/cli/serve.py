"""Explore a catalogue (dml embed) in the browser: find a track, weight the conditions, listen to the neighbours.

Starts a local web server with a page and a small JSON API over EMB_DIR. The page finds a
track by part of its id or path, has one slider per condition (weights 0..1, as dml similar
--weights) whose neighbour list follows the sliders, plays each neighbour's segment nearest the
query, and draws a 2-D map of one condition's view (PCA by default, cached in EMB_DIR) coloured
by that condition's labels; clicking a point makes it the query. With --export, an audio file
dropped on the page is embedded with the export and used as the query (it is not added to the
catalogue).

The server listens on 127.0.0.1 unless --host says otherwise (it warns when it listens beyond
loopback), sends only the catalogue's own audio files, and refuses uploads over --max-upload-mb.
"""

from __future__ import annotations

import argparse

from disentangled_ml.cli import CliError

HELP = "a similarity explorer in the browser over a catalogue (dml embed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from disentangled_ml.catalogue_search import DEFAULT_EXACT_BELOW
    from disentangled_ml.serve.catalogue_map import MAP_METHODS

    parser.add_argument("catalogue", metavar="EMB_DIR", help="catalogue directory (dml embed)")
    parser.add_argument("--export", default=None, metavar="EXPORT_DIR",
                        help="the export the catalogue was made with (or a copy of the same model): lets the page "
                             "query by a dropped audio file; None: no uploads")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but loopback exposes the catalogue and its audio to "
                             "the network (a warning is printed)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, metavar="MB",
                        help="largest audio file the page may upload, in MB of 2^20 bytes")
    parser.add_argument("--map", default="pca", choices=MAP_METHODS,
                        help="2-D projection of the map (umap needs umap-learn installed)")
    parser.add_argument("--exact-below", type=int, default=DEFAULT_EXACT_BELOW, metavar="N",
                        help="search exactly below N tracks; hnswlib from N tracks on (as dml similar)")


def run(args: argparse.Namespace) -> int:
    from disentangled_ml.audio_io import AudioDecodeError
    from disentangled_ml.catalogue_search import SearchError
    from disentangled_ml.serve.app import serve
    from disentangled_ml.serve.explorer import Explorer

    if not 0 < args.max_upload_mb <= 4096:
        raise CliError(f"--max-upload-mb {args.max_upload_mb:g} must be > 0 and at most 4096.")
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port {args.port} must be 1 to 65535.")
    try:
        explorer = Explorer(args.catalogue, export_dir=args.export, exact_below=args.exact_below,
                            map_method=args.map, max_upload_bytes=int(args.max_upload_mb * 2 ** 20))
        # hnswlib indexes of a large catalogue are loaded (or built, once) now rather than by the first query
        explorer.catalogue.prepare_indexes()
        explorer.warm_up()  # loads the decoder and the export now, not at the first upload
    except (SearchError, AudioDecodeError) as e:
        raise CliError(str(e)) from None
    serve(explorer, host=args.host, port=args.port)
    return 0
