"""Triplet mining inside a pool of tracks, in TensorFlow ops (no Python per element).

One function, :func:`mine_triplets`, serves both the training pipeline (a pool of
a few hundred decoded excerpts, refreshed as the collection streams by) and the
fixed evaluation sets (the pool is a whole split). It returns *indices*: which
pool member plays anchor, positive and negative, and at which mel frame each 3 s
crop starts. The caller gathers the crops.

Condition ids: ``0 .. C-1`` are the config's conditions, ``C`` is the track
condition (regularisation triplets: positive = another crop of the anchor's own
track, overlapping it by at most ``max_track_overlap``; negative = another track).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import tensorflow as tf

from disentangled_ml.config import Config
from disentangled_ml.data.labels import TEMPO

_NEG_INF = -1e9


def similarity_masks(conditions: Sequence[str], classes: Sequence[tf.Tensor], tempo: tf.Tensor,
                     track_index: tf.Tensor, config: Config):
    """Which pool members may serve as positive / negative for which anchor.

    Args:
        conditions: condition names (python), length C.
        classes: per condition, bool [P, K_s] class membership of the pool members.
        tempo: float32 [P] BPM (NaN = unknown).
        track_index: int [P] global track index (a pool may hold a track twice).
    Returns:
        (pos, neg): bool [C, P, P]; ``pos[s, i, j]``: j is a valid positive for
        anchor i in condition s. Never the same track as the anchor.
    """
    other = tf.not_equal(track_index[:, None], track_index[None, :])
    pos_list, neg_list = [], []
    for s, name in enumerate(conditions):
        m = tf.cast(classes[s], tf.float32)
        known = tf.reduce_any(classes[s], axis=1)
        both = tf.logical_and(known[:, None], known[None, :])
        if name == TEMPO:
            diff = tf.abs(tempo[:, None] - tempo[None, :])  # NaN compares False below
            similar = diff <= config.conditions.tempo_positive_bpm
            dissimilar = diff > config.conditions.tempo_negative_bpm
        else:
            shared = tf.matmul(m, m, transpose_b=True) > 0.5
            similar, dissimilar = shared, tf.logical_not(shared)
        pos_list.append(tf.logical_and(tf.logical_and(similar, both), other))
        neg_list.append(tf.logical_and(tf.logical_and(dissimilar, both), other))
    return tf.stack(pos_list), tf.stack(neg_list)


def _balanced_anchor_logits(valid: tf.Tensor, classes: tf.Tensor, balanced: bool) -> tf.Tensor:
    """log-weights [P] for drawing an anchor among ``valid`` ones.

    Class-balanced: each class present among valid anchors is equally likely
    (a multi-label track's weight is the mean of 1/count over its labels).
    """
    valid_f = tf.cast(valid, tf.float32)
    if balanced:
        m = tf.cast(classes, tf.float32) * valid_f[:, None]
        counts = tf.reduce_sum(m, axis=0)
        inv = tf.math.divide_no_nan(tf.ones_like(counts), counts)
        n_labels = tf.maximum(tf.reduce_sum(m, axis=1), 1.0)
        w = tf.reduce_sum(m * inv[None, :], axis=1) / n_labels
    else:
        w = valid_f
    return tf.where(w > 0, tf.math.log(tf.maximum(w, 1e-30)), _NEG_INF)


def mine_triplets(seed: tf.Tensor, classes: Sequence[tf.Tensor], tempo: tf.Tensor, track_index: tf.Tensor,
                  num_frames: tf.Tensor, num_triplets: int, condition_probs: tf.Tensor,
                  config: Config) -> Dict[str, tf.Tensor]:
    """Draw ``num_triplets`` triplets from a pool of ``P`` tracks.

    Args:
        seed: int [2] stateless seed; the result is a pure function of it and the pool.
        classes: per condition, bool [P, K_s] (see LabelTables.classes).
        tempo: float32 [P] BPM, NaN where unknown.
        track_index: int [P] global index of each pool member's track.
        num_frames: int [P] mel frames available in each member's audio.
        num_triplets: number of triplets to draw (python int).
        condition_probs: float32 [C + 1], the mix of conditions (last = track);
            conditions without a valid anchor in the pool are dropped from the mix.
        config: the Config (conditions, data.class_balanced, data.max_track_overlap,
            frontend.num_frames).
    Returns:
        dict of [num_triplets] tensors: ``condition`` (int32), ``anchor``,
        ``positive``, ``negative`` (int32 pool rows), ``anchor_frame``,
        ``positive_frame``, ``negative_frame`` (int32 crop starts, in mel frames),
        and ``valid`` (bool; False when the pool offered no condition at all).
    """
    conditions = config.conditions.names
    n_cond = len(conditions)
    seg = config.frontend.num_frames
    num_frames = tf.cast(num_frames, tf.int32)
    track_index = tf.cast(track_index, tf.int32)
    pool = tf.shape(track_index)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 9)

    pos, neg = similarity_masks(conditions, classes, tempo, track_index, config)
    # Track condition: the positive is the anchor's own pool row (another crop of it).
    # It needs room for two crops overlapping by at most max_track_overlap.
    min_shift = track_min_shift(config)
    long_enough = num_frames >= seg + min_shift
    eye = tf.eye(pool, dtype=tf.bool)
    other = tf.not_equal(track_index[:, None], track_index[None, :])
    pos = tf.concat([pos, tf.logical_and(eye, long_enough[:, None])[None]], axis=0)
    neg = tf.concat([neg, other[None]], axis=0)
    anchor_ok = tf.logical_and(tf.reduce_any(pos, axis=2), tf.reduce_any(neg, axis=2))  # [C+1, P]

    # Condition mix, restricted to conditions that have at least one valid anchor here.
    available = tf.reduce_any(anchor_ok, axis=1)
    probs = tf.where(available, tf.cast(condition_probs, tf.float32), 0.0)
    any_available = tf.reduce_sum(probs) > 0
    cond_logits = tf.where(probs > 0, tf.math.log(tf.maximum(probs, 1e-30)), _NEG_INF)
    condition = tf.random.stateless_categorical(cond_logits[None], num_triplets, seeds[0], dtype=tf.int32)[0]

    # Anchor log-weights per condition, [C+1, P].
    anchor_logits = [
        _balanced_anchor_logits(anchor_ok[s], classes[s], config.data.class_balanced) for s in range(n_cond)
    ]
    anchor_logits.append(tf.where(anchor_ok[n_cond], 0.0, _NEG_INF))
    anchor_logits = tf.stack(anchor_logits)
    anchor = tf.random.stateless_categorical(tf.gather(anchor_logits, condition), 1, seeds[1], dtype=tf.int32)[:, 0]

    def draw(mask, s):
        rows = tf.gather_nd(mask, tf.stack([condition, anchor], axis=1))  # [T, P]
        logits = tf.where(rows, 0.0, _NEG_INF)
        return tf.random.stateless_categorical(logits, 1, s, dtype=tf.int32)[:, 0]

    positive = draw(pos, seeds[2])
    negative = draw(neg, seeds[3])

    def uniform_start(rows, s):
        high = tf.gather(num_frames, rows) - seg + 1  # crop starts 0 .. high-1
        u = tf.random.stateless_uniform(tf.shape(rows), s)
        return tf.minimum(tf.cast(u * tf.cast(high, tf.float32), tf.int32), high - 1)

    anchor_frame = uniform_start(anchor, seeds[4])
    negative_frame = uniform_start(negative, seeds[5])
    # Track positives start at least min_shift frames from the anchor's crop: draw
    # from the union [0, a - shift] U [a + shift, last] by one uniform draw over its length.
    last = tf.gather(num_frames, anchor) - seg
    left = tf.maximum(anchor_frame - min_shift + 1, 0)  # starts 0 .. a-shift
    right = tf.maximum(last - (anchor_frame + min_shift) + 1, 0)  # starts a+shift .. last
    u = tf.random.stateless_uniform(tf.shape(anchor), seeds[6])
    k = tf.minimum(tf.cast(u * tf.cast(left + right, tf.float32), tf.int32), tf.maximum(left + right - 1, 0))
    track_frame = tf.where(k < left, k, anchor_frame + min_shift + (k - left))
    positive_frame = tf.where(condition == n_cond, track_frame, uniform_start(positive, seeds[7]))

    valid = tf.fill(tf.shape(condition), any_available)
    return {
        "condition": condition, "anchor": anchor, "positive": positive, "negative": negative,
        "anchor_frame": anchor_frame, "positive_frame": positive_frame, "negative_frame": negative_frame,
        "valid": valid,
    }


def track_min_shift(config: Config) -> int:
    """Smallest start-to-start distance, in mel frames, of two crops of one track that
    overlap by at most ``data.max_track_overlap``."""
    return int(math.ceil((1.0 - config.data.max_track_overlap) * config.frontend.num_frames))


#: Roles of the three crops of a triplet, in the order of the ``crop_*`` label columns.
ROLES = ("anchor", "positive", "negative")


def crop_labels(triplets: Dict[str, tf.Tensor], track_index: tf.Tensor, classes: Sequence[tf.Tensor],
                tempo: tf.Tensor, config: Config) -> Dict[str, tf.Tensor]:
    """What is known about each crop of mined triplets, for in-batch mining.

    Args:
        triplets: the output of :func:`mine_triplets` (pool rows and crop starts).
        track_index, classes, tempo: the pool's columns, as passed to :func:`mine_triplets`.
        config: the Config (condition names).
    Returns:
        dict of ``[T, 3, ...]`` tensors, the second axis in :data:`ROLES` order:
        ``crop_track`` (int32 global track index), ``crop_excerpt`` (int32 pool row:
        crops with the same value are cut from the same excerpt), ``crop_frame`` (int32
        crop start in the excerpt, mel frames), ``crop_tempo`` (float32 BPM, NaN unknown)
        and ``crop_classes_<condition>`` (bool ``[T, 3, K_s]``) for every condition.
    """
    rows = tf.stack([triplets[r] for r in ROLES], axis=1)  # [T, 3] pool rows
    out = {
        "crop_track": tf.gather(tf.cast(track_index, tf.int32), rows),
        "crop_excerpt": rows,
        "crop_frame": tf.stack([triplets[f"{r}_frame"] for r in ROLES], axis=1),
        "crop_tempo": tf.gather(tf.cast(tempo, tf.float32), rows),
    }
    for name, c in zip(config.conditions.names, classes):
        out[f"crop_classes_{name}"] = tf.gather(c, rows)
    return out


def missing_crop_labels(batch, config: Config) -> list:
    """The ``crop_*`` keys that in-batch mining needs and ``batch`` lacks (``[]`` when complete)."""
    keys = ("crop_track", "crop_excerpt", "crop_frame", "crop_tempo",
            *(f"crop_classes_{n}" for n in config.conditions.names))
    return [k for k in keys if k not in batch]


def batch_pair_masks(labels: Dict[str, tf.Tensor], config: Config):
    """Valid positive and negative pairs among all crops of a batch, for in-batch mining.

    The same rules as :func:`mine_triplets`, applied to every pair of the ``N = 3B``
    crops of a batch of ``B`` triplets (crop ``r * B + b`` is role ``ROLES[r]`` of
    triplet ``b``: the order in which the model stacks anchors, positives, negatives):

    * condition ``s``: :func:`similarity_masks` (never two crops of one track);
    * track (last row): positive = a crop of the *same excerpt* starting at least
      :func:`track_min_shift` frames away (so the overlap is at most
      ``data.max_track_overlap``; crops of one track from two different excerpts have an
      unknown overlap and are never paired), negative = any crop of another track.

    Args:
        labels: the ``crop_*`` entries of a pipeline batch (:func:`crop_labels`), ``[B, 3, ...]``.
        config: the Config.
    Returns:
        (pos, neg): bool ``[C + 1, N, N]``.
    """
    def flat(v):  # [B, 3, ...] -> [3B, ...], role-major
        v = tf.convert_to_tensor(v)
        perm = [1, 0] + list(range(2, v.shape.rank))
        t = tf.transpose(v, perm)
        return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))

    names = config.conditions.names
    missing = missing_crop_labels(labels, config)
    if missing:
        raise ValueError(f"in-batch mining needs the crop labels of the training pipeline; the batch lacks {missing}. "
                         "Train on `training_dataset` batches, or set data.mining to 'random'.")
    track = flat(labels["crop_track"])
    excerpt = flat(labels["crop_excerpt"])
    frame = flat(labels["crop_frame"])
    classes = [tf.cast(flat(labels[f"crop_classes_{n}"]), tf.bool) for n in names]
    pos, neg = similarity_masks(names, classes, flat(labels["crop_tempo"]), track, config)
    far = tf.abs(frame[:, None] - frame[None, :]) >= track_min_shift(config)
    track_pos = tf.logical_and(tf.equal(excerpt[:, None], excerpt[None, :]), far)
    track_neg = tf.not_equal(track[:, None], track[None, :])
    return tf.concat([pos, track_pos[None]], axis=0), tf.concat([neg, track_neg[None]], axis=0)


def condition_mix(config: Config) -> list:
    """Default mix [C + 1]: conditions share ``1 - track_triplet_ratio`` equally; track gets the rest."""
    n = len(config.conditions.names)
    r = config.data.track_triplet_ratio
    return [(1.0 - r) / n] * n + [r]
