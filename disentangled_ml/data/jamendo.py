"""Import MTG-Jamendo metadata as a manifest (docs/design.md, contract 1).

MTG-Jamendo (Bogdanov et al., 2019) ships its labels as tab-separated files, e.g.
``data/autotagging_genre.tsv``, ``autotagging_moodtheme.tsv`` and
``autotagging_instrument.tsv`` (or the per-split files under ``data/splits/``)::

    TRACK_ID        ARTIST_ID       ALBUM_ID        PATH        DURATION  TAGS
    track_0000214   artist_000014   album_000031    14/214.mp3  124.6     genre---punkrock  genre---rock

The header names six columns, but ``TAGS`` is *all* fields after ``DURATION``, so a
row has a variable number of fields. Each tag is ``<category>---<label>`` with
category ``genre``, ``mood/theme`` or ``instrument``; a tag's category, not the file
it came from, decides its manifest column (``mood/theme`` -> ``mood``), so
``autotagging.tsv`` (all categories in one file) imports as well.

:func:`import_jamendo` merges any number of such files by ``TRACK_ID``. A track that
appears in only some files gets empty (unknown) labels for the other conditions.
Artist and album ids are not manifest columns (any extra column would be read as a
tag condition by :func:`~disentangled_ml.data.manifest.read_manifest`); they go to a
side file ``<manifest stem>.artists.csv`` (``track_id, artist_id, album_id``), which
artist-level splits (no artist in both train and test, as MTG-Jamendo's own splits
do) can read with :func:`read_artists`.

The metadata is CC BY-NC-SA 4.0; the audio is under per-track Creative Commons
licences (see the dataset's ``audio_licenses.txt``).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from disentangled_ml.data.manifest import LABEL_SEPARATOR, ManifestError, Track, write_manifest

log = logging.getLogger(__name__)

#: The three per-category files looked for when a directory is given.
STANDARD_FILES: Tuple[str, ...] = ("autotagging_genre.tsv", "autotagging_moodtheme.tsv", "autotagging_instrument.tsv")
#: Tag category (text before ``---``) -> manifest column.
CATEGORY_COLUMNS: Dict[str, str] = {"genre": "genre", "mood/theme": "mood", "instrument": "instrument"}
#: The manifest's tag columns, in the order written.
TAG_COLUMNS: Tuple[str, ...] = ("genre", "mood", "instrument")
HEADER: Tuple[str, ...] = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS")
TAG_SEPARATOR = "---"


@dataclass
class _Entry:
    track_id: str
    artist_id: str
    album_id: str
    rel_path: str
    duration: float
    first_seen: str  # "file, line N", for error messages about conflicting rows
    labels: Dict[str, Set[str]] = field(default_factory=lambda: {c: set() for c in TAG_COLUMNS})


def find_tsvs(sources: Union[str, Sequence[str]]) -> List[str]:
    """Resolve directories and files to a list of TSV paths.

    A directory contributes whichever of :data:`STANDARD_FILES` it holds (at least one);
    a file is taken as given.

    Raises:
        ManifestError: a path that does not exist, or a directory with none of the files.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths: List[str] = []
    for src in sources:
        src = os.fspath(src)
        if os.path.isdir(src):
            found = [os.path.join(src, name) for name in STANDARD_FILES if os.path.isfile(os.path.join(src, name))]
            if not found:
                raise ManifestError(
                    f"directory {src} holds none of {', '.join(STANDARD_FILES)}; pass MTG-Jamendo's data/ folder, "
                    "or name the TSV files (e.g. splits/split-0/autotagging_genre-train.tsv) explicitly.")
            paths.extend(found)
        elif os.path.isfile(src):
            paths.append(src)
        else:
            raise ManifestError(f"MTG-Jamendo metadata {src} does not exist.")
    if not paths:
        raise ManifestError("no MTG-Jamendo TSV files given.")
    return paths


def _parse_tag(tag: str, where: str) -> Tuple[str, str]:
    category, sep, label = tag.partition(TAG_SEPARATOR)
    if not sep or not category or not label.strip():
        raise ManifestError(f"{where}: tag {tag!r} is not of the form '<category>---<label>' "
                            "(e.g. 'genre---rock'); is this an MTG-Jamendo autotagging file?")
    if category not in CATEGORY_COLUMNS:
        raise ManifestError(f"{where}: tag {tag!r} has unknown category {category!r}; "
                            f"expected one of {', '.join(CATEGORY_COLUMNS)}.")
    label = label.strip()
    if LABEL_SEPARATOR in label:
        raise ManifestError(f"{where}: tag {tag!r} contains {LABEL_SEPARATOR!r}, the manifest's label separator.")
    return CATEGORY_COLUMNS[category], label


