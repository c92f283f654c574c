"""The labelled collection: docs/design.md, contract 1.

A manifest is a CSV with a header and one row per audio file (= one track):

* ``path`` (required): relative to the CSV's folder, or absolute.
* ``track_id``: defaults to ``path``.
* ``genre``, ``mood``, ``instrument`` and any other non-reserved column: a tag
  condition; several labels are ``|``-separated; empty = unknown.
* ``tempo``: BPM; when empty, ``dml prepare`` estimates it with madmom.

``dml prepare`` writes a *prepared* manifest in the same format with extra
reserved columns (:data:`PREPARED_COLUMNS`) describing the decoded audio.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

LABEL_SEPARATOR = "|"
#: Columns written by `dml prepare`; never treated as tag conditions.
PREPARED_COLUMNS: Tuple[str, ...] = (
    "sample_rate", "num_frames", "channels", "format_code", "duration", "sha1", "tempo_source", "split",
)
RESERVED_COLUMNS: Tuple[str, ...] = ("path", "track_id", "tempo") + PREPARED_COLUMNS


class ManifestError(ValueError):
    """The manifest is malformed; the message names the file, row and column."""


@dataclass
class Track:
    """One row of a manifest.

    Attributes:
        path: absolute path of the audio file.
        track_id: unique id of the track.
        labels: {tag condition: tuple of labels}; an empty tuple means unknown.
        tempo: BPM, or None when unknown.
        info: the prepared columns (strings), empty for a raw manifest.
    """

    path: str
    track_id: str
    labels: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    tempo: Optional[float] = None
    info: Dict[str, str] = field(default_factory=dict)


def _parse_tempo(value: str, where: str) -> Optional[float]:
    value = value.strip()
    if not value:
        return None
    try:
        bpm = float(value)
    except ValueError:
        raise ManifestError(f"{where}: tempo {value!r} is not a number; give BPM (e.g. 120) or leave it empty.") from None
    if not (math.isfinite(bpm) and 0 < bpm < 1000):
        raise ManifestError(f"{where}: tempo {value!r} is not a plausible BPM; give a value in (0, 1000) or leave it empty.")
    return bpm


def parse_labels(value: str) -> Tuple[str, ...]:
    """``"rock|pop"`` -> ``("pop", "rock")``: stripped, de-duplicated, sorted."""
    return tuple(sorted({v.strip() for v in value.split(LABEL_SEPARATOR) if v.strip()}))


#: Row problems listed in one ManifestError before "... and N more".
MAX_LISTED_PROBLEMS = 50


def read_manifest(path: str) -> List[Track]:
    """Read and validate a manifest CSV.

    Every row is checked before anything is raised, so a user fixing a large manifest
    sees all of its row problems at once, not one per run.

    Raises:
        ManifestError: missing file, no ``path`` column or no rows; or, listing every
            bad row (file and line; the first :data:`MAX_LISTED_PROBLEMS` of them, then a
            count), empty paths, duplicate track ids and tempi that are not a BPM.
    """
    if not os.path.isfile(path):
        raise ManifestError(f"manifest {path} does not exist.")
    base = os.path.dirname(os.path.abspath(path))
    tracks: List[Track] = []
    seen: Dict[str, int] = {}
    problems: List[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(f"manifest {path} has no 'path' column (header: {reader.fieldnames}); "
                                "see docs/design.md, contract 1.")
        tag_columns = [c for c in reader.fieldnames if c not in RESERVED_COLUMNS]
        prepared_columns = [c for c in reader.fieldnames if c in PREPARED_COLUMNS]
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            rel = (row.get("path") or "").strip()
            if not rel:
                problems.append(f"{where}: empty 'path'.")
                continue
            audio = rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))
            track_id = (row.get("track_id") or "").strip() or rel
            if track_id in seen:
                problems.append(f"{where}: track_id {track_id!r} repeats line {seen[track_id]}; "
                                "track ids must be unique.")
                continue
            seen[track_id] = line
            try:
                tempo = _parse_tempo(row.get("tempo") or "", where)
            except ManifestError as e:
                problems.append(str(e))
                continue
            tracks.append(Track(
                path=audio,
                track_id=track_id,
                labels={c: parse_labels(row.get(c) or "") for c in tag_columns},
                tempo=tempo,
                info={c: row.get(c) or "" for c in prepared_columns},
            ))
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise ManifestError(f"manifest {path} has {len(problems)} bad row(s); fix them and run again:\n  "
                            + "\n  ".join(listed) + (f"\n  ... and {more} more." if more else ""))
    if not tracks:
        raise ManifestError(f"manifest {path} has no rows.")
    return tracks


def tag_conditions(tracks: Sequence[Track]) -> List[str]:
    """Tag condition names present in the tracks, in first-seen order."""
    names: List[str] = []
    for t in tracks:
        for c in t.labels:
            if c not in names:
                names.append(c)
    return names


def _format_tempo(bpm: Optional[float]) -> str:
    return "" if bpm is None else repr(float(bpm))


def write_manifest(tracks: Iterable[Track], path: str, tag_columns: Optional[Sequence[str]] = None) -> None:
    """Write tracks as a manifest CSV; paths under the CSV's folder are written relative to it.

    Reading the result back with :func:`read_manifest` returns equal tracks.
    """
    tracks = list(tracks)
    if tag_columns is None:
        tag_columns = tag_conditions(tracks)
    info_columns = [c for c in PREPARED_COLUMNS if any(c in t.info for t in tracks)]
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "track_id", *tag_columns, "tempo", *info_columns])
        for t in tracks:
            rel = os.path.relpath(t.path, base)
            out_path = t.path if rel.startswith("..") else rel
            writer.writerow([
                out_path, t.track_id,
                *(LABEL_SEPARATOR.join(t.labels.get(c, ())) for c in tag_columns),
                _format_tempo(t.tempo),
                *(t.info.get(c, "") for c in info_columns),
            ])
    os.replace(tmp, path)  # atomic: a crash never leaves half a manifest


def label_counts(tracks: Sequence[Track]) -> Dict[str, Dict[str, int]]:
    """{tag condition: {label: number of tracks carrying it}}."""
    counts: Dict[str, Dict[str, int]] = {}
    for t in tracks:
        for c, labels in t.labels.items():
            bucket = counts.setdefault(c, {})
            for label in labels:
                bucket[label] = bucket.get(label, 0) + 1
    return counts


def as_rows(tracks: Sequence[Track]) -> List[Mapping[str, object]]:
    """Tracks as plain dicts (for reports and pandas)."""
    return [{"path": t.path, "track_id": t.track_id, **{c: LABEL_SEPARATOR.join(v) for c, v in t.labels.items()},
             "tempo": t.tempo, **t.info} for t in tracks]
