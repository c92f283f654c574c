"""A 2-D map of one condition's view of a catalogue, computed once and cached beside it, and its colours.

``dml serve`` draws every track of the catalogue as a point: its embedding in one condition's view
(:meth:`~disentangled_ml.catalogue_search.Catalogue.project`) brought down to two dimensions.

* ``pca`` (default): the two leading principal components. Exact, deterministic (each axis's sign
  is fixed so that its largest loading is positive) and linear: distances along the map are a
  faithful, if flattened, picture of distances in the view. 100,000 tracks x 64 dimensions take
  well under a second.
* ``umap``: UMAP (umap-learn, when it is installed; it is not a dependency), ``random_state=0``.
  Non-linear: it keeps neighbourhoods and tears the global layout apart. Minutes at 100,000 tracks.

Each map is cached as ``EMB_DIR/map_<view>_<method>.npy`` (float32 ``[N, 2]``) with a
``.json`` beside it recording the size and modification time of ``tracks.npy`` it was made from; a
catalogue embedded again gets a new map. A catalogue folder that cannot be written keeps the map in
memory, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from disentangled_ml.catalogue_search import Catalogue, SearchError

log = logging.getLogger(__name__)

#: The projections ``dml serve --map`` offers.
MAP_METHODS = ("pca", "umap")
#: Bumped when a method's output changes, so that older cached maps are recomputed.
MAP_VERSION = 1
#: Rows per block of the PCA's passes over a memory-mapped catalogue (bounds memory at 100,000+ tracks).
PCA_BLOCK = 16384


def umap_available() -> bool:
    """Whether ``umap-learn`` can be imported here."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def check_method(method: str) -> None:
    """Raise :class:`SearchError` for a method that is unknown or not installed."""
    if method not in MAP_METHODS:
        raise SearchError(f"--map {method!r}: choose one of {', '.join(MAP_METHODS)}.")
    if method == "umap" and not umap_available():
        raise SearchError("--map umap needs umap-learn, which is not installed here: pip install umap-learn "
                          "(or use --map pca, the default).")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The two leading principal components of ``x`` (``[N, d]``, may be memory-mapped): float32 ``[N, 2]``.

    Covariance in float64, accumulated block by block; each component's sign is fixed so that its
    largest-magnitude loading is positive, so the same catalogue always gives the same picture.
    """
    n, d = x.shape
    if n == 0:
        return np.zeros((0, 2), np.float32)
    mean = np.zeros(d, np.float64)
    for s in range(0, n, PCA_BLOCK):
        mean += np.asarray(x[s:s + PCA_BLOCK], np.float64).sum(axis=0)
    mean /= n
    cov = np.zeros((d, d), np.float64)
    for s in range(0, n, PCA_BLOCK):
        block = np.asarray(x[s:s + PCA_BLOCK], np.float64) - mean
        cov += block.T @ block
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors[:, ::-1][:, :2]
    if axes.shape[1] < 2:  # a 1-dimensional view: the second axis is flat
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(2)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    out = np.empty((n, 2), np.float32)
    for s in range(0, n, PCA_BLOCK):
        out[s:s + PCA_BLOCK] = (np.asarray(x[s:s + PCA_BLOCK], np.float64) - mean) @ axes
    return out


def umap_2d(x: np.ndarray) -> np.ndarray:
    """UMAP of ``x`` (``[N, d]``) to float32 ``[N, 2]`` (umap-learn, ``random_state=0``)."""
    import umap

    if len(x) < 3:  # UMAP needs a neighbourhood; two points or fewer lie on a line anyway
        return pca_2d(x)
    reducer = umap.UMAP(n_components=2, random_state=0, n_neighbors=min(15, len(x) - 1))
    return np.asarray(reducer.fit_transform(np.asarray(x, np.float32)), np.float32)


def _cache_meta(cat: Catalogue, view: str, method: str) -> Dict[str, Any]:
    stat = os.stat(os.path.join(cat.path, "tracks.npy"))
    return {"view": view, "method": method, "version": MAP_VERSION, "n": len(cat),
            "tracks_npy_size": stat.st_size, "tracks_npy_mtime_ns": stat.st_mtime_ns}


def catalogue_map(cat: Catalogue, view: str, method: str = "pca") -> np.ndarray:
    """The 2-D map of ``view`` over every track of ``cat``: float32 ``[N, 2]``, from the cache when it is current.

    Raises:
        SearchError: an unknown view, or a method that is unknown or not installed.
    """
    cat.check_view(view)
    check_method(method)
    stem = os.path.join(cat.path, f"map_{view}_{method}")
    meta = _cache_meta(cat, view, method)
    try:
        with open(stem + ".json") as f:
            if json.load(f) == meta:
                xy = np.load(stem + ".npy")
                if xy.shape == (len(cat), 2):
                    return xy
    except (OSError, ValueError):
        pass  # no cache yet, or an unreadable one: compute it
    log.info("computing the %s map of %r over %d tracks (cached as %s.npy)", method, view, len(cat), stem)
    x = cat.project(cat.embeddings, view)
    xy = umap_2d(x) if method == "umap" else pca_2d(x)
    try:
        np.save(stem + ".npy", xy)
        with open(stem + ".json.tmp", "w") as f:
            json.dump(meta, f)
        os.replace(stem + ".json.tmp", stem + ".json")  # written last: it validates the .npy
    except OSError as e:
        log.warning("could not cache the map in %s (%s); it is kept in memory only", cat.path, e)
    return xy


def first_labels(rows: Sequence[Mapping[str, str]], column: str) -> List[str]:
    """Each row's first label of ``column`` (labels are ``|``-separated; ``""`` = unknown)."""
    return [(r.get(column) or "").split("|")[0].strip() for r in rows]


def map_colours(rows: Sequence[Mapping[str, str]], column: str) -> Dict[str, Any]:
    """How to colour the map's points by a label column of ``tracks.csv``.

    Returns:
        ``{"kind": "none"}`` when no row has a value; ``{"kind": "numeric", "values": [float or None]}``
        when every value is a number (tempo, in BPM); otherwise ``{"kind": "classes", "classes": [...]
        (most frequent first), "index": [int, -1 = unknown]}`` from each track's first label.
    """
    if not rows or column not in rows[0]:
        return {"kind": "none"}
    labels = first_labels(rows, column)
    known = [v for v in labels if v]
    if not known:
        return {"kind": "none"}
    try:
        values = [float(v) if v else None for v in labels]
    except ValueError:
        values = None
    if values is not None and all(v is None or np.isfinite(v) for v in values):
        return {"kind": "numeric", "values": values}
    counts: Dict[str, int] = {}
    for v in known:
        counts[v] = counts.get(v, 0) + 1
    classes = sorted(counts, key=lambda c: (-counts[c], c))
    position = {c: i for i, c in enumerate(classes)}
    return {"kind": "classes", "classes": classes, "index": [position.get(v, -1) for v in labels]}
