"""Triplet mining inside a pool of tracks, in TensorFlow ops (no Python per element).

One function, :func:`mine_triplets`, serves both the training pipeline (a pool of
a few hundred decoded excerpts, refreshed as the collection streams by) and the
fixed evaluation sets (the pool is a whole split). It returns *indices*: which
pool member plays anchor, positive and negative, and at which mel frame each 3 s
crop starts. The caller gathers the crops.

Condition ids: ``0 .. C-1`` are the config's conditions, ``C`` is the track
condition (regularisation triplets: positive = another crop of the anchor's own
track, overlapping it by at most ``max_track_overlap``; negative = another track).

The similarity rules themselves (:func:`~disentangled_ml.pair_masks.similarity_masks`)
are in :mod:`disentangled_ml.pair_masks`, which in-batch mining shares from the loss
side; :func:`crop_labels` writes the per-crop labels it reads.
"""

from __future__ import annotations

from typing import Dict, Sequence

import tensorflow as tf

from disentangled_ml.config import Config
from disentangled_ml.pair_masks import ROLES, similarity_masks, track_min_shift

_NEG_INF = -1e9


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


def condition_mix(config: Config) -> list:
    """Default mix [C + 1]: conditions share ``1 - track_triplet_ratio`` equally; track gets the rest."""
    n = len(config.conditions.names)
    r = config.data.track_triplet_ratio
    return [(1.0 - r) / n] * n + [r]
