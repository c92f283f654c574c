"""The labelled collection: docs/design.md, contract 1.

A manifest is a CSV with a header and one row per audio file (= one track):

* ``path`` (required): relative to the CSV's folder, or absolute.
* ``track_id``: defaults to ``path``.
* ``genre``, ``mood``, ``instrument`` and any other non-reserved column: a tag
  condition; several labels are ``|``-separated; empty = unknown.
* ``tempo``: BPM; when empty, ``dml prepare`` estimates it with madmom.

Every row is checked in one pass (:func:`check_manifest`): empty paths, tempi that are
not a BPM, and track ids that repeat. A row repeating an earlier row exactly (same id,
file, labels and tempo) counts once, with a warning; the same id on another file, or on
the same file with other labels or tempo, is a bad row. The first row of an id is the
one kept; the rows that clash with it are the bad ones.

``dml prepare`` writes a *prepared* manifest in the same format with extra
reserved columns (:data:`PREPARED_COLUMNS`) describing the decoded audio.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

LABEL_SEPARATOR = "|"
#: Columns written by `dml prepare`; never treated as tag conditions.
PREPARED_COLUMNS: Tuple[str, ...] = (
    "sample_rate", "num_frames", "channels", "format_code", "duration", "sha1", "tempo_source", "split",
)
RESERVED_COLUMNS: Tuple[str, ...] = ("path", "track_id", "tempo") + PREPARED_COLUMNS


class ManifestProblem(NamedTuple):
    """One bad row of a manifest.

    Attributes:
        line: line number in the CSV file (the header is line 1).
        track_id: the row's track id as read (``path`` when no ``track_id``; may be empty).
        path: the row's ``path`` as written in the manifest (may be empty).
        problem: what is wrong with the row and what to do, in words (without file and line).
    """

    line: int
    track_id: str
    path: str
    problem: str


class ManifestError(ValueError):
    """The manifest is malformed; the message names the file, row and column.

    ``problems`` lists the bad rows (:class:`ManifestProblem`) when that is what is
    wrong, and is empty for a manifest that cannot be read at all.
    """

    def __init__(self, message: str, problems: Sequence[ManifestProblem] = ()):
        super().__init__(message)
        self.problems: List[ManifestProblem] = list(problems)


class CheckedManifest(NamedTuple):
    """The result of :func:`check_manifest`: the good tracks and the bad rows."""

    tracks: List["Track"]
    problems: List[ManifestProblem]


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


def _parse_tempo(value: str) -> Tuple[Optional[float], str]:
    """``(BPM or None, "")``, or ``(None, what is wrong)`` for a tempo that is not a BPM."""
    value = value.strip()
    if not value:
        return None, ""
    try:
        bpm = float(value)
    except ValueError:
        return None, f"tempo {value!r} is not a number; give BPM (e.g. 120) or leave it empty."
    if not (math.isfinite(bpm) and 0 < bpm < 1000):
        return None, f"tempo {value!r} is not a plausible BPM; give a value in (0, 1000) or leave it empty."
    return bpm, ""


def parse_labels(value: str) -> Tuple[str, ...]:
    """``"rock|pop"`` -> ``("pop", "rock")``: stripped, de-duplicated, sorted."""
    return tuple(sorted({v.strip() for v in value.split(LABEL_SEPARATOR) if v.strip()}))


#: Row problems listed in one ManifestError before "... and N more".
MAX_LISTED_PROBLEMS = 50


def resolve_path(manifest_path: str, rel: str) -> str:
    """A manifest's ``path`` value as an absolute path (relative paths are under the CSV's folder)."""
    base = os.path.dirname(os.path.abspath(manifest_path))
    return rel if os.path.isabs(rel) else os.path.normpath(os.path.join(base, rel))


def check_manifest(path: str) -> CheckedManifest:
    """Read a manifest CSV and check every row, without raising on bad rows.

    The one reading of a manifest: :func:`read_manifest` raises on the problems this
    returns, and ``dml prepare`` lists them (or, with ``--skip-bad-rows``, goes on
    without them). A row is bad when its ``path`` is empty, its tempo is not a BPM, or
    its track id repeats an earlier row's on another file, or on the same file with
    other labels, tempo or prepared columns (conflicting rows). The first row of an id
    is kept; the later rows that clash with it are the bad ones. A row repeating an
    earlier one exactly counts once; a warning names the lines.

    Returns:
        :class:`CheckedManifest`: the good tracks (in file order) and the bad rows (by line).

    Raises:
        ManifestError: the file is missing, has no ``path`` column, or has no rows at all.
    """
    if not os.path.isfile(path):
        raise ManifestError(f"manifest {path} does not exist.")
    tracks: List[Track] = []
    problems: List[ManifestProblem] = []
    # track id -> (first line, absolute path, path as written, labels, tempo (BPM or the bad text), info)
    seen: Dict[str, Tuple[int, str, str, Dict[str, Tuple[str, ...]], Any, Dict[str, str]]] = {}
    repeats: Dict[str, List[int]] = {}  # track id -> lines that repeat its first row exactly
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ManifestError(f"manifest {path} has no 'path' column (header: {reader.fieldnames}); "
                                "see docs/design.md, contract 1.")
        tag_columns = [c for c in reader.fieldnames if c not in RESERVED_COLUMNS]
        prepared_columns = [c for c in reader.fieldnames if c in PREPARED_COLUMNS]
        for line, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip()
            track_id = (row.get("track_id") or "").strip() or rel
            if not rel:
                problems.append(ManifestProblem(line, track_id, rel, "empty 'path'; give the audio file's path, "
                                                "or delete the row."))
                continue
            audio = resolve_path(path, rel)
            reasons: List[str] = []
            tempo, bad_tempo = _parse_tempo(row.get("tempo") or "")
            if bad_tempo:
                reasons.append(bad_tempo)
            labels = {c: parse_labels(row.get(c) or "") for c in tag_columns}
            info = {c: (row.get(c) or "").strip() for c in prepared_columns}
            content = (labels, (row.get("tempo") or "").strip() if bad_tempo else tempo, info)
            first = seen.get(track_id)
            if first is None:
                seen[track_id] = (line, audio, rel, *content)
            elif first[1] != audio:
                reasons.append(f"track_id {track_id!r} repeats line {first[0]}, which is another file "
                               f"({first[2]}); track ids must be unique: give one of the two files another "
                               "track_id.")
            elif not bad_tempo:
                differ = [c for c in tag_columns if first[3].get(c) != labels[c]]
                differ += ["tempo"] * (first[4] != tempo)
                differ += [c for c in prepared_columns if first[5].get(c) != info[c]]
                if differ:
                    reasons.append(f"track_id {track_id!r} repeats line {first[0]} (the same file) with another "
                                   f"{', '.join(differ)}; conflicting rows: keep the right one and delete the "
                                   "other.")
                else:
                    repeats.setdefault(track_id, []).append(line)
                    continue
            if reasons:
                problems.append(ManifestProblem(line, track_id, rel, " ".join(reasons)))
                continue
            tracks.append(Track(path=audio, track_id=track_id, labels=labels, tempo=tempo,
                                info={c: row.get(c) or "" for c in prepared_columns}))
    for track_id, lines in repeats.items():
        log.warning("manifest %s: lines %s are the same row (track_id %r, %s); it counts once. Delete the "
                    "copies to silence this warning.", path, ", ".join(str(n) for n in [seen[track_id][0], *lines]),
                    track_id, seen[track_id][2])
    if not tracks and not problems:
        raise ManifestError(f"manifest {path} has no rows.")
    return CheckedManifest(tracks, problems)


def format_problems(path: str, problems: Sequence[ManifestProblem], limit: Optional[int] = None) -> str:
    """Bad rows as ``"PATH, line N: problem"`` lines, the first ``limit`` of them, then a count."""
    limit = MAX_LISTED_PROBLEMS if limit is None else limit
    listed = [f"{path}, line {p.line}: {p.problem}" for p in problems[:limit]]
    more = len(problems) - len(listed)
    return "\n  ".join(listed) + (f"\n  ... and {more} more." if more else "")


def read_manifest(path: str) -> List[Track]:
    """Read and validate a manifest CSV (:func:`check_manifest`), raising on any bad row.

    Every row is checked before anything is raised, so a user fixing a large manifest
    sees all of its row problems at once, not one per run.

    Raises:
        ManifestError: missing file, no ``path`` column or no rows; or, listing every
            bad row (file and line; the first :data:`MAX_LISTED_PROBLEMS` of them, then a
            count; all of them in ``.problems``), empty paths, repeated track ids
            (on another file, or with other labels or tempo) and tempi that are not a BPM.
    """
    tracks, problems = check_manifest(path)
    if problems:
        raise ManifestError(f"manifest {path} has {len(problems)} bad row(s); fix them and run again:\n  "
                            + format_problems(path, problems), problems)
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
