"""Embedding catalogues and similarity search, from an export only (docs/design.md, contract 2).

:func:`embed_collection` runs an export over a folder of audio files or a
manifest and writes a *catalogue*::

    EMB_DIR/
      config.json     the export's config.json, plus "catalogue": {export_dir, backend, hop_seconds, source, ...}
      tracks.npy      float32 [N, D]: per track, the mean of its segment embeddings, re-normalised to unit L2 norm
                      (per slice, each to 1/sqrt(G), when the export's normalisation_groups G > 1)
      tracks.csv      track_id, path, n_segments (+ the manifest's label columns)
      segments.npy    float32 [M, D]: every segment's embedding (unit norm)
      segments.csv    track_id, start_s (segment start in seconds)
      skipped.csv     track_id, path, reason: undecodable files and tracks shorter than one segment
      shards/         per-chunk results; an interrupted run resumes from them
      index_<view>.bin, index_<view>.json   hnswlib indexes, built on first use by a large search

:class:`Catalogue` answers nearest-neighbour queries: Euclidean distance in one
condition's sub-space (its slice for fixed masks, the masked vector for learned
masks, the whole embedding without masks), or a weighted combination
``sqrt(sum_c w_c * d_c^2)``. Small catalogues are searched exactly with numpy;
from :data:`DEFAULT_EXACT_BELOW` tracks on, with one hnswlib index per
sub-space and an exact re-ranking of its candidates.

Nothing here needs the training code; TensorFlow is imported only to run a
SavedModel (LiteRT runs the ``.tflite`` without it).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.condition_views import ConditionViews, ConditionViewsError

log = logging.getLogger(__name__)

__all__ = ["SearchError", "AudioItem", "list_audio", "load_export_embedder", "embed_file",
           "embed_file_segments", "embed_collection",
           "Catalogue", "parse_weights", "DEFAULT_EXACT_BELOW", "DEFAULT_SHARD_SIZE", "WHOLE"]

#: Catalogues smaller than this are searched exactly (numpy); larger ones with hnswlib.
DEFAULT_EXACT_BELOW = 20000
#: Files per shard of an embedding run (the unit of resumption).
DEFAULT_SHARD_SIZE = 64
#: Name of the whole-embedding view (no condition).
WHOLE = "whole"
#: hnswlib graph parameters: M links per node, ef at construction; ef at query time is
#: at least HNSW_EF_SEARCH and at least the number of candidates asked for.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 100
#: Weighted queries above the exact threshold fetch this many times k candidates per sub-space.
WEIGHTED_OVERFETCH = 10


class SearchError(ValueError):
    """A user-facing problem with a catalogue, a query or an export; the message says what to do."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class AudioItem:
    """One file to embed: its id, absolute path and label columns (from a manifest)."""

    track_id: str
    path: str
    labels: Dict[str, str] = field(default_factory=dict)


def list_audio(source: str) -> Tuple[List[AudioItem], List[str]]:
    """The files of a folder (recursively, sorted) or the rows of a manifest.

    Args:
        source: a folder (track ids are paths relative to it, ``/``-separated) or a
            manifest CSV (docs/design.md, contract 1; its labels are kept).

    Returns:
        ``(items, label_columns)``.

    Raises:
        SearchError: the source does not exist, or holds no audio file.
    """
    from disentangled_ml.audio_io import SUPPORTED_EXTENSIONS

    if os.path.isdir(source):
        items = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in SUPPORTED_EXTENSIONS:
                    path = os.path.join(root, name)
                    rel = os.path.relpath(path, source).replace(os.sep, "/")
                    items.append(AudioItem(rel, os.path.abspath(path)))
        if not items:
            raise SearchError(f"{source} holds no audio file ({', '.join(SUPPORTED_EXTENSIONS)}).")
        return items, []
    if os.path.isfile(source):
        from disentangled_ml.data.manifest import ManifestError, read_manifest, tag_conditions

        try:
            tracks = read_manifest(source)
        except ManifestError as e:
            raise SearchError(str(e)) from None
        columns = tag_conditions(tracks)
        has_tempo = any(t.tempo is not None for t in tracks)
        items = []
        for t in tracks:
            labels = {c: "|".join(t.labels.get(c, ())) for c in columns}
            if has_tempo:
                labels["tempo"] = "" if t.tempo is None else f"{t.tempo:g}"
            items.append(AudioItem(t.track_id, t.path, labels))
        return items, columns + (["tempo"] if has_tempo else [])
    raise SearchError(f"{source}: no such folder or manifest CSV.")


