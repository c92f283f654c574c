"""Train / validation / test split by track.

A track's split is decided by a seeded hash of its id, not by its row: adding
tracks to a collection leaves the other tracks' splits (almost) where they were,
so a grown collection does not leak old test tracks into training.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.data.manifest import Track

SPLITS = ("train", "validation", "test")


def _key(track_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{track_id}".encode()).hexdigest()


def split_tracks(tracks: Sequence[Track], config: Config) -> Dict[str, List[int]]:
    """{split name: sorted row indices}, sizes from ``data.split_fractions``.

    Tracks are ordered by ``sha1(split_seed:track_id)`` and cut into consecutive
    runs, so sizes are exact and every non-zero fraction gets at least one track
    when there are enough tracks.
    """
    n = len(tracks)
    order = sorted(range(n), key=lambda r: _key(tracks[r].track_id, config.data.split_seed))
    fr = config.data.split_fractions
    n_val = int(round(fr[1] * n)) if fr[1] == 0 else max(1, int(round(fr[1] * n)))
    n_test = int(round(fr[2] * n)) if fr[2] == 0 else max(1, int(round(fr[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 2:
        raise ConfigError(f"{n} tracks are too few for data.split_fractions={list(fr)}: the training split "
                          f"would hold {n_train}; add tracks or give training a larger fraction.")
    cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {k: sorted(v) for k, v in cuts.items()}
