"""Confounded evaluation triplets: a second fixed set per label condition that tests disentanglement.

On random triplets an embedding that lumps timbre, style and tempo together scores
well above chance, because a random positive often shares other labels with the anchor
too. A *confounded* triplet of condition ``s`` takes that help away:

* the **positive** is similar to the anchor in ``s`` and shares as **few** of the anchor's
  *other* labels as the split allows;
* the **negative** is dissimilar in ``s`` and shares as **many** of the other labels as
  the split allows.

"Other labels" are the config's other conditions (``conditions.names`` minus ``s``):
for ``mood`` they are genre, instrument and tempo; for ``tempo`` they are the tag
conditions. Similarity follows the training rules
(:func:`disentangled_ml.pair_masks.similarity_masks`): a tag condition is *shared* when
the two tracks have a label in common and *differs* when they have none; tempo is shared
within ``conditions.tempo_positive_bpm`` and differs beyond
``conditions.tempo_negative_bpm`` (the gap between is neither); an unknown label is
neither. Among candidates that share equally few (positive) or equally many (negative)
other labels, the one that *differs* in more (positive) or fewer (negative) of them is
preferred, and any tie left is broken at random.

Everything else is as in :mod:`disentangled_ml.data.eval_triplets`:
``data.eval_triplets_per_condition`` triplets per condition, anchors drawn (with
replacement) among the tracks that can anchor one, class-balanced when
``data.class_balanced``; every crop starts uniformly anywhere in its track; the set is
a pure function of the split's labels, the config and the seed (the split's eval seed,
:func:`eval_seed`). A condition whose labels allow no triplet (no track with both a
positive and a negative) is left out with a warning, and :func:`confoundedness`
reports 0 for it.

Pure numpy; the file is ``RUN_DIR/<split>_confounded_triplets.csv``
(:meth:`~disentangled_ml.run_directory.RunDirectory.confounded_triplets_path`), with the columns of the random set plus
``positive_shared`` and ``negative_shared`` (how many of the anchor's other labels each
shares), so it can be read with :func:`~disentangled_ml.data.eval_triplets.read_eval_triplets`.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.config import Config
from disentangled_ml.data.eval_triplets import COLUMNS, ROLES, track_num_frames
from disentangled_ml.data.labels import TEMPO, LabelTables
from disentangled_ml.data.manifest import Track

log = logging.getLogger(__name__)

__all__ = ["CONFOUNDED_COLUMNS", "EVAL_SEED_OFFSETS", "eval_seed", "pair_relations",
           "shared_other_labels", "build_confounded_triplets", "write_confounded_triplets", "confoundedness"]

#: The CSV's columns: those of the random evaluation triplets, then the confoundedness of each row.
CONFOUNDED_COLUMNS = COLUMNS + ["positive_shared", "negative_shared"]
#: ``data.seed`` + this seeds a split's fixed triplets (as ``training.prepare_run`` does for the random set).
EVAL_SEED_OFFSETS = {"validation": 1, "test": 2}
_CHUNK = 256  # anchors whose pair relations to the whole split are held at once


def eval_seed(config: Config, split: str) -> int:
    """The seed of a split's fixed evaluation triplets: ``data.seed + 1`` (validation) or ``+ 2`` (test)."""
    return int(config.data.seed) + EVAL_SEED_OFFSETS[split]