# ----------------------------------------------------------------------------- the export


def _export_config(export_dir: str) -> Dict[str, Any]:
    from disentangled_ml.export import ExportError, load_export_config

    try:
        return load_export_config(export_dir)
    except ExportError as e:
        raise SearchError(str(e)) from None


def load_export_embedder(export_dir: str, backend: str = "saved_model", batch_size: int = 32,
                         num_threads: Optional[int] = None, tflite_file: str = "model.tflite"
                         ) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict[str, Any]]:
    """The export's waveform -> embedding function, and its config.json.

    Args:
        export_dir: an export directory (``dml export``).
        backend: ``"saved_model"`` (TensorFlow) or ``"tflite"`` (a ``.tflite`` file with LiteRT).
        batch_size: segments per call.
        num_threads: LiteRT threads (tflite only).
        tflite_file: which ``.tflite`` variant of the export (tflite only): ``model.tflite`` (float32),
            ``model_fp16.tflite``, ``model_int8.tflite`` or ``model_int8_full.tflite``.

    Returns:
        ``(embed, config)``: ``embed(float32 [n, segment_samples]) -> float32 [n, D]``.
    """
    config = _export_config(export_dir)
    if backend == "tflite":
        from disentangled_ml.export.tflite import TFLiteEmbedder

        path = os.path.join(export_dir, tflite_file)
        if not os.path.isfile(path):
            present = sorted(f for f in os.listdir(export_dir) if f.endswith(".tflite"))
            raise SearchError(f"{path} does not exist (the export has {present or 'no .tflite file'}); re-export, "
                              "or use the SavedModel (no --tflite).")
        return TFLiteEmbedder(path, batch_size=batch_size, num_threads=num_threads), config
    if backend != "saved_model":
        raise SearchError(f"backend {backend!r}: choose 'saved_model' or 'tflite'.")
    from disentangled_ml.evaluation.embedders import EvaluationError, SavedModelEmbedder

    path = os.path.join(export_dir, "saved_model")
    try:
        return SavedModelEmbedder(path, batch_size=batch_size), config
    except EvaluationError as e:
        raise SearchError(str(e)) from None


def _segment_starts(num_samples: int, segment_samples: int, hop_samples: int) -> np.ndarray:
    return np.arange(0, num_samples - segment_samples + 1, hop_samples, dtype=np.int64)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def track_embedding(segments: np.ndarray, groups: int = 1) -> np.ndarray:
    """A track's embedding from its segments' ``[k, D]``: their mean, normalised as the model
    normalises a segment (``groups``, the export's ``normalisation_groups``: 1 = unit norm; G = each
    of G equal slices to norm ``1/sqrt(G)``, so every condition's slice keeps the same radius)."""
    mean = np.asarray(segments, np.float32).mean(axis=0)
    if groups <= 1:
        return _normalise(mean)
    return (_normalise(mean.reshape(groups, -1)) / np.sqrt(groups)).reshape(-1).astype(np.float32)


