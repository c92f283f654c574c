"""What ``dml serve`` answers, without the HTTP: the catalogue, its queries, uploads, maps and audio files.

:class:`Explorer` holds one catalogue (``dml embed``), opened memory-mapped, and answers the
page's questions with plain dicts (JSON-ready). Searching is
:meth:`Catalogue.search <disentangled_ml.catalogue_search.Catalogue.search>` itself, with the
weights in ``dml similar --weights``'s syntax (:func:`~disentangled_ml.catalogue_search.parse_weights`),
so the page and ``dml similar`` rank the same tracks the same way. Every problem with a request
is a :class:`RequestError` carrying its HTTP status and a message that names the value and
what to do.

Bounds, so that one request cannot hold the server: ``k`` <= :data:`K_MAX`; weights finite and
>= 0 (checked by the catalogue); at most :data:`FIND_LIMIT` tracks per find; the last
:data:`UPLOADS_KEPT` uploads are remembered (their vectors only; the files are deleted once
embedded).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from disentangled_ml.catalogue_search import (DEFAULT_EXACT_BELOW, WHOLE, Catalogue, SearchError, embed_file,
                                              parse_weights)
from disentangled_ml.serve.audio_files import AudioFiles
from disentangled_ml.serve.catalogue_map import catalogue_map, check_method, map_colours

log = logging.getLogger(__name__)

#: The most neighbours one query may ask for.
K_MAX = 100
#: Neighbours a query returns when it does not say.
K_DEFAULT = 10
#: The most tracks one find returns.
FIND_LIMIT = 50
#: Uploaded queries remembered (vector and name), oldest forgotten first.
UPLOADS_KEPT = 32
#: Columns of tracks.csv that are not labels.
NOT_LABELS = ("track_id", "path", "n_segments")


class RequestError(SearchError):
    """A request the explorer refuses: ``status`` is its HTTP status (400, 404, 413), the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Explorer:
    """A catalogue ready for the page's queries.

    Args:
        emb_dir: a catalogue directory (``dml embed``).
        export_dir: the export that made it (or a copy of the same model), to embed uploaded audio
            files; None: uploads are refused.
        exact_below: as ``dml similar --exact-below``: exact search below this many tracks, hnswlib above.
        map_method: ``"pca"`` or ``"umap"`` (:mod:`~disentangled_ml.serve.catalogue_map`).
        max_upload_bytes: the largest upload accepted, in bytes (checked by the HTTP layer; reported by :meth:`info`).

    Raises:
        SearchError: not a catalogue, an export of another model, or a map method that cannot run here.
    """

    def __init__(self, emb_dir: str, export_dir: Optional[str] = None, exact_below: int = DEFAULT_EXACT_BELOW,
                 map_method: str = "pca", max_upload_bytes: int = 50 * 2 ** 20) -> None:
        check_method(map_method)
        self.catalogue = cat = Catalogue(emb_dir, exact_below=exact_below, mmap=True)
        self.map_method = map_method
        self.max_upload_bytes = int(max_upload_bytes)
        self.audio = AudioFiles([r.get("path", "") for r in cat.rows], cat.config.get("catalogue", {}).get("source"))
        self.conditions: List[str] = list(cat.condition_views.names)
        self.label_columns: List[str] = [c for c in (cat.rows[0] if cat.rows else {}) if c not in NOT_LABELS]
        # lower-cased "track_id<TAB>path" per track: what find() matches typed text against
        self._haystack = [f"{r['track_id']}\t{r.get('path', '')}".lower() for r in cat.rows]
        self.sample_rate = int(cat.config["sample_rate"])
        self.segment_seconds = int(cat.config["segment_samples"]) / self.sample_rate
        # segment starts are multiples of the hop in whole samples (catalogue_search._segment_starts)
        self.hop_seconds = int(round(cat.hop_seconds * self.sample_rate)) / self.sample_rate
        self._segment_offsets, self._segments = self._open_segments()
        self._embed_file: Optional[Callable[[str], Tuple[np.ndarray, np.ndarray]]] = None
        if export_dir is not None:
            fn, cfg = cat.export_embedder(export_dir)
            hop = cat.config.get("catalogue", {}).get("hop_seconds")
            self._embed_file = lambda path: embed_file(path, fn, cfg, hop)
        self._uploads: "OrderedDict[str, Dict[str, Any]]" = OrderedDict()
        # hnswlib's set_ef and the lazy index builds are not thread-safe: one search at a time
        self._search_lock = threading.Lock()
        self._embed_lock = threading.Lock()  # one upload embedded at a time (bounds CPU and memory)
        self._map_lock = threading.Lock()
        self._maps: Dict[str, Dict[str, Any]] = {}

    def _open_segments(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """``(offsets int64 [N + 1], segments.npy memory-mapped)``: track i's segments are rows
        ``offsets[i]:offsets[i + 1]`` (dml embed writes them in track order). ``(None, None)`` when the
        files are missing or disagree with tracks.csv: neighbours then play their first segment."""
        path = os.path.join(self.catalogue.path, "segments.npy")
        try:
            counts = np.array([int(r.get("n_segments") or 0) for r in self.catalogue.rows], np.int64)
            segments = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            log.warning("no segment embeddings (%s): each neighbour plays its first segment", e)
            return None, None
        offsets = np.concatenate([[0], np.cumsum(counts)])
        if offsets[-1] != len(segments) or (counts < 1).any():
            log.warning("%s has %d rows but tracks.csv counts %d segments: each neighbour plays its first segment "
                        "(rerun dml embed to reassemble the catalogue)", path, len(segments), offsets[-1])
            return None, None
        return offsets, segments

    # ------------------------------------------------------------------ what the page shows

    def info(self) -> Dict[str, Any]:
        """The catalogue's summary and the server's limits, for the page to build itself."""
        cat = self.catalogue
        return {"catalogue": os.path.abspath(cat.path), "tracks": len(cat),
                "embedding_dim": int(cat.embeddings.shape[1]), "conditions": self.conditions, "views": cat.conditions, "label_columns": self.label_columns,
                "k_max": K_MAX, "k_default": K_DEFAULT, "upload": self._embed_file is not None,
                "max_upload_bytes": self.max_upload_bytes, "segment_seconds": self.segment_seconds,
                "hop_seconds": self.hop_seconds, "map_method": self.map_method,
                "search": "exact" if len(cat) < cat.exact_below else "hnswlib",
                "matched_segments": self._segments is not None}

    def track_at(self, index: Any) -> Dict[str, Any]:
        """:meth:`track` for an index given as text (a map point), or a :class:`RequestError` (404)."""
        try:
            i = int(str(index))
        except ValueError:
            i = -1
        if not 0 <= i < len(self.catalogue):
            raise RequestError(f"index={index!r} is not a track index (0 to {len(self.catalogue) - 1}).", 404)
        return self.track(i)

    def track(self, index: int) -> Dict[str, Any]:
        """One track as the page lists it: ``{index, track_id, path, labels, audio, segment}``
        (``audio``: its URL or None; ``segment``: the first, ``{start_s, end_s, matched: False}``)."""
        row = self.catalogue.rows[index]
        return {"index": int(index), "track_id": row["track_id"], "path": row.get("path", ""),
                "labels": {c: row.get(c, "") for c in self.label_columns}, "audio": self.audio.url(index),
                "segment": {"start_s": 0.0, "end_s": self.segment_seconds, "matched": False}}

    def find(self, text: str, limit: int = 20) -> List[Dict[str, Any]]:
        """Tracks whose track_id or path contains ``text`` (case-insensitive), in catalogue order, an exact
        track_id first; the first ``limit`` (<= :data:`FIND_LIMIT`) tracks for an empty text."""
        limit = max(1, min(int(limit), FIND_LIMIT))
        needle = text.strip().lower()
        hits: List[int] = []
        exact = self.catalogue.index_of.get(text.strip())
        if exact is not None:
            hits.append(exact)
        for i, hay in enumerate(self._haystack):
            if len(hits) >= limit:
                break
            if needle in hay and i != exact:
                hits.append(i)
        return [self.track(i) for i in hits]

    # ------------------------------------------------------------------ queries

    @staticmethod
    def parse_k(k: Any) -> int:
        """``k`` as an int in 1..:data:`K_MAX`, or a :class:`RequestError` naming it."""
        try:
            value = int(str(k).strip())
        except ValueError:
            raise RequestError(f"k={k!r} is not a whole number; give 1 to {K_MAX}.") from None
        if not 1 <= value <= K_MAX:
            raise RequestError(f"k={value} is out of range; give 1 to {K_MAX} neighbours.")
        return value

    def parse_weights(self, text: Optional[str]) -> Optional[Dict[str, float]]:
        """``"genre=0,mood=1"`` (``dml similar --weights``) checked against this catalogue; None for none
        (the whole embedding). Raises :class:`RequestError` for a malformed, unknown, negative, non-finite
        or all-zero weight."""
        if text is None or not text.strip():
            return None
        try:
            weights = parse_weights(text)
            self.catalogue.weight_terms(weights=weights)
        except SearchError as e:
            raise RequestError(str(e).replace("--weights", "weights")) from None
        return weights

    def neighbours(self, track: Optional[str] = None, upload: Optional[str] = None, weights: Optional[str] = None,
                   k: Any = K_DEFAULT) -> Dict[str, Any]:
        """The ``k`` nearest tracks to a catalogue track or an uploaded file, under ``weights``.

        Args:
            track: a track_id of the catalogue (it is left out of its own neighbours).
            upload: an ``upload_id`` from :meth:`embed_upload` (exactly one of track / upload).
            weights: ``dml similar --weights`` text, e.g. ``"genre=0,mood=1,instrument=0,tempo=0"``;
                empty or None: the whole embedding.
            k: neighbours wanted, 1..:data:`K_MAX`.

        Returns:
            ``{"query": {...}, "weights": {...} or None, "k": k, "results": [track dicts with "rank" and
            "distance" (Euclidean, in the weighted view's units) and "segment" {start_s, end_s (seconds),
            matched: True when it is the neighbour's segment nearest the query}]}``.
        """
        k = self.parse_k(k)
        w = self.parse_weights(weights)
        if (track is None) == (upload is None):
            raise RequestError("give either track=TRACK_ID or upload=UPLOAD_ID.")
        cat = self.catalogue
        if track is not None:
            if track not in cat.index_of:
                raise RequestError(f"track {track!r} is not in the catalogue ({len(cat)} tracks); find one by "
                                   "typing part of its id or path.", 404)
            exclude = cat.index_of[track]
            vector = np.asarray(cat.embeddings[exclude], np.float32)
            query = self.track(exclude)
        else:
            entry = self._uploads.get(upload)  # one look-up: another thread's upload may evict it meanwhile
            if entry is None:
                raise RequestError(f"upload {upload!r} is unknown or was forgotten (the server keeps the last "
                                   f"{UPLOADS_KEPT}); drop the file again.", 404)
            exclude, vector = None, entry["vector"]
            query = {key: value for key, value in entry.items() if key != "vector"}
        try:
            with self._search_lock:
                hits = cat.search(vector, weights=w, k=k, exclude=exclude)
        except SearchError as e:
            raise RequestError(str(e)) from None
        results = []
        for rank, (i, distance) in enumerate(hits, start=1):
            item = self.track(i)
            item.update(rank=rank, distance=distance, segment=self._matched_segment(i, vector, w))
            results.append(item)
        return {"query": query, "weights": w, "k": k, "results": results}

    def _matched_segment(self, index: int, vector: np.ndarray, weights: Optional[Dict[str, float]]) -> Dict[str, Any]:
        """Track ``index``'s segment nearest ``vector`` under ``weights``: ``{start_s, end_s, matched}``."""
        if self._segments is None:
            return self.track(index)["segment"]
        lo, hi = int(self._segment_offsets[index]), int(self._segment_offsets[index + 1])
        d = self.catalogue.distances(np.asarray(self._segments[lo:hi]), vector, weights=weights)
        best = int(np.argmin(d))
        start = best * self.hop_seconds
        return {"start_s": round(start, 3), "end_s": round(start + self.segment_seconds, 3), "matched": True}

    # ------------------------------------------------------------------ uploads

    def embed_upload(self, path: str, name: str) -> Dict[str, Any]:
        """Embed an uploaded audio file (saved at ``path``; ``name`` is the user's file name) as a query.

        The file is embedded with the export exactly as ``dml embed`` embeds a track; it is not added
        to the catalogue. Returns ``{"upload_id", "name", "segments", "duration_s"}``.

        Raises:
            RequestError: no export (409), or a file that cannot be decoded or is shorter than one segment (400).
        """
        from disentangled_ml.audio_io import AudioDecodeError

        if self._embed_file is None:
            raise RequestError("this server was started without an export, so it cannot embed audio files; restart "
                               "it as dml serve EMB_DIR --export EXPORT_DIR to query by a file.", 409)
        try:
            with self._embed_lock:
                vector, segments = self._embed_file(path)
        except (AudioDecodeError, SearchError) as e:
            # the message names the temporary file; the user knows it by the name they dropped
            raise RequestError(str(e).replace(path, name)) from None
        upload_id = uuid.uuid4().hex
        entry = {"upload_id": upload_id, "name": name, "segments": int(len(segments)),
                 "duration_s": round(self.segment_seconds + (len(segments) - 1) * self.hop_seconds, 3),
                 "vector": np.asarray(vector, np.float32)}
        self._uploads[upload_id] = entry
        while len(self._uploads) > UPLOADS_KEPT:
            self._uploads.popitem(last=False)
        return {key: value for key, value in entry.items() if key != "vector"}

    def warm_up(self) -> None:
        """Embed one segment of silence through the upload path (decoder and export), so that the first
        upload does not wait for TensorFlow to load, and a broken export fails at start-up. No-op without
        an export."""
        if self._embed_file is None:
            return
        import soundfile

        with tempfile.TemporaryDirectory(prefix="dml_serve_warm_up_") as tmp:
            path = os.path.join(tmp, "silence.wav")
            soundfile.write(path, np.zeros(int(round(self.segment_seconds * self.sample_rate)), np.float32),
                            self.sample_rate, subtype="PCM_16")
            with self._embed_lock:
                self._embed_file(path)

    # ------------------------------------------------------------------ the map

    def map(self, view: str) -> Dict[str, Any]:
        """The 2-D map of ``view`` (a condition or ``whole``) with its colours.

        Returns:
            ``{"view", "method", "x": [N], "y": [N]`` (map units, rounded to 1e-4)``, "colour_by": the label
            column or None, "colours": catalogue_map.map_colours(...)}``; points are in catalogue order.
        """
        if view not in self.catalogue.views:
            raise RequestError(f"unknown view {view!r}; this catalogue has {', '.join(self.catalogue.conditions)}.",
                               404)
        with self._map_lock:
            if view not in self._maps:
                xy = catalogue_map(self.catalogue, view, self.map_method)
                column = view if view in self.label_columns else None
                if view == WHOLE and self.conditions:  # no labels of its own: colour by the first tag condition
                    column = next((c for c in self.conditions if c in self.label_columns), None)
                self._maps[view] = {
                    "view": view, "method": self.map_method,
                    "x": np.round(xy[:, 0].astype(np.float64), 4).tolist(),
                    "y": np.round(xy[:, 1].astype(np.float64), 4).tolist(),
                    "colour_by": column,
                    "colours": map_colours(self.catalogue.rows, column) if column else {"kind": "none"}}
            return self._maps[view]

