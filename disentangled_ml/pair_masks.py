"""Which crops may pair as positive or negative: the similarity rules, as masks.

The rules live between the two places that use them. The sampler
(:func:`disentangled_ml.data.mining.mine_triplets`) draws triplets from a pool with
:func:`similarity_masks`; in-batch mining (``data.mining = "in_batch_*"``) pairs every
crop of a batch with every other with :func:`batch_pair_masks`, which the trainer hands
to the loss (:mod:`disentangled_ml.losses`). Neither side imports the other: the crop
labels (``crop_*``, :data:`ROLES` order) are the contract, written by
:func:`disentangled_ml.data.mining.crop_labels` and read here.

Condition ids: ``0 .. C-1`` are the config's conditions, ``C`` is the track condition
(positive = another crop of the anchor's own track, overlapping it by at most
``data.max_track_overlap``; negative = another track).
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import tensorflow as tf

from disentangled_ml.config import Config
from disentangled_ml.data.labels import TEMPO

__all__ = ["ROLES", "similarity_masks", "track_min_shift", "missing_crop_labels", "flatten_roles",
           "batch_pair_masks"]

#: Roles of the three crops of a triplet, in the order of the ``crop_*`` label columns.
ROLES = ("anchor", "positive", "negative")


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


def track_min_shift(config: Config) -> int:
    """Smallest start-to-start distance, in mel frames, of two crops of one track that
    overlap by at most ``data.max_track_overlap``."""
    return int(math.ceil((1.0 - config.data.max_track_overlap) * config.frontend.num_frames))


def missing_crop_labels(batch, config: Config) -> list:
    """The ``crop_*`` keys that in-batch mining needs and ``batch`` lacks (``[]`` when complete)."""
    keys = ("crop_track", "crop_excerpt", "crop_frame", "crop_tempo",
            *(f"crop_classes_{n}" for n in config.conditions.names))
    return [k for k in keys if k not in batch]


def flatten_roles(v) -> tf.Tensor:
    """A crop label ``[B, 3, ...]`` as ``[3B, ...]``, role-major (crop ``r * B + b`` is role
    ``ROLES[r]`` of triplet ``b``): the order in which the model stacks anchors, positives,
    negatives."""
    v = tf.convert_to_tensor(v)
    perm = [1, 0] + list(range(2, v.shape.rank))
    t = tf.transpose(v, perm)
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))


def batch_pair_masks(labels: Dict[str, tf.Tensor], config: Config):
    """Valid positive and negative pairs among all crops of a batch, for in-batch mining.

    The same rules as :func:`disentangled_ml.data.mining.mine_triplets`, applied to
    every pair of the ``N = 3B`` crops of a batch of ``B`` triplets (crop ``r * B + b``
    is role ``ROLES[r]`` of triplet ``b``: the order in which the model stacks anchors,
    positives, negatives):

    * condition ``s``: :func:`similarity_masks` (never two crops of one track);
    * track (last row): positive = a crop of the *same excerpt* starting at least
      :func:`track_min_shift` frames away (so the overlap is at most
      ``data.max_track_overlap``; crops of one track from two different excerpts have an
      unknown overlap and are never paired), negative = any crop of another track.

    Args:
        labels: the ``crop_*`` entries of a pipeline batch
            (:func:`disentangled_ml.data.mining.crop_labels`), ``[B, 3, ...]``.
        config: the Config.
    Returns:
        (pos, neg): bool ``[C + 1, N, N]``.
    """
    names = config.conditions.names
    missing = missing_crop_labels(labels, config)
    if missing:
        raise ValueError(f"in-batch mining needs the crop labels of the training pipeline; the batch lacks {missing}. "
                         "Train on `training_dataset` batches, or set data.mining to 'random'.")
    track = flatten_roles(labels["crop_track"])
    excerpt = flatten_roles(labels["crop_excerpt"])
    frame = flatten_roles(labels["crop_frame"])
    classes = [tf.cast(flatten_roles(labels[f"crop_classes_{n}"]), tf.bool) for n in names]
    pos, neg = similarity_masks(names, classes, flatten_roles(labels["crop_tempo"]), track, config)
    far = tf.abs(frame[:, None] - frame[None, :]) >= track_min_shift(config)
    track_pos = tf.logical_and(tf.equal(excerpt[:, None], excerpt[None, :]), far)
    track_neg = tf.not_equal(track[:, None], track[None, :])
    return tf.concat([pos, track_pos[None]], axis=0), tf.concat([neg, track_neg[None]], axis=0)