def pair_relations(tables: LabelTables, condition: str, config: Config, a: np.ndarray,
                   b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Which table rows are similar / dissimilar in ``condition`` (the training rules).

    Args:
        tables: the label tables.
        condition: a name in ``tables.conditions``.
        config: ``conditions.tempo_positive_bpm`` and ``tempo_negative_bpm``.
        a, b: int table rows, ``[A]`` and ``[B]``; every ``a`` against every ``b``.

    Returns:
        ``(similar, dissimilar)``: bool ``[A, B]``; both False where either label is
        unknown, for the gap between the tempo thresholds, and where ``a == b``.
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    c = tables.conditions.index(condition)
    m = tables.classes[c]
    known = m.any(axis=1)
    ok = known[a][:, None] & known[b][None, :] & (a[:, None] != b[None, :])
    if condition == TEMPO:
        bpm = tables.tempo.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(bpm[a][:, None] - bpm[b][None, :])  # NaN compares False below
            similar = diff <= config.conditions.tempo_positive_bpm
            dissimilar = diff > config.conditions.tempo_negative_bpm
    else:
        mf = m.astype(np.float32)
        similar = (mf[a] @ mf[b].T) > 0.5
        dissimilar = ~similar
    return similar & ok, dissimilar & ok


def _pairwise(tables: LabelTables, condition: str, config: Config, a: np.ndarray,
              b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`pair_relations` of the pairs ``(a[i], b[i])``: bool ``[N]`` each."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    m = tables.classes[tables.conditions.index(condition)]
    known = m.any(axis=1)
    ok = known[a] & known[b] & (a != b)
    if condition == TEMPO:
        bpm = tables.tempo.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(bpm[a] - bpm[b])
            similar = diff <= config.conditions.tempo_positive_bpm
            dissimilar = diff > config.conditions.tempo_negative_bpm
    else:
        similar = (m[a] & m[b]).any(axis=1)
        dissimilar = ~similar
    return similar & ok, dissimilar & ok


def _others(config: Config, condition: str) -> List[str]:
    return [n for n in config.conditions.names if n != condition]


def shared_other_labels(tables: LabelTables, condition: str, config: Config, a: Sequence[int],
                        b: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """How many of the *other* conditions the pairs ``(a[i], b[i])`` share, and in how many they differ.

    Returns:
        ``(shared, differ)``: int ``[N]`` each, between 0 and the number of other conditions.
    """
    shared = np.zeros(len(a), np.int64)
    differ = np.zeros(len(a), np.int64)
    for other in _others(config, condition):
        s, d = _pairwise(tables, other, config, np.asarray(a), np.asarray(b))
        shared += s
        differ += d
    return shared, differ


def _valid_anchors(tables: LabelTables, condition: str, config: Config, rows: np.ndarray) -> np.ndarray:
    """bool ``[P]``: the row has at least one positive and one negative among ``rows``."""
    ok = np.zeros(rows.size, bool)
    for lo in range(0, rows.size, _CHUNK):
        sim, dis = pair_relations(tables, condition, config, rows[lo:lo + _CHUNK], rows)
        ok[lo:lo + _CHUNK] = sim.any(axis=1) & dis.any(axis=1)
    return ok


def _anchor_probs(valid: np.ndarray, classes: np.ndarray, balanced: bool) -> np.ndarray:
    """Draw probabilities ``[P]`` over valid anchors; class-balanced as the miner's
    (``data.mining._balanced_anchor_logits``): each class present is equally likely, a
    multi-label track weighs the mean of 1/count over its labels."""
    w = valid.astype(np.float64)
    if balanced:
        m = (classes & valid[:, None]).astype(np.float64)
        counts = m.sum(axis=0)
        inv = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
        w = (m * inv[None, :]).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return w / w.sum()


def _pick(candidates: np.ndarray, key: np.ndarray, u: float) -> int:
    """The index of a candidate with the smallest ``key``, ties resolved by the uniform ``u``."""
    best = np.flatnonzero(candidates & (key == key[candidates].min()))
    return int(best[min(int(u * best.size), best.size - 1)])


def _starts(frames: np.ndarray, u: np.ndarray, config: Config) -> np.ndarray:
    """Crop starts in samples, uniform over the track, as ``mining.mine_triplets`` draws them."""
    high = np.maximum(frames - config.frontend.num_frames + 1, 1)  # starts 0 .. high - 1
    return np.minimum((u * high).astype(np.int64), high - 1) * config.frontend.hop_length


def build_confounded_triplets(tracks: Sequence[Track], tables: LabelTables, rows: Sequence[int], config: Config,
                              seed: int, per_condition: Optional[int] = None) -> List[Dict[str, object]]:
    """Draw ``per_condition`` confounded triplets for every label condition (module docstring).

    Args:
        tracks: the collection (``tracks[i]`` is table row ``i``); ``info`` gives each
            track's length for the crop starts.
        tables: its label tables.
        rows: the split's table rows (the pool).
        config: conditions, tempo thresholds, ``data.class_balanced``, the frontend.
        seed: the split's seed (:func:`eval_seed`); each condition draws from its own
            stream (seeded by the seed and the condition's name).
        per_condition: default ``data.eval_triplets_per_condition``.

    Returns:
        CSV rows (:data:`CONFOUNDED_COLUMNS`): ``condition``, each role's track id and
        ``*_start`` (a sample at ``frontend.sample_rate``), ``positive_shared`` and
        ``negative_shared``. Conditions with no valid triplet are missing.
    """
    per_condition = per_condition or config.data.eval_triplets_per_condition
    rows = np.asarray(rows, np.int64)
    frames = np.array([track_num_frames(tracks[r], config) for r in rows], np.int64)
    n_other = len(config.conditions.names) - 1
    out: List[Dict[str, object]] = []
    for name in config.conditions.names:
        valid = _valid_anchors(tables, name, config, rows) if rows.size else np.zeros(0, bool)
        if not valid.any():
            log.warning("confounded evaluation triplets: no valid %r triplet can be formed in this split; "
                        "the condition is left out.", name)
            continue
        rng = np.random.default_rng([int(seed) % 2 ** 32, zlib.crc32(name.encode("utf-8"))])
        probs = _anchor_probs(valid, tables.classes[tables.conditions.index(name)][rows],
                              config.data.class_balanced)
        anchors = rng.choice(rows.size, size=per_condition, p=probs)
        u = rng.random((per_condition, 5))  # positive tie, negative tie, three crop starts
        pos = np.zeros(per_condition, np.int64)
        neg = np.zeros(per_condition, np.int64)
        pos_shared = np.zeros(per_condition, np.int64)
        neg_shared = np.zeros(per_condition, np.int64)
        uniq = np.unique(anchors)
        for lo in range(0, uniq.size, _CHUNK):  # the relations of a chunk of anchors to the whole pool
            chunk = uniq[lo:lo + _CHUNK]
            sim, dis = pair_relations(tables, name, config, rows[chunk], rows)
            shared = np.zeros(sim.shape, np.int32)
            differ = np.zeros(sim.shape, np.int32)
            for other in _others(config, name):
                s, d = pair_relations(tables, other, config, rows[chunk], rows)
                shared += s
                differ += d
            # lexicographic keys, smallest wins: positive (fewest shared, then most differing),
            # negative (most shared, then fewest differing)
            pos_key = shared * (n_other + 1) - differ
            neg_key = differ - shared * (n_other + 1)
            where = {int(a): i for i, a in enumerate(chunk)}
            for t in np.flatnonzero(np.isin(anchors, chunk)):
                i = where[int(anchors[t])]
                pos[t] = _pick(sim[i], pos_key[i], u[t, 0])
                neg[t] = _pick(dis[i], neg_key[i], u[t, 1])
                pos_shared[t], neg_shared[t] = shared[i, pos[t]], shared[i, neg[t]]
        idx = {"anchor": anchors, "positive": pos, "negative": neg}
        starts = {r: _starts(frames[idx[r]], u[:, 2 + k], config) for k, r in enumerate(ROLES)}
        for t in range(per_condition):
            row: Dict[str, object] = {"condition": name}
            for r in ROLES:
                row[r] = tracks[rows[idx[r][t]]].track_id
                row[f"{r}_start"] = int(starts[r][t])
            row["positive_shared"] = int(pos_shared[t])
            row["negative_shared"] = int(neg_shared[t])
            out.append(row)
    return out


def write_confounded_triplets(triplets: Sequence[Mapping[str, object]], path: str) -> None:
    """Write the CSV (:data:`CONFOUNDED_COLUMNS`), atomically: an interrupted write leaves no half file
    for a later evaluation to reuse."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CONFOUNDED_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(triplets)
    os.replace(tmp, path)


def _mean(x: np.ndarray) -> Optional[float]:
    return float(x.mean()) if x.size else None


def confoundedness(triplets: Sequence[Mapping[str, Any]], tables: LabelTables, config: Config,
                   rows: Optional[Sequence[int]] = None,
                   random_triplets: Optional[Sequence[Mapping[str, Any]]] = None) -> Dict[str, Dict[str, Any]]:
    """How many triplets each label condition has and how confounded they are, from the labels.

    Args:
        triplets: CSV rows (``condition``, ``anchor``, ``positive``, ``negative`` track ids);
            rows of other conditions (``track``) are ignored.
        tables: the label tables (the triplets' track ids must be in them).
        config: the conditions and the tempo rule.
        rows: the split's table rows; adds how many tracks are labelled and how many
            could anchor a confounded triplet.
        random_triplets: the random set, for comparison (its means are added as
            ``random_positive_shared_mean`` / ``random_negative_shared_mean``).

    Returns:
        ``{condition: {"triplets": n, "other_labels": [names], "positive_shared_mean",
        "negative_shared_mean": float | None (None for n = 0), "positive_shared_counts",
        "negative_shared_counts": [n triplets sharing 0, 1, ... other labels],
        ("labelled_tracks", "anchors": int), ("random_positive_shared_mean",
        "random_negative_shared_mean")}}`` for every condition of ``config``.
    """
    row_of = {tid: i for i, tid in enumerate(tables.track_ids)}
    out: Dict[str, Dict[str, Any]] = {}

    def shares(ts, name):
        if not ts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        a, p, n = (np.array([row_of[str(t[r])] for t in ts]) for r in ROLES)
        return shared_other_labels(tables, name, config, a, p)[0], shared_other_labels(tables, name, config, a, n)[0]

    for name in config.conditions.names:
        others = _others(config, name)
        ps, ns = shares([t for t in triplets if str(t["condition"]) == name], name)
        entry: Dict[str, Any] = {
            "triplets": int(ps.size), "other_labels": others,
            "positive_shared_mean": _mean(ps), "negative_shared_mean": _mean(ns),
            "positive_shared_counts": np.bincount(ps, minlength=len(others) + 1).tolist(),
            "negative_shared_counts": np.bincount(ns, minlength=len(others) + 1).tolist(),
        }
        if rows is not None:
            r = np.asarray(rows, np.int64)
            entry["labelled_tracks"] = int(tables.classes[tables.conditions.index(name)][r].any(axis=1).sum())
            entry["anchors"] = int(_valid_anchors(tables, name, config, r).sum()) if r.size else 0
        if random_triplets is not None:
            rp, rn = shares([t for t in random_triplets if str(t["condition"]) == name], name)
            entry["random_positive_shared_mean"] = _mean(rp)
            entry["random_negative_shared_mean"] = _mean(rn)
        out[name] = entry
    return out
