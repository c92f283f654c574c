"""Segment timelines: how each condition's view of one track moves over time (``dml timeline``).

A track is a catalogue track (its ``track_id``: the segments ``dml embed`` stored) or an
audio file, embedded segment by segment with the export that made the catalogue (or
another copy of the same model), every ``hop_seconds``. For every condition and every
segment :func:`build_timeline` reports, in that condition's view
(:class:`~disentangled_ml.condition_views.ConditionViews`, read from the catalogue's
``config.json``):

* **tag conditions** (genre, mood, instrument, extra manifest columns): the classes of
  the ``k`` nearest *labelled* catalogue tracks (track-level embeddings; the tracks with
  no label for the condition take no part), each with its vote share: the summed weight
  of the neighbours that carry the class over the summed weight of all ``k``. A
  multi-label neighbour votes for each of its labels, so shares can add up to more than
  1. The winner is the class with the largest share (ties: alphabetical).
* **tempo**, which has a BPM per track rather than classes: the kNN tempo estimate, the
  weighted geometric mean of the neighbours' BPM (tempo is perceived on a log scale; a
  neighbour an octave off pulls the estimate part of the way, and ``spread_octaves``,
  the weighted standard deviation of ``log2 BPM``, says so), with every neighbour's BPM.
* **every condition**: the distance from the track's mean in that view, i.e. from the
  track embedding (the mean of its segments, re-normalised as ``dml embed`` does it).

Neighbours are weighted ``1 / distance`` (``weighting="distance"``, the default) or
equally (``"uniform"``). A catalogue track is left out of its own neighbours. The kNN
is exact (numpy, the labelled tracks scored in blocks), whatever the catalogue's size.

:func:`write_timeline` writes ``DIR/timeline.json`` (every number) and
``DIR/timeline.png`` (one row per condition, time in seconds on the x-axis).

Times: segment ``i`` covers ``[start_s, start_s + segment_seconds)``; its ``center_s``
is where the plot puts it. Consecutive segments meet halfway between their centres
(the segments overlap when the hop is shorter than a segment), which is where a
``runs`` boundary lies.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.catalogue_search import Catalogue, SearchError, track_embedding
from disentangled_ml.data.labels import TEMPO
from disentangled_ml.data.manifest import parse_labels

__all__ = ["TimelineError", "TrackSegments", "LabelPool", "load_track", "label_pool", "nearest_tracks",
           "build_timeline", "write_timeline", "plot_timeline", "DEFAULT_K", "WEIGHTINGS",
           "JSON_NAME", "PNG_NAME"]

#: Neighbours per vote: enough for a share to mean something (steps of 0.1) in a catalogue of a few dozen tracks.
DEFAULT_K = 10
#: How neighbours are weighted: ``1 / distance`` or equally.
WEIGHTINGS: Tuple[str, ...] = ("distance", "uniform")
#: ``1 / max(d, MIN_DISTANCE)``: a neighbour at distance 0 (a duplicate) outweighs all the others, rather than dividing by 0.
MIN_DISTANCE = 1e-9
#: Labelled tracks scored at once by the exact kNN (memory: segments x block float64).
POOL_BLOCK = 65536
#: The files :func:`write_timeline` writes.
JSON_NAME, PNG_NAME = "timeline.json", "timeline.png"
#: Kinds of condition entries in the JSON.
CLASSES, TEMPO_KIND, UNLABELLED = "classes", "tempo", "unlabelled"


class TimelineError(SearchError):
    """A timeline that cannot be made: the message says what is wrong and what to do."""


# ----------------------------------------------------------------------------- the track


@dataclass
class TrackSegments:
    """One track's segments, ready for the timeline.

    Attributes:
        track: the TRACK argument (a track_id or a path).
        source: ``"catalogue"`` (a track_id) or ``"audio_file"``.
        path: the audio file (a catalogue track's ``tracks.csv`` path).
        starts: float64 ``[n]``, segment starts in seconds.
        embeddings: float32 ``[n, D]``, the segments' embeddings.
        mean: float32 ``[D]``, the track embedding (:func:`~disentangled_ml.catalogue_search.track_embedding`).
        hop_seconds: seconds between segment starts.
        segment_seconds: the export's segment length.
        catalogue_index: the track's row in the catalogue (left out of its neighbours), or None.
        export_dir: the export that embedded an audio file (None for a catalogue track).
    """

    track: str
    source: str
    path: str
    starts: np.ndarray
    embeddings: np.ndarray
    mean: np.ndarray
    hop_seconds: float
    segment_seconds: float
    catalogue_index: Optional[int] = None
    export_dir: Optional[str] = None


def load_track(catalogue: Catalogue, track: str, export_dir: Optional[str] = None,
               hop_seconds: Optional[float] = None) -> TrackSegments:
    """The segments of a catalogue track, or of an audio file embedded now.

    Args:
        catalogue: the catalogue.
        track: a track_id of the catalogue (tried first) or the path of an audio file.
        export_dir: the export that embeds an audio file (default: the one the catalogue
            records; it must hold the catalogue's model).
        hop_seconds: seconds between segment starts of an audio file (default: the
            catalogue's hop). A catalogue track keeps the hop it was embedded with.

    Raises:
        TimelineError: an unknown track, a file that cannot be decoded or is shorter
            than one segment, a missing or different export, or a hop for a catalogue track.
    """
    from disentangled_ml.audio_io import AudioDecodeError
    from disentangled_ml.catalogue_search import embed_file_segments

    segment_seconds = int(catalogue.config["segment_samples"]) / int(catalogue.config["sample_rate"])
    groups = int(catalogue.config.get("normalisation_groups", 1))
    if hop_seconds is not None and not (math.isfinite(hop_seconds) and hop_seconds > 0):
        raise TimelineError(f"--hop-seconds {hop_seconds} must be > 0 seconds.")
    if track in catalogue.index_of:
        if hop_seconds is not None and not math.isclose(hop_seconds, catalogue.hop_seconds, abs_tol=1e-6):
            raise TimelineError(f"{track!r} is a catalogue track, embedded every {catalogue.hop_seconds:g} s; "
                                "--hop-seconds applies to audio files only (re-embed the catalogue with dml embed "
                                "--hop-seconds for another hop).")
        i = catalogue.index_of[track]
        starts, emb = catalogue.track_segments(track)
        return TrackSegments(track, "catalogue", catalogue.rows[i].get("path", ""), starts, emb,
                             catalogue.embeddings[i].astype(np.float32), catalogue.hop_seconds, segment_seconds, i)
    if not os.path.isfile(track):
        examples = ", ".join(repr(r["track_id"]) for r in catalogue.rows[:3])
        raise TimelineError(f"{track!r} is neither a track_id of {catalogue.path} ({len(catalogue)} tracks, e.g. "
                            f"{examples}) nor an existing audio file.")
    hop = catalogue.hop_seconds if hop_seconds is None else float(hop_seconds)
    embed, config = catalogue.export_embedder(export_dir)
    try:
        starts, emb = embed_file_segments(track, embed, config, hop)
    except AudioDecodeError as e:
        raise TimelineError(str(e)) from None
    except SearchError as e:  # shorter than one segment
        raise TimelineError(str(e)) from None
    used_export = export_dir or catalogue.config.get("catalogue", {}).get("export_dir")
    return TrackSegments(track, "audio_file", os.path.abspath(track), starts, emb, track_embedding(emb, groups), hop,
                         segment_seconds, None, os.path.abspath(used_export) if used_export else None)


# ----------------------------------------------------------------------------- labels


@dataclass
class LabelPool:
    """The catalogue tracks a condition's kNN votes among: those with a label (or a BPM) for it.

    Attributes:
        condition: the condition.
        kind: ``"classes"`` (a tag condition) or ``"tempo"``.
        indices: int64 ``[P]``, catalogue rows.
        labels: per pool track, its classes (``"classes"``; empty for tempo).
        bpm: float64 ``[P]``, per pool track, its tempo (``"tempo"``; empty for classes).
        classes: every class of the pool, sorted (``"classes"``).
    """

    condition: str
    kind: str
    indices: np.ndarray
    labels: List[Tuple[str, ...]] = field(default_factory=list)
    bpm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: Tuple[str, ...] = ()


def label_pool(catalogue: Catalogue, condition: str, exclude: Optional[int] = None) -> Tuple[Optional[LabelPool], str]:
    """``(pool, "")``, or ``(None, why there is none)`` when no catalogue track (other than ``exclude``) has a label.

    Labels are ``tracks.csv``'s column named after the condition (the manifest's, kept by
    ``dml embed MANIFEST``): ``|``-separated classes, or a BPM for ``tempo``.
    """
    if not catalogue.rows or condition not in catalogue.rows[0]:
        return None, (f"the catalogue has no {condition!r} column (embed a manifest with {condition} labels: "
                      "dml embed EXPORT_DIR MANIFEST)")
    indices, labels, bpm = [], [], []
    for i, row in enumerate(catalogue.rows):
        if i == exclude:
            continue
        value = (row.get(condition) or "").strip()
        if condition == TEMPO:
            try:
                tempo = float(value)
            except ValueError:
                continue  # empty (unknown) or not a BPM
            if math.isfinite(tempo) and tempo > 0:
                indices.append(i)
                bpm.append(tempo)
        else:
            classes = parse_labels(value)
            if classes:
                indices.append(i)
                labels.append(classes)
    if not indices:
        other = " other" if exclude is not None else ""
        what = "a BPM" if condition == TEMPO else "a label"
        return None, f"no{other} catalogue track has {what} for {condition!r}"
    if condition == TEMPO:
        return LabelPool(condition, TEMPO_KIND, np.asarray(indices, np.int64), bpm=np.asarray(bpm, np.float64)), ""
    return LabelPool(condition, CLASSES, np.asarray(indices, np.int64), labels=labels,
                     classes=tuple(sorted({c for ls in labels for c in ls}))), ""


# ----------------------------------------------------------------------------- kNN


def nearest_tracks(queries: np.ndarray, pool: np.ndarray, k: int, block: int = POOL_BLOCK
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest neighbours of each query among ``pool``.

    Args:
        queries: float ``[n, d]``.
        pool: float ``[P, d]``.
        k: neighbours wanted (at most ``P`` are returned).
        block: pool rows scored at once (memory ``n x block`` float64).

    Returns:
        ``(indices int64 [n, k'], distances float64 [n, k'])``, ``k' = min(k, P)``: rows of
        ``pool``, nearest first, ties broken by index.
    """
    q = np.asarray(queries, np.float64)
    n, size = len(q), len(pool)
    k = min(int(k), size)
    best_i = np.zeros((n, 0), np.int64)
    best_d = np.zeros((n, 0), np.float64)
    q2 = np.einsum("ij,ij->i", q, q)[:, None]
    for first in range(0, size, block):
        p = np.asarray(pool[first:first + block], np.float64)
        # |q - p|^2 by expansion: one matrix product per block instead of an [n, block, d] difference
        d2 = np.maximum(q2 + np.einsum("ij,ij->i", p, p)[None, :] - 2.0 * q @ p.T, 0.0)
        idx = np.broadcast_to(np.arange(first, first + len(p)), d2.shape)
        cand_d, cand_i = np.concatenate([best_d, d2], axis=1), np.concatenate([best_i, idx], axis=1)
        if cand_d.shape[1] > k:
            keep = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
            cand_d, cand_i = np.take_along_axis(cand_d, keep, 1), np.take_along_axis(cand_i, keep, 1)
        best_d, best_i = cand_d, cand_i
    # exact distances of the kept neighbours (the expansion loses digits when q and p are close)
    diff = q[:, None, :] - np.asarray(pool, np.float64)[best_i] if n and k else np.zeros((n, k, 0))
    dist = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    order = np.lexsort((best_i, dist), axis=-1)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(dist, order, 1)


def _weights(distances: np.ndarray, weighting: str) -> np.ndarray:
    if weighting == "uniform":
        return np.ones_like(distances)
    return 1.0 / np.maximum(distances, MIN_DISTANCE)


def _votes(labels: Sequence[Tuple[str, ...]], weights: np.ndarray) -> Dict[str, float]:
    """``{class: share}``, largest first (ties alphabetical): each class's summed neighbour weight over all of it."""
    total = float(weights.sum())
    votes: Dict[str, float] = {}
    for classes, w in zip(labels, weights):
        for c in classes:
            votes[c] = votes.get(c, 0.0) + float(w)
    return {c: v / total for c, v in sorted(votes.items(), key=lambda cv: (-cv[1], cv[0]))}


def _tempo(bpm: np.ndarray, weights: np.ndarray) -> Tuple[float, float]:
    """``(weighted geometric mean BPM, weighted std of log2 BPM in octaves)``."""
    w = weights / weights.sum()
    octaves = np.log2(bpm)
    mean = float(np.dot(w, octaves))
    return float(2.0 ** mean), float(np.sqrt(max(float(np.dot(w, (octaves - mean) ** 2)), 0.0)))


# ----------------------------------------------------------------------------- the timeline


def _runs(winners: Sequence[str], shares: Sequence[float], centres: np.ndarray, starts: np.ndarray,
          segment_seconds: float) -> List[Dict[str, Any]]:
    """Consecutive segments with the same winner: ``{"class", "start_s", "end_s", "first_segment",
    "segments", "mean_share"}``; inner boundaries halfway between two segments' centres."""
    runs: List[Dict[str, Any]] = []
    for i, c in enumerate(winners):
        if runs and runs[-1]["class"] == c:
            runs[-1]["segments"] += 1
            runs[-1]["_shares"].append(shares[i])
            continue
        if runs:
            runs[-1]["end_s"] = float((centres[i - 1] + centres[i]) / 2)
        runs.append({"class": c, "start_s": float(starts[i]) if not runs else float((centres[i - 1] + centres[i]) / 2),
                     "end_s": None, "first_segment": i, "segments": 1, "_shares": [shares[i]]})
    if runs:
        runs[-1]["end_s"] = float(starts[-1] + segment_seconds)
    for r in runs:
        r["mean_share"] = float(np.mean(r.pop("_shares")))
    return runs


def build_timeline(catalogue: Catalogue, segments: TrackSegments, k: int = DEFAULT_K, weighting: str = "distance",
                   conditions: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Every number of the timeline, as :func:`write_timeline` writes it to ``timeline.json``.

    Args:
        catalogue: the catalogue whose labelled tracks vote.
        segments: the track (:func:`load_track`).
        k: neighbours per segment (>= 1; fewer when fewer tracks are labelled).
        weighting: ``"distance"`` (``1/d``) or ``"uniform"``.
        conditions: the conditions to report (default: all of the catalogue's). A condition
            named here must have labels; by default a condition without labels gets only its
            distance from the mean (``"kind": "unlabelled"``, with the reason).

    Returns:
        ``{"track", "source", "path", "catalogue", "export_dir", "training_config_hash",
        "segment_seconds", "hop_seconds", "k", "weighting", "mask_mode", "segments": [{"index",
        "start_s", "end_s", "center_s"}], "conditions": {name: entry}}``, an entry being
        ``{"kind", "labelled_tracks", "k", "segments": [...]}`` with per segment
        ``"distance_from_mean"`` and, by kind: ``"classes"``: ``"winner"``, ``"share"``, ``"votes"``
        ``{class: share}``, ``"neighbours"`` ``[{"track_id", "distance", "labels"}]``, plus the
        entry's ``"classes"`` and ``"runs"``; ``"tempo"``: ``"bpm"``, ``"spread_octaves"``,
        ``"neighbours"`` ``[{"track_id", "distance", "bpm"}]``; ``"unlabelled"``: the entry's ``"reason"``.
        Distances are Euclidean in the condition's view.

    Raises:
        TimelineError: bad ``k``/``weighting``, an unknown condition, a named condition
            without labels, or no condition with labels at all.
    """
    if k < 1:
        raise TimelineError(f"--k {k} must be >= 1.")
    if weighting not in WEIGHTINGS:
        raise TimelineError(f"--weighting {weighting!r}: choose one of {', '.join(WEIGHTINGS)}.")
    views = catalogue.condition_views
    explicit = conditions is not None
    names = list(dict.fromkeys(conditions)) if explicit else list(views.names)
    for name in names:
        if name not in views.names:
            raise TimelineError(f"unknown condition {name!r}; this catalogue has {', '.join(views.names)}.")
    pools = {name: label_pool(catalogue, name, segments.catalogue_index) for name in names}
    missing = {name: why for name, (pool, why) in pools.items() if pool is None}
    if explicit and missing:
        name = next(iter(missing))
        labelled = [n for n in views.names if label_pool(catalogue, n, segments.catalogue_index)[0] is not None]
        raise TimelineError(f"condition {name!r} has no labels: {missing[name]}; conditions with labels here: "
                            f"{', '.join(labelled) or 'none'}.")
    if len(missing) == len(names):
        raise TimelineError(f"{catalogue.path} has no labels for any condition ({'; '.join(missing.values())}): "
                            "the kNN needs labelled tracks. Embed a manifest with label columns "
                            "(dml embed EXPORT_DIR MANIFEST --out EMB_DIR).")

    starts = np.asarray(segments.starts, np.float64)
    centres = starts + segments.segment_seconds / 2
    result: Dict[str, Any] = {
        "track": segments.track, "source": segments.source, "path": segments.path,
        "catalogue": os.path.abspath(catalogue.path), "export_dir": segments.export_dir,
        "training_config_hash": catalogue.config.get("training_config_hash"),
        "segment_seconds": segments.segment_seconds, "hop_seconds": segments.hop_seconds,
        "k": int(k), "weighting": weighting, "mask_mode": views.mode,
        "segments": [{"index": i, "start_s": float(s), "end_s": float(s + segments.segment_seconds),
                      "center_s": float(c)} for i, (s, c) in enumerate(zip(starts, centres))],
        "conditions": {},
    }
    track_ids = [r["track_id"] for r in catalogue.rows]
    for name in names:
        seg_view = views.apply(segments.embeddings, name)
        mean_view = views.apply(segments.mean[None, :], name)
        dist_mean = np.linalg.norm(seg_view.astype(np.float64) - mean_view, axis=1)
        pool, why = pools[name]
        rows: List[Dict[str, Any]] = [{"index": i, "start_s": float(s), "distance_from_mean": float(d)}
                                      for i, (s, d) in enumerate(zip(starts, dist_mean))]
        if pool is None:
            result["conditions"][name] = {"kind": UNLABELLED, "reason": why, "segments": rows}
            continue
        nn, nd = nearest_tracks(seg_view, views.apply(catalogue.embeddings, name)[pool.indices], k)
        entry: Dict[str, Any] = {"kind": pool.kind, "labelled_tracks": int(len(pool.indices)), "k": int(nn.shape[1])}
        for row, idx, dist in zip(rows, nn, nd):
            w = _weights(dist, weighting)
            if pool.kind == TEMPO_KIND:
                bpm, spread = _tempo(pool.bpm[idx], w)
                row.update(bpm=bpm, spread_octaves=spread, neighbours=[
                    {"track_id": track_ids[pool.indices[j]], "distance": float(d), "bpm": float(pool.bpm[j])}
                    for j, d in zip(idx, dist)])
            else:
                votes = _votes([pool.labels[j] for j in idx], w)
                winner = next(iter(votes))
                row.update(winner=winner, share=votes[winner], votes=votes, neighbours=[
                    {"track_id": track_ids[pool.indices[j]], "distance": float(d), "labels": list(pool.labels[j])}
                    for j, d in zip(idx, dist)])
        if pool.kind == CLASSES:
            entry["classes"] = list(pool.classes)
            entry["runs"] = _runs([r["winner"] for r in rows], [r["share"] for r in rows], centres, starts,
                                  segments.segment_seconds)
        entry["segments"] = rows
        result["conditions"][name] = entry
    return result


# ----------------------------------------------------------------------------- output


def plot_timeline(timeline: Dict[str, Any], path: str) -> None:
    """The PNG: one row per condition, time in seconds on the x-axis.

    Class conditions: a bar per segment, coloured by its winning class, as tall as its vote
    share (left axis), with the class names over their runs. Tempo: the kNN estimate in BPM
    with a band of +-1 ``spread_octaves`` (left axis). Every row: the distance from the track's
    mean in that view, a black line on the right axis.
    """
    # the object-oriented API, no pyplot: no global figure state, no display backend to pick
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    conditions = timeline["conditions"]
    seg = timeline["segments"]
    centres = np.array([s["center_s"] for s in seg])
    width = min(timeline["hop_seconds"], timeline["segment_seconds"])
    t0, t1 = seg[0]["start_s"], seg[-1]["end_s"]
    fig = Figure(figsize=(max(8.0, min(24.0, 4.0 + 0.25 * len(seg))), 1.0 + 2.0 * len(conditions)))
    axes = fig.subplots(len(conditions), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, entry) in zip(axes, conditions.items()):
        rows = entry["segments"]
        if entry["kind"] == CLASSES:
            palette = colormaps["tab20" if len(entry["classes"]) > 10 else "tab10"]
            colour = {c: palette(i % palette.N) for i, c in enumerate(entry["classes"])}
            ax.bar(centres, [r["share"] for r in rows], width=width, color=[colour[r["winner"]] for r in rows],
                   edgecolor="none", align="center")
            for run in entry["runs"]:  # inside the bars, below where the distance curve usually runs
                ax.text((run["start_s"] + run["end_s"]) / 2, 0.45, f"{run['class']}\n{run['mean_share']:.2f}",
                        ha="center", va="center", fontsize=8, clip_on=True,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
            ax.set_ylim(0, 1.05)
            ax.set_ylabel(f"{name}\nvote share")
            shown = [c for c in entry["classes"] if any(r["winner"] == c for r in rows)]
            ax.legend(handles=[Patch(color=colour[c], label=c) for c in shown], loc="upper left",
                      bbox_to_anchor=(1.06, 1.0), fontsize=8, frameon=False)
        elif entry["kind"] == TEMPO_KIND:
            bpm = np.array([r["bpm"] for r in rows])
            spread = np.array([r["spread_octaves"] for r in rows])
            ax.fill_between(centres, bpm * 2.0 ** -spread, bpm * 2.0 ** spread, color="tab:blue", alpha=0.2,
                            linewidth=0)
            ax.plot(centres, bpm, color="tab:blue", marker=".", label="kNN tempo")
            ax.set_ylabel(f"{name}\nBPM (kNN)")
        else:
            ax.set_yticks([])
            ax.set_ylabel(name)
            ax.text(0.01, 0.9, f"no labels: {entry['reason']}", transform=ax.transAxes, fontsize=8, va="top")
        twin = ax.twinx()
        twin.plot(centres, [r["distance_from_mean"] for r in rows], color="black", linewidth=1.2, marker=".",
                  markersize=3)
        twin.set_ylim(bottom=0)
        twin.set_ylabel("distance\nfrom mean", fontsize=8)
        ax.set_xlim(t0, t1)
    axes[-1].set_xlabel("time (s)")
    track = timeline["track"] if timeline["source"] == "catalogue" else os.path.basename(timeline["track"])
    fig.suptitle(f"{track}: k={timeline['k']} nearest labelled tracks ({timeline['weighting']}-weighted), "
                 f"{timeline['segment_seconds']:g} s segments every {timeline['hop_seconds']:g} s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def write_timeline(timeline: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write ``out_dir/timeline.json`` and ``out_dir/timeline.png`` (replacing earlier ones): ``{"json", "png"}`` paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, JSON_NAME), "png": os.path.join(out_dir, PNG_NAME)}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(timeline, f, indent=1)
    os.replace(tmp, paths["json"])
    plot_timeline(timeline, paths["png"])
    return paths