def _read_tsv(path: str, entries: Dict[str, _Entry]) -> int:
    """Parse one TSV into ``entries`` (merging by TRACK_ID); returns its number of rows."""
    rows = 0
    seen_here: Dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise ManifestError(f"{path} is empty; expected a header {' '.join(HEADER)}.")
        header = [h.strip() for h in header]
        missing = [h for h in HEADER if h not in header]
        if missing:
            raise ManifestError(f"{path}, line 1: header lacks column(s) {', '.join(missing)}; "
                                f"found {header}, expected {list(HEADER)}.")
        col = {h: header.index(h) for h in HEADER}
        if col["TAGS"] != len(header) - 1:
            raise ManifestError(f"{path}, line 1: TAGS must be the last column (it takes all remaining fields); "
                                f"header is {header}.")
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            if not any(field.strip() for field in row):
                continue  # a blank line (e.g. at the end of a hand-edited file)
            if len(row) < col["TAGS"]:
                raise ManifestError(f"{where}: {len(row)} fields, expected at least {col['TAGS']} "
                                    f"({', '.join(HEADER[:-1])}) before the tags.")
            track_id = row[col["TRACK_ID"]].strip()
            rel_path = row[col["PATH"]].strip()
            if not track_id or not rel_path:
                raise ManifestError(f"{where}: empty TRACK_ID or PATH.")
            if track_id in seen_here:
                raise ManifestError(f"{where}: TRACK_ID {track_id!r} repeats line {seen_here[track_id]}.")
            seen_here[track_id] = line
            raw_duration = row[col["DURATION"]].strip()
            try:
                duration = float(raw_duration)
            except ValueError:
                raise ManifestError(f"{where}: DURATION {raw_duration!r} is not a number of seconds.") from None
            entry = entries.get(track_id)
            if entry is None:
                entry = entries[track_id] = _Entry(track_id, row[col["ARTIST_ID"]].strip(),
                                                   row[col["ALBUM_ID"]].strip(), rel_path, duration, where)
            elif entry.rel_path != rel_path or entry.artist_id != row[col["ARTIST_ID"]].strip():
                raise ManifestError(f"{where}: track {track_id!r} has PATH {rel_path!r} / ARTIST_ID "
                                    f"{row[col['ARTIST_ID']].strip()!r}, but {entry.first_seen} gives "
                                    f"{entry.rel_path!r} / {entry.artist_id!r}; the files disagree.")
            for tag in row[col["TAGS"]:]:
                tag = tag.strip()
                if tag:  # tolerate empty fields, e.g. from a trailing tab
                    column, label = _parse_tag(tag, where)
                    entry.labels[column].add(label)
            rows += 1
    return rows


def import_jamendo(sources: Union[str, Sequence[str]], audio_root: str, out_csv: Optional[str] = None,
                   min_duration: Optional[float] = None, low_quality: bool = False) -> List[Track]:
    """Merge MTG-Jamendo autotagging TSVs into one manifest.

    Args:
        sources: a directory (MTG-Jamendo's ``data/``; its :data:`STANDARD_FILES` are
            read), one TSV path, or a list of directories and TSV paths (e.g. the three
            ``splits/split-0/autotagging_*-train.tsv``).
        audio_root: the folder the audio archives were unpacked into; a track's audio is
            ``audio_root/PATH`` (PATH looks like ``14/214.mp3``).
        out_csv: where to write the manifest; ``None`` writes nothing. The artist side
            file goes next to it as ``<stem>.artists.csv``.
        min_duration: seconds; tracks whose DURATION is shorter are left out (e.g. the
            segment length). ``None`` keeps all.
        low_quality: the audio is MTG-Jamendo's "audio-low" download, whose files are
            named ``14/214.low.mp3`` rather than ``14/214.mp3``.

    Returns:
        list of :class:`~disentangled_ml.data.manifest.Track`, in first-seen order, with
        absolute paths, labels for ``genre``, ``mood`` and ``instrument`` (an empty tuple
        means unknown), and ``tempo`` None (``dml prepare`` estimates it).

    Raises:
        ManifestError: a missing file, a header without the MTG-Jamendo columns, a
            malformed tag (no ``---``), an unknown tag category, a non-numeric duration,
            a track repeated in one file, or files that disagree about a track's path or
            artist. The message names the file and line.
    """
    if min_duration is not None and min_duration < 0:
        raise ManifestError(f"min_duration={min_duration!r} must be >= 0 seconds.")
    paths = find_tsvs(sources)
    entries: Dict[str, _Entry] = {}
    for path in paths:
        n = _read_tsv(path, entries)
        log.info("read %d rows from %s", n, path)
    if not entries:
        raise ManifestError(f"no tracks in {', '.join(paths)}.")

    root = os.path.abspath(audio_root)
    kept = [e for e in entries.values() if min_duration is None or e.duration >= min_duration]
    if min_duration is not None:
        log.info("left out %d tracks shorter than %.1f s", len(entries) - len(kept), min_duration)
    if not kept:
        raise ManifestError(f"all {len(entries)} tracks are shorter than min_duration={min_duration} s.")

    tracks = []
    for e in kept:
        rel = e.rel_path
        if low_quality and rel.endswith(".mp3") and not rel.endswith(".low.mp3"):
            rel = rel[: -len(".mp3")] + ".low.mp3"
        tracks.append(Track(path=os.path.normpath(os.path.join(root, rel)), track_id=e.track_id,
                            labels={c: tuple(sorted(e.labels[c])) for c in TAG_COLUMNS}, tempo=None))

    if out_csv is not None:
        write_manifest(tracks, out_csv, tag_columns=TAG_COLUMNS)
        _write_artists([entries[t.track_id] for t in tracks], artists_path(out_csv))
    return tracks


def artists_path(manifest_csv: str) -> str:
    """``dir/manifest.csv`` -> ``dir/manifest.artists.csv``."""
    stem, _ = os.path.splitext(manifest_csv)
    return stem + ".artists.csv"


def _write_artists(entries: Sequence[_Entry], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["track_id", "artist_id", "album_id"])
        for e in entries:
            writer.writerow([e.track_id, e.artist_id, e.album_id])
    os.replace(tmp, path)


def read_artists(path: str) -> Dict[str, Tuple[str, str]]:
    """Read an ``.artists.csv`` side file: ``{track_id: (artist_id, album_id)}``."""
    if not os.path.isfile(path):
        raise ManifestError(f"artist file {path} does not exist; `dml import-jamendo` writes it next to the manifest.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"track_id", "artist_id", "album_id"} <= set(reader.fieldnames):
            raise ManifestError(f"{path}: expected columns track_id, artist_id, album_id; found {reader.fieldnames}.")
        return {row["track_id"]: (row["artist_id"], row["album_id"]) for row in reader}
