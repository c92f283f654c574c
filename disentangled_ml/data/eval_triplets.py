"""Fixed evaluation triplets for the validation and test splits.

They are drawn once with :func:`disentangled_ml.data.mining.mine_triplets` (the
same rules as training; the pool is the whole split and crops may start anywhere
in a track), written to a CSV, and rebuilt identically from the same seed.

CSV columns: ``condition`` (a condition name or ``track``), then for each of
``anchor``, ``positive``, ``negative`` the track id and ``*_start``, the crop's
first sample at ``frontend.sample_rate``. A crop is ``frontend.segment_samples``
long. Anything that can cut a waveform (an export, a baseline) can score them.
"""

from __future__ import annotations

import csv
import logging
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from disentangled_ml.audio_io import load_audio
from disentangled_ml.config import TRACK_CONDITION, Config
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.mining import mine_triplets

log = logging.getLogger(__name__)

ROLES = ("anchor", "positive", "negative")
COLUMNS = ["condition"] + [c for r in ROLES for c in (r, f"{r}_start")]


def track_num_frames(track: Track, config: Config) -> int:
    """Mel frames available in a prepared track at the target rate (one frame of safety
    for the resampler's rounding)."""
    fe = config.frontend
    samples = int(track.info["num_frames"]) * fe.sample_rate // int(track.info["sample_rate"])
    return max(0, 1 + (samples - fe.n_fft) // fe.hop_length - 1)


def build_eval_triplets(tracks: Sequence[Track], tables: LabelTables, rows: Sequence[int], config: Config,
                        seed: int, per_condition: Optional[int] = None) -> List[Dict[str, object]]:
    """Draw ``per_condition`` triplets for every condition and for ``track``.

    A condition that no track of the split can support (too few labelled tracks)
    is left out with a warning rather than failing the run.
    """
    per_condition = per_condition or config.data.eval_triplets_per_condition
    rows = np.asarray(rows, np.int32)
    names = list(config.conditions.names) + [TRACK_CONDITION]
    hop = config.frontend.hop_length
    classes = [tf.constant(m[rows]) for m in tables.classes]
    frames = tf.constant([track_num_frames(tracks[r], config) for r in rows], tf.int32)
    out: List[Dict[str, object]] = []
    for c, name in enumerate(names):
        probs = np.zeros(len(names), np.float32)
        probs[c] = 1.0
        t = mine_triplets(tf.constant([seed, c]), classes, tf.constant(tables.tempo[rows]), tf.constant(rows),
                          frames, per_condition, tf.constant(probs), config)
        t = {k: v.numpy() for k, v in t.items()}
        if not t["valid"].all():
            log.warning("evaluation triplets: no valid %r triplet can be formed in this split; "
                        "the condition is left out of the evaluation.", name)
            continue
        for i in range(per_condition):
            row = {"condition": name}
            for r in ROLES:
                row[r] = tracks[rows[t[r][i]]].track_id
                row[f"{r}_start"] = int(t[f"{r}_frame"][i]) * hop
            out.append(row)
    return out


def write_eval_triplets(triplets: Sequence[Mapping[str, object]], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(triplets)


def read_eval_triplets(path: str) -> List[Dict[str, object]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for role in ROLES:
            r[f"{role}_start"] = int(r[f"{role}_start"])
    return rows


def load_split_audio(tracks: Sequence[Track], triplets: Sequence[Mapping[str, object]],
                     config: Config) -> Dict[str, np.ndarray]:
    """Decode every track the triplets use, once: {track_id: float32 [samples]}."""
    by_id = {t.track_id: t for t in tracks}
    needed = sorted({str(t[r]) for t in triplets for r in ROLES})
    return {tid: load_audio(by_id[tid].path, config.frontend.sample_rate) for tid in needed}


def waveform_crop(y: np.ndarray, start: int, segment_samples: int) -> np.ndarray:
    """``y[start:start + segment_samples]``, zero-padded past the track's end (the resampler's rounding)."""
    c = y[start:start + segment_samples]
    return c if c.size == segment_samples else np.pad(c, (0, segment_samples - c.size))


def iter_waveform_crops(triplets: Sequence[Mapping[str, object]], audio: Mapping[str, np.ndarray],
                        config: Config, batch_size: int = 64) -> Iterator[Dict[str, np.ndarray]]:
    """Batches of waveform crops: {"anchor"|"positive"|"negative": float32 [b, segment_samples], "condition": [b] str}.

    Crops past a track's end (the resampler's rounding) are zero-padded.
    """
    seg = config.frontend.segment_samples

    def crop(tid, start):
        return waveform_crop(audio[str(tid)], start, seg)

    for i in range(0, len(triplets), batch_size):
        chunk = triplets[i:i + batch_size]
        batch = {r: np.stack([crop(t[r], int(t[f"{r}_start"])) for t in chunk]).astype(np.float32) for r in ROLES}
        batch["condition"] = np.array([t["condition"] for t in chunk])
        yield batch


def distinct_segments(triplets: Sequence[Mapping[str, object]]) -> Tuple[List[Tuple[str, int]], Dict[str, np.ndarray]]:
    """The distinct crops the triplets use, and where each triplet's crops are among them.

    A crop is a ``(track_id, start)`` pair; the same pair in several triplets (or roles)
    is one crop, so it is embedded once.

    Returns:
        ``(segments, index)``: ``segments`` the distinct pairs in order of first use;
        ``index[role]`` int64 ``[len(triplets)]``, the row in ``segments`` of each
        triplet's anchor, positive and negative.
    """
    where: Dict[Tuple[str, int], int] = {}
    index = {r: np.zeros(len(triplets), np.int64) for r in ROLES}
    for i, t in enumerate(triplets):
        for r in ROLES:
            index[r][i] = where.setdefault((str(t[r]), int(t[f"{r}_start"])), len(where))
    return list(where), index


def iter_segment_crops(segments: Sequence[Tuple[str, int]], audio: Mapping[str, np.ndarray], config: Config,
                       batch_size: int = 64) -> Iterator[np.ndarray]:
    """Batches of the waveform crops of ``(track_id, start)`` pairs: float32 ``[b, segment_samples]``,
    zero-padded past a track's end like :func:`iter_waveform_crops`."""
    seg = config.frontend.segment_samples
    for i in range(0, len(segments), batch_size):
        yield np.stack([waveform_crop(audio[tid], start, seg)
                        for tid, start in segments[i:i + batch_size]]).astype(np.float32)
