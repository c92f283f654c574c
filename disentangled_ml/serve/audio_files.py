"""Which audio files ``dml serve`` may send: the catalogue's own, under its audio root, and nothing else.

A catalogue (``dml embed``) lists each track's file in ``tracks.csv``. The server gives the page
a URL per track, ``/audio/<path relative to the audio root>``, and answers a request for such a
URL only when all of these hold:

* the path, joined to the root and normalised, is one of the catalogue's track files (so ``..``,
  an absolute path, or any file the catalogue does not list, is refused);
* the file's real path (symlinks resolved) lies inside the real root (so a symlink that leads out
  of the collection is refused, even when the catalogue lists it);
* it is a regular file that still exists.

Everything else is "not found" (HTTP 404), with no hint of what exists outside.

The *audio root* is the folder ``dml embed`` read (``catalogue.source`` in ``config.json``) or, for
a manifest, the deepest folder that holds every track file.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence
from urllib.parse import quote

#: Content types of the formats the decoders accept (disentangled_ml.audio_io.SUPPORTED_EXTENSIONS).
MEDIA_TYPES: Dict[str, str] = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}


def audio_root(track_paths: Sequence[str], source: Optional[str]) -> Optional[str]:
    """The folder the catalogue's audio files are served from (absolute, not resolved).

    Args:
        track_paths: the ``path`` column of ``tracks.csv``.
        source: ``catalogue.source`` of the catalogue's ``config.json`` (a folder or a manifest), if recorded.

    Returns:
        ``source`` when it is a folder; otherwise the deepest common folder of the track files;
        None for a catalogue without tracks.
    """
    if source and os.path.isdir(source):
        return os.path.abspath(source)
    if not track_paths:
        return None
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in track_paths])


class AudioFiles:
    """The catalogue's track files, addressed by their path relative to the audio root.

    Args:
        track_paths: the ``path`` column of ``tracks.csv``, one per track, in catalogue order.
        source: ``catalogue.source`` of ``config.json`` (None if absent).
    """

    def __init__(self, track_paths: Sequence[str], source: Optional[str]) -> None:
        self.root = audio_root(track_paths, source)
        self._real_root = os.path.realpath(self.root) if self.root else None
        # lexical (abspath, never resolved) -> catalogue index; resolving 100,000 paths at start-up would cost
        # a second of stat calls, so symlinks are resolved per request instead (resolve()).
        self._index_of: Dict[str, int] = {}
        self._relative: List[Optional[str]] = []
        for i, p in enumerate(track_paths):
            path = os.path.abspath(p)
            rel = os.path.relpath(path, self.root) if self.root else None
            if rel is None or rel == os.pardir or rel.startswith(os.pardir + os.sep):
                self._relative.append(None)  # outside the root (a folder catalogue whose rows were edited)
                continue
            self._index_of.setdefault(path, i)
            self._relative.append(rel.replace(os.sep, "/"))

    def url(self, index: int) -> Optional[str]:
        """The URL path of track ``index``'s file (``/audio/...``, percent-encoded), or None when :meth:`resolve`
        would refuse it (a symlink out of the root, a file gone), so that the page offers no dead player."""
        rel = self._relative[index]
        return None if rel is None or self.resolve(rel) is None else "/audio/" + quote(rel)

    def resolve(self, relative: str) -> Optional[str]:
        """The real path of the file to send for the URL path ``relative`` (already percent-decoded), or None.

        None for anything but a catalogue track file under the root whose real path stays under the real root.
        """
        if self.root is None or not relative or "\x00" in relative or os.path.isabs(relative):
            return None
        path = os.path.normpath(os.path.join(self.root, relative))
        if path not in self._index_of:
            return None
        real = os.path.realpath(path)
        if os.path.commonpath([real, self._real_root]) != self._real_root or not os.path.isfile(real):
            return None
        return real

    @staticmethod
    def media_type(path: str) -> str:
        """``audio/...`` for a track file (by its extension)."""
        return MEDIA_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")

