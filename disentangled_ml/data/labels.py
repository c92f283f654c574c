"""Label tables: a prepared collection's labels as dense arrays the TF graph can gather from.

Similarity rules (docs/design.md):

* tag conditions (genre, mood, instrument, any extra column): two tracks are
  similar when they share at least one label, dissimilar when they share none;
* ``tempo``: similar when their BPM differ by at most ``tempo_positive_bpm``,
  dissimilar when they differ by more than ``tempo_negative_bpm`` (the gap
  between the two thresholds is never used, so a triplet's order is never ambiguous);
* a track whose label for a condition is unknown is never used for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from disentangled_ml.config import Config
from disentangled_ml.data.manifest import Track

TEMPO = "tempo"
#: Width of the tempo classes used for class-balanced sampling (BPM).
TEMPO_BIN_BPM = 10.0
TEMPO_MAX_BPM = 400.0


class LabelError(ValueError):
    """Labels cannot support training; the message names the condition and what to do."""


@dataclass(frozen=True)
class LabelTables:
    """Dense labels of ``N`` tracks for the conditions of a config.

    Attributes:
        conditions: condition names, in embedding-slice order.
        vocab: {tag condition: tuple of class names}.
        classes: one bool matrix per condition, [N, K_s]: track n carries class k.
            For tempo the classes are ``TEMPO_BIN_BPM``-wide BPM bins (used only
            for class-balanced sampling; similarity uses the BPM values).
        tempo: float32 [N] BPM, NaN where unknown.
        track_ids: the N track ids, in table order.
    """

    conditions: Tuple[str, ...]
    vocab: Dict[str, Tuple[str, ...]]
    classes: Tuple[np.ndarray, ...]
    tempo: np.ndarray
    track_ids: Tuple[str, ...]

    @property
    def known(self) -> np.ndarray:
        """bool [N, C]: the track's label for the condition is known."""
        return np.stack([m.any(axis=1) for m in self.classes], axis=1)

    @classmethod
    def from_tracks(cls, tracks: Sequence[Track], config: Config) -> "LabelTables":
        conditions = config.conditions.names
        n = len(tracks)
        vocab: Dict[str, Tuple[str, ...]] = {}
        classes: List[np.ndarray] = []
        tempo = np.array([np.nan if t.tempo is None else t.tempo for t in tracks], dtype=np.float32)
        for name in conditions:
            if name == TEMPO:
                n_bins = int(TEMPO_MAX_BPM // TEMPO_BIN_BPM)
                m = np.zeros((n, n_bins), dtype=bool)
                ok = np.isfinite(tempo)
                bins = np.clip((tempo[ok] // TEMPO_BIN_BPM).astype(int), 0, n_bins - 1)
                m[np.nonzero(ok)[0], bins] = True
            else:
                if not any(name in t.labels for t in tracks):
                    raise LabelError(
                        f"condition {name!r} has no column in the manifest; add a {name!r} column "
                        f"or remove it from config conditions.names {list(conditions)}.")
                names = tuple(sorted({label for t in tracks for label in t.labels.get(name, ())}))
                index = {label: k for k, label in enumerate(names)}
                m = np.zeros((n, len(names)), dtype=bool)
                for row, t in enumerate(tracks):
                    for label in t.labels.get(name, ()):
                        m[row, index[label]] = True
                vocab[name] = names
            classes.append(m)
        return cls(conditions=tuple(conditions), vocab=vocab, classes=tuple(classes), tempo=tempo,
                   track_ids=tuple(t.track_id for t in tracks))

    def usable_conditions(self, rows: np.ndarray | None = None) -> Dict[str, bool]:
        """{condition: at least one valid (anchor, positive, negative) exists among ``rows``}."""
        rows = np.arange(len(self.track_ids)) if rows is None else np.asarray(rows)
        out = {}
        for c, name in enumerate(self.conditions):
            m = self.classes[c][rows]
            known = m.any(axis=1)
            if name == TEMPO:
                out[name] = bool(known.sum() >= 3)
            else:
                per_class = m[known].sum(axis=0)
                out[name] = bool((per_class >= 2).any() and (per_class < known.sum()).any())
        return out