def embed_file_segments(path: str, embed: Callable[[np.ndarray], np.ndarray], config: Mapping[str, Any],
                        hop_seconds: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Embed one audio file segment by segment, as :func:`embed_collection` cuts it.

    Args:
        path: an audio file.
        embed: the export's ``float32 [n, segment_samples] -> float32 [n, D]`` (:func:`load_export_embedder`).
        config: the export's config.json (``sample_rate``, ``segment_samples``).
        hop_seconds: seconds between segment starts (default: one segment, no overlap).

    Returns:
        ``(starts float64 [k], segment embeddings float32 [k, D])``: each segment's start in seconds.

    Raises:
        AudioDecodeError: the file cannot be decoded.
        SearchError: the file is shorter than one segment.
    """
    from disentangled_ml.audio_io import load_audio

    sr, seg = int(config["sample_rate"]), int(config["segment_samples"])
    hop = int(round((hop_seconds or seg / sr) * sr))
    y = load_audio(path, sr)
    starts = _segment_starts(y.size, seg, hop)
    if not starts.size:
        raise SearchError(f"{path} is {y.size / sr:.2f} s long, shorter than one {seg / sr:g} s segment.")
    segs = np.stack([y[s:s + seg] for s in starts])
    return starts / sr, np.asarray(embed(segs), np.float32)


def embed_file(path: str, embed: Callable[[np.ndarray], np.ndarray], config: Mapping[str, Any],
               hop_seconds: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Embed one audio file: ``(track embedding float32 [D], segment embeddings float32 [k, D])``.

    Raises:
        AudioDecodeError: the file cannot be decoded.
        SearchError: the file is shorter than one segment.
    """
    _, emb = embed_file_segments(path, embed, config, hop_seconds)
    return track_embedding(emb, int(config.get("normalisation_groups", 1))), emb


# ----------------------------------------------------------------------------- embedding a collection


def _write_json_atomic(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _read_shards(shard_dir: str) -> List[Dict[str, Any]]:
    """Completed shards, in order. A shard is complete once its .json (written last) exists."""
    shards = []
    if not os.path.isdir(shard_dir):
        return shards
    for name in sorted(os.listdir(shard_dir)):
        if not (name.startswith("part_") and name.endswith(".json")):
            continue
        meta_path = os.path.join(shard_dir, name)
        npz_path = meta_path[:-5] + ".npz"
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            arrays = dict(np.load(npz_path))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            log.warning("ignoring the unreadable shard %s (%s); its files are embedded again.", meta_path, e)
            continue
        shards.append({**meta, **arrays})
    return shards


def _decoded(items: Sequence[AudioItem], sample_rate: int, lookahead: int = 2
             ) -> Iterator[Tuple[AudioItem, Optional[np.ndarray], Optional[str]]]:
    """``(item, waveform or None, error or None)`` in order, decoding ahead in a thread."""
    from disentangled_ml.audio_io import AudioDecodeError, load_audio

    def load(item):
        try:
            return load_audio(item.path, sample_rate), None
        except AudioDecodeError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(load, it) for it in items[:lookahead]]
        for i, item in enumerate(items):
            if i + lookahead < len(items):
                futures.append(pool.submit(load, items[i + lookahead]))
            y, err = futures[i].result()
            futures[i] = None  # free the waveform
            yield item, y, err


def embed_collection(export_dir: str, source: str, out_dir: str, hop_seconds: Optional[float] = None,
                     batch_size: int = 32, backend: str = "saved_model", shard_size: int = DEFAULT_SHARD_SIZE,
                     progress: bool = True, embedder: Optional[Callable[[np.ndarray], np.ndarray]] = None
                     ) -> Dict[str, Any]:
    """Embed every file of a folder or manifest with an export; resumable.

    Files are processed in shards of ``shard_size``; each finished shard is saved
    under ``EMB_DIR/shards``. Running the same command again after an interruption
    embeds only the files no shard holds yet, then assembles the final arrays.

    Args:
        export_dir: the export directory (``config.json`` and ``saved_model/`` or ``model.tflite``).
        source: a folder of audio files or a manifest CSV.
        out_dir: the catalogue directory (module docstring).
        hop_seconds: hop between segment starts (default: one segment, i.e. no overlap).
        batch_size: segments per forward pass.
        backend: ``"saved_model"`` or ``"tflite"``.
        shard_size: files per shard.
        progress: show a tqdm bar over files.
        embedder: use this function instead of loading the export's model (tests).

    Returns:
        ``{"tracks": N, "segments": M, "skipped": S, "embedded_this_run": n, "out_dir": ...}``.

    Raises:
        SearchError: bad arguments, or ``out_dir`` holds a catalogue made with another
            export, hop or source.
    """
    if shard_size < 1 or batch_size < 1:
        raise SearchError("--batch-size and the shard size must be >= 1.")
    config = _export_config(export_dir)
    sr, seg = int(config["sample_rate"]), int(config["segment_samples"])
    if hop_seconds is not None and hop_seconds <= 0:
        raise SearchError(f"--hop-seconds {hop_seconds} must be > 0 seconds.")
    hop_s = float(hop_seconds) if hop_seconds else seg / sr
    items, label_columns = list_audio(source)
    catalogue_info = {
        "export_dir": os.path.abspath(export_dir), "backend": backend, "hop_seconds": hop_s,
        "source": os.path.abspath(source), "label_columns": label_columns,
        "track_embedding": "mean of the segment embeddings, re-normalised as the model normalises a segment "
                           "(normalisation_groups: 1 = unit L2 norm, G = each of G slices to norm 1/sqrt(G))",
    }
    os.makedirs(out_dir, exist_ok=True)
    config_path = os.path.join(out_dir, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        prev = previous.get("catalogue", {})
        for key in ("export_dir", "backend", "hop_seconds", "source"):
            if prev.get(key) != catalogue_info[key]:
                raise SearchError(f"{out_dir} holds a catalogue made with {key}={prev.get(key)!r}, not "
                                  f"{catalogue_info[key]!r}; choose another --out or delete it.")
        if previous.get("training_config_hash") != config.get("training_config_hash"):
            raise SearchError(f"{out_dir} was embedded with another model (training config hash "
                              f"{previous.get('training_config_hash')} vs {config.get('training_config_hash')}); "
                              "choose another --out or delete it.")
    _write_json_atomic(config_path, {**config, "catalogue": catalogue_info})

    shard_dir = os.path.join(out_dir, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    shards = _read_shards(shard_dir)
    done = {r["track_id"] for s in shards for r in s["tracks"] + s["skipped"]}
    todo = [it for it in items if it.track_id not in done]
    if done:
        log.info("resuming: %d of %d files already embedded or skipped, %d to go", len(done & {i.track_id for i in items}),
                 len(items), len(todo))

    if todo and embedder is None:
        embedder, _ = load_export_embedder(export_dir, backend, batch_size)
    hop = int(round(hop_s * sr))
    next_part = 1 + max([int(n[5:10]) for n in os.listdir(shard_dir) if n.startswith("part_") and
                         n[5:10].isdigit()] or [-1])
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="file", desc="embedding")
    decoded = _decoded(todo, sr)
    for first in range(0, len(todo), shard_size):
        chunk = todo[first:first + shard_size]
        rows, skipped, track_embs, seg_embs, seg_track, seg_start = [], [], [], [], [], []
        for item, y, err in (next(decoded) for _ in chunk):
            if err is None and y.size < seg:
                err = f"shorter than one segment ({y.size / sr:.2f} s < {seg / sr:g} s)"
            if err is not None:
                log.warning("skipped %s: %s", item.path, err)
                skipped.append({"track_id": item.track_id, "path": item.path, "reason": err})
            else:
                starts = _segment_starts(y.size, seg, hop)
                emb = np.concatenate([np.asarray(embedder(np.stack([y[s:s + seg] for s in starts[i:i + batch_size]])),
                                                 np.float32) for i in range(0, len(starts), batch_size)])
                track_embs.append(track_embedding(emb, int(config.get("normalisation_groups", 1))))
                seg_embs.append(emb)
                seg_track += [len(rows)] * len(starts)
                seg_start.append(starts / sr)
                rows.append({"track_id": item.track_id, "path": item.path, "n_segments": int(len(starts)),
                             **item.labels})
            if bar is not None:
                bar.update(1)
        dim = int(config["embedding_dim"])
        stem = os.path.join(shard_dir, f"part_{next_part:05d}")
        np.savez(stem + ".npz",
                 track_emb=np.stack(track_embs) if track_embs else np.zeros((0, dim), np.float32),
                 seg_emb=np.concatenate(seg_embs) if seg_embs else np.zeros((0, dim), np.float32),
                 seg_track=np.asarray(seg_track, np.int64), seg_start=np.concatenate(seg_start) if seg_start
                 else np.zeros(0))
        _write_json_atomic(stem + ".json", {"tracks": rows, "skipped": skipped})  # commits the shard
        next_part += 1
    if bar is not None:
        bar.close()
    summary = _assemble(out_dir, items, label_columns)
    summary["embedded_this_run"] = len(todo)
    return summary


def _assemble(out_dir: str, items: Sequence[AudioItem], label_columns: Sequence[str]) -> Dict[str, Any]:
    """Write tracks/segments/skipped files from the shards, in the source's order."""
    shards = _read_shards(os.path.join(out_dir, "shards"))
    order = {it.track_id: i for i, it in enumerate(items)}
    tracks, segments, seg_rows, skipped = [], [], [], []
    for s in shards:
        for j, row in enumerate(s["tracks"]):
            if row["track_id"] not in order:
                continue  # a file no longer in the source
            mask = s["seg_track"] == j
            tracks.append((order[row["track_id"]], row, s["track_emb"][j], s["seg_emb"][mask], s["seg_start"][mask]))
        skipped += [r for r in s["skipped"] if r["track_id"] in order]
    tracks.sort(key=lambda t: t[0])
    skipped.sort(key=lambda r: order[r["track_id"]])
    dim = None
    for _, row, _, seg_emb, starts in tracks:
        segments.append(seg_emb)
        seg_rows += [{"track_id": row["track_id"], "start_s": f"{s:.3f}"} for s in starts]
    if tracks:
        track_arr = np.stack([t[2] for t in tracks]).astype(np.float32)
        seg_arr = np.concatenate(segments).astype(np.float32)
    else:
        with open(os.path.join(out_dir, "config.json")) as f:
            dim = int(json.load(f)["embedding_dim"])
        track_arr = seg_arr = np.zeros((0, dim), np.float32)
    np.save(os.path.join(out_dir, "tracks.npy"), track_arr)
    np.save(os.path.join(out_dir, "segments.npy"), seg_arr)
    columns = ["track_id", "path", "n_segments", *label_columns]
    _write_csv(os.path.join(out_dir, "tracks.csv"), columns, [t[1] for t in tracks])
    _write_csv(os.path.join(out_dir, "segments.csv"), ["track_id", "start_s"], seg_rows)
    _write_csv(os.path.join(out_dir, "skipped.csv"), ["track_id", "path", "reason"], skipped)
    for name in os.listdir(out_dir):  # indexes of an older catalogue are stale now
        if name.startswith("index_"):
            os.remove(os.path.join(out_dir, name))
    return {"out_dir": out_dir, "tracks": len(tracks), "segments": int(len(seg_arr)), "skipped": len(skipped),
            "skipped_rows": skipped}


def _write_csv(path: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# ----------------------------------------------------------------------------- searching


class Catalogue:
    """A catalogue directory written by :func:`embed_collection`, ready for queries.

    Args:
        path: the catalogue directory.
        exact_below: search exactly when the catalogue has fewer tracks than this;
            otherwise use hnswlib indexes.
        mmap: memory-map ``tracks.npy`` (read-only) instead of reading it whole.

    Attributes:
        config: ``config.json`` (the export's, plus ``"catalogue"``).
        embeddings: float32 ``[N, D]`` track embeddings.
        rows: ``tracks.csv`` rows (``track_id``, ``path``, ``n_segments``, labels).
        views: ``{name: view}`` for every condition and :data:`WHOLE` (``None``), the
            view as :meth:`~disentangled_ml.condition_views.ConditionViews.view` gives it.
        condition_views: the :class:`~disentangled_ml.condition_views.ConditionViews` of ``config``.
    """

    def __init__(self, path: str, exact_below: int = DEFAULT_EXACT_BELOW, mmap: bool = False) -> None:
        self.path = path
        self.exact_below = int(exact_below)
        for name in ("config.json", "tracks.npy", "tracks.csv"):
            if not os.path.isfile(os.path.join(path, name)):
                raise SearchError(f"{os.path.join(path, name)} does not exist; is {path} a catalogue written by "
                                  "dml embed (which finishes by writing it)?")
        with open(os.path.join(path, "config.json")) as f:
            self.config = json.load(f)
        # mmap: pages are read on demand, so a 100,000-track catalogue opens at once (dml serve);
        # the exact path then copies only the rows it measures, and hnswlib indexes are cached on disk.
        self.embeddings = np.load(os.path.join(path, "tracks.npy"), mmap_mode="r" if mmap else None)
        with open(os.path.join(path, "tracks.csv"), newline="") as f:
            self.rows = list(csv.DictReader(f))
        if len(self.rows) != len(self.embeddings):
            raise SearchError(f"{path}: tracks.csv has {len(self.rows)} rows but tracks.npy {len(self.embeddings)}; "
                              "rerun dml embed to reassemble it.")
        self.index_of = {r["track_id"]: i for i, r in enumerate(self.rows)}
        self.views = self._views()

    def _views(self) -> Dict[str, Any]:
        try:
            self.condition_views = ConditionViews.from_export_config(self.config)
        except ConditionViewsError as e:
            raise SearchError(f"{self.path}/config.json: {e}; re-export the model and re-embed.") from None
        return {**self.condition_views.metric_views(), WHOLE: None}

    @property
    def conditions(self) -> List[str]:
        """Condition names, plus :data:`WHOLE`."""
        return list(self.views)

    def __len__(self) -> int:
        return len(self.rows)

    def project(self, x: np.ndarray, view: str) -> np.ndarray:
        """The part of ``x`` (``[n, D]``) that ``view`` measures distances in
        (:meth:`~disentangled_ml.condition_views.ConditionViews.apply`; ``x`` itself for :data:`WHOLE`)."""
        return x if view == WHOLE else self.condition_views.apply(x, view)

    def check_view(self, name: str) -> None:
        if name not in self.views:
            raise SearchError(f"unknown condition {name!r}; this catalogue has {', '.join(self.conditions)}.")

    # ------------------------------------------------------------------ queries

    def query_vector(self, query: str, embed: Optional[Callable[[str], np.ndarray]] = None
                     ) -> Tuple[np.ndarray, Optional[int]]:
        """``(vector float32 [D], catalogue index or None)`` for a track id or an audio file.

        Args:
            query: a ``track_id`` of the catalogue, or the path of an audio file.
            embed: ``f(path) -> [D]`` for files (default: the export named in config.json).
        """
        if query in self.index_of:
            i = self.index_of[query]
            return self.embeddings[i].astype(np.float32), i
        if os.path.isfile(query):
            if embed is None:
                embed = self._file_embedder()
            return np.asarray(embed(query), np.float32), None
        examples = ", ".join(repr(r["track_id"]) for r in self.rows[:3])
        raise SearchError(f"query {query!r} is neither a track_id of the catalogue ({len(self)} tracks, e.g. "
                          f"{examples}) nor an existing audio file.")

    @property
    def hop_seconds(self) -> float:
        """Seconds between the starts of a track's segments in this catalogue (``dml embed --hop-seconds``)."""
        hop = self.config.get("catalogue", {}).get("hop_seconds")
        return float(hop) if hop else int(self.config["segment_samples"]) / int(self.config["sample_rate"])

    def export_embedder(self, export_dir: Optional[str] = None
                        ) -> Tuple[Callable[[np.ndarray], np.ndarray], Dict[str, Any]]:
        """The waveform -> embedding function of the export that made this catalogue, and its config.json.

        Args:
            export_dir: the export to run (default: the one ``config.json`` records, ``catalogue.export_dir``).
                It must hold the same model as the catalogue's (same ``training_config_hash``):
                embeddings of another model are not comparable with the catalogue's.

        Returns:
            :func:`load_export_embedder`'s ``(embed, config)``, with the backend the catalogue was made with.

        Raises:
            SearchError: no such export, or an export of another model.
        """
        info = self.config.get("catalogue", {})
        if export_dir is None:
            export_dir = info.get("export_dir")
            if not export_dir or not os.path.isdir(export_dir):
                raise SearchError(f"{self.path}/config.json names the export {export_dir!r}, which is not there; "
                                  "embedding an audio file needs it (give the export with --export, or use a "
                                  "track_id of the catalogue).")
        elif not os.path.isdir(export_dir):
            raise SearchError(f"export {export_dir}: no such directory.")
        else:
            given = _export_config(export_dir)
            if given.get("training_config_hash") != self.config.get("training_config_hash"):
                raise SearchError(f"{export_dir} holds another model than the one that embedded {self.path} "
                                  f"(training config hash {given.get('training_config_hash')} vs "
                                  f"{self.config.get('training_config_hash')}); its embeddings are not comparable "
                                  "with the catalogue's. Give the export the catalogue was made with "
                                  f"({info.get('export_dir')}).")
        return load_export_embedder(export_dir, info.get("backend", "saved_model"))

    def track_segments(self, track_id: str) -> Tuple[np.ndarray, np.ndarray]:
        """A catalogue track's segments: ``(starts float64 [k] in seconds, embeddings float32 [k, D])``.

        Reads ``segments.csv`` and only that track's rows of ``segments.npy`` (memory-mapped).

        Raises:
            SearchError: an unknown track_id, or segment files that disagree with ``tracks.csv``.
        """
        if track_id not in self.index_of:
            raise SearchError(f"{track_id!r} is not a track_id of {self.path}.")
        csv_path, npy_path = (os.path.join(self.path, n) for n in ("segments.csv", "segments.npy"))
        if not (os.path.isfile(csv_path) and os.path.isfile(npy_path)):
            raise SearchError(f"{self.path} has no segments.csv / segments.npy; rerun dml embed to reassemble it.")
        rows, starts = [], []
        with open(csv_path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if row["track_id"] == track_id:
                    rows.append(i)
                    starts.append(float(row["start_s"]))
        segments = np.load(npy_path, mmap_mode="r")
        expected = int(self.rows[self.index_of[track_id]].get("n_segments") or len(rows))
        if not rows or len(rows) != expected or rows[-1] >= len(segments):
            raise SearchError(f"{self.path}: segments.csv has {len(rows)} segments of {track_id!r}, tracks.csv says "
                              f"{expected} (segments.npy: {len(segments)} rows); rerun dml embed to reassemble it.")
        return np.asarray(starts, np.float64), np.asarray(segments[rows], np.float32)

    def _file_embedder(self) -> Callable[[str], np.ndarray]:
        fn, cfg = self.export_embedder()
        hop = self.config.get("catalogue", {}).get("hop_seconds")
        from disentangled_ml.audio_io import AudioDecodeError

        def embed(path: str) -> np.ndarray:
            try:
                return embed_file(path, fn, cfg, hop)[0]
            except AudioDecodeError as e:
                raise SearchError(str(e)) from None
        return embed

    def search(self, vector: np.ndarray, condition: Optional[str] = None,
               weights: Optional[Mapping[str, float]] = None, k: int = 10,
               exclude: Optional[int] = None) -> List[Tuple[int, float]]:
        """The ``k`` nearest tracks to ``vector``.

        Args:
            vector: float ``[D]``, a query embedding.
            condition: measure in this condition's sub-space (None or ``"whole"``:
                the whole embedding).
            weights: ``{condition: w >= 0}``; distance ``sqrt(sum_c w_c * d_c^2)``.
                Mutually exclusive with ``condition``.
            k: results wanted.
            exclude: a catalogue index left out (the query track itself).

        Returns:
            ``[(index, distance)]``, nearest first, ties broken by index.
        """
        if k < 1:
            raise SearchError(f"--k {k} must be >= 1.")
        terms = self.weight_terms(condition, weights)
        q = self._query_row(vector)
        n = len(self)
        k_eff = min(k, n - (exclude is not None))
        if k_eff <= 0:
            return []
        if n < self.exact_below:
            candidates = np.arange(n)
        else:
            fetch = k_eff + 1 if len(terms) == 1 else k_eff * WEIGHTED_OVERFETCH + 1
            candidates = np.unique(np.concatenate([self._ann(view, q, fetch) for view in terms]))
        if exclude is not None:
            candidates = candidates[candidates != exclude]
        d2 = self._squared_distances(self.embeddings[candidates], q, terms)
        order = np.lexsort((candidates, d2))[:k_eff]
        return [(int(candidates[i]), float(np.sqrt(d2[i]))) for i in order]

    def weight_terms(self, condition: Optional[str] = None, weights: Optional[Mapping[str, float]] = None
                     ) -> Dict[str, float]:
        """The checked ``{view: weight > 0}`` a query measures in (:meth:`search`'s ``condition`` / ``weights``).

        Raises:
            SearchError: both given, an unknown condition, a weight that is not finite and >= 0, or all zero.
        """
        if condition is not None and weights:
            raise SearchError("give either --condition or --weights, not both.")
        if weights:
            for name, w in weights.items():
                self.check_view(name)
                if not (np.isfinite(w) and w >= 0):
                    raise SearchError(f"weight {name}={w} must be a finite number >= 0.")
            if not any(w > 0 for w in weights.values()):
                raise SearchError("at least one weight must be > 0.")
            return {n: float(w) for n, w in weights.items() if w > 0}
        name = condition or WHOLE
        self.check_view(name)
        return {name: 1.0}

    def distances(self, x: np.ndarray, vector: np.ndarray, condition: Optional[str] = None,
                  weights: Optional[Mapping[str, float]] = None) -> np.ndarray:
        """Distances from ``vector`` (``[D]``) to each row of ``x`` (``[n, D]``, e.g. a track's segments),
        measured as :meth:`search` measures them: float64 ``[n]``, ``sqrt(sum_c w_c * d_c^2)``."""
        terms = self.weight_terms(condition, weights)
        return np.sqrt(self._squared_distances(np.asarray(x, np.float32).reshape(-1, self.embeddings.shape[1]),
                                               self._query_row(vector), terms))

    def _query_row(self, vector: np.ndarray) -> np.ndarray:
        q = np.asarray(vector, np.float32).reshape(1, -1)
        if q.shape[1] != self.embeddings.shape[1]:
            raise SearchError(f"query vector has {q.shape[1]} dimensions, the catalogue {self.embeddings.shape[1]}.")
        return q

    def _squared_distances(self, x: np.ndarray, q: np.ndarray, terms: Mapping[str, float]) -> np.ndarray:
        d2 = np.zeros(len(x), np.float64)
        for view, w in terms.items():
            diff = self.project(x, view).astype(np.float64) - self.project(q, view)
            d2 += w * np.einsum("ij,ij->i", diff, diff)
        return d2

    # ------------------------------------------------------------------ hnswlib

    def _ann(self, view: str, q: np.ndarray, fetch: int) -> np.ndarray:
        index = self._index(view)
        fetch = min(fetch, len(self))
        index.set_ef(max(HNSW_EF_SEARCH, fetch))
        labels, _ = index.knn_query(self.project(q, view), k=fetch)
        return labels[0].astype(np.int64)

    def prepare_indexes(self) -> List[str]:
        """Load (or build and cache) the hnswlib index of every view now, when the catalogue is searched
        through them (``len(self) >= exact_below``), so that no later query waits for a build.

        Returns:
            the views whose index is ready; ``[]`` for a catalogue searched exactly.
        """
        if len(self) < self.exact_below:
            return []
        for view in self.views:
            self._index(view)
        return list(self.views)

    def _index(self, view: str):
        # hnswlib rather than faiss: it has an L2 space, supports adding items to a built
        # index (catalogues grow), is a small pip wheel/sdist with no BLAS or GPU
        # dependency; faiss-cpu wheels are several times larger for the same job here.
        import hnswlib

        if not hasattr(self, "_indexes"):
            self._indexes: Dict[str, Any] = {}
        if view in self._indexes:
            return self._indexes[view]
        data = self.project(self.embeddings, view).astype(np.float32)
        bin_path = os.path.join(self.path, f"index_{view}.bin")
        meta_path = os.path.join(self.path, f"index_{view}.json")
        stat = os.stat(os.path.join(self.path, "tracks.npy"))
        meta = {"n": len(data), "dim": int(data.shape[1]), "tracks_npy_size": stat.st_size,
                "tracks_npy_mtime_ns": stat.st_mtime_ns, "M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
        index = hnswlib.Index(space="l2", dim=int(data.shape[1]))
        cached = None
        if os.path.isfile(bin_path) and os.path.isfile(meta_path):
            with open(meta_path) as f:
                cached = json.load(f)
        if cached == meta:
            index.load_index(bin_path, max_elements=len(data))
        else:
            log.info("building the hnswlib index of %r over %d tracks (cached in %s)", view, len(data), bin_path)
            index.init_index(max_elements=len(data), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=0)
            index.add_items(data, np.arange(len(data)))
            index.save_index(bin_path)
            _write_json_atomic(meta_path, meta)
        self._indexes[view] = index
        return index

    def describe(self, results: Sequence[Tuple[int, float]]) -> List[Dict[str, Any]]:
        """Result rows: ``{"rank", "track_id", "distance", labels...}``."""
        label_cols = [c for c in (self.rows[0].keys() if self.rows else []) if c not in ("track_id", "path", "n_segments")]
        out = []
        for rank, (i, d) in enumerate(results, start=1):
            row = self.rows[i]
            out.append({"rank": rank, "track_id": row["track_id"], "distance": d,
                        **{c: row.get(c, "") for c in label_cols}})
        return out


def parse_weights(text: str) -> Dict[str, float]:
    """``"genre=0.5,mood=0.5"`` -> ``{"genre": 0.5, "mood": 0.5}``."""
    weights: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise SearchError(f"--weights item {part!r} is not NAME=NUMBER (e.g. genre=0.5,mood=0.5).") from None
    if not weights:
        raise SearchError("--weights is empty; give e.g. genre=0.5,mood=0.5.")
    return weights
