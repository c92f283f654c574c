"""The training input pipeline: decode -> excerpt -> pool -> log-mel -> mine -> batch, all in tf.data.

Why pools: a triplet needs random access to tracks by label, but a real collection
does not fit in memory. The pipeline streams tracks in a shuffled order, keeps one
random excerpt (``data.excerpt_seconds``) of each, groups ``data.pool_size`` of them
into a pool and mines ``data.triplets_per_track`` triplets per track *inside* the pool
(:func:`disentangled_ml.data.mining.mine_triplets`). The next pool brings other
tracks and other excerpts, so over epochs every pair of tracks can meet.

Why mel on the excerpt: the log-mel of an excerpt is computed once per pool, and
every 3 s crop is a slice of it at a frame boundary. With ``center=False`` framing
that slice is bit-for-bit the log-mel of the waveform crop starting at
``frame * hop_length`` samples, and it saves the STFT of every crop (3 crops per
triplet, ``triplets_per_track`` triplets per excerpt).

Element format (what :class:`disentangled_ml.models.trainer.TripletModel` consumes)::

    {"anchor": float32 [B, F, M], "positive": float32 [B, F, M],
     "negative": float32 [B, F, M], "condition": int32 [B]}

with F = ``frontend.num_frames`` and M = ``frontend.n_mels``; condition ``C`` (the
number of conditions) marks a track triplet.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from disentangled_ml.audio_io import FORMAT_CODES, decode_audio_tf
from disentangled_ml.config import Config, ConfigError
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.mining import condition_mix, mine_triplets
from disentangled_ml.features import log_mel, mel_filterbank

log = logging.getLogger(__name__)

INT16_SCALE = 1.0 / 32768.0


def _track_columns(tracks: Sequence[Track]):
    """Decoder inputs of prepared tracks: path, format index, file rate."""
    missing = [t.path for t in tracks if not t.info.get("format_code")]
    if missing:
        raise ConfigError(f"{len(missing)} track(s) have no decoder information (e.g. {missing[0]}); "
                          "train on the manifest.csv written by `dml prepare`, not on the raw manifest.")
    paths = [t.path for t in tracks]
    fmt = [FORMAT_CODES.index(t.info["format_code"]) for t in tracks]
    rate = [int(t.info["sample_rate"]) for t in tracks]
    return paths, np.asarray(fmt, np.int32), np.asarray(rate, np.int64)


class DecodeStats:
    """Counts of files the pipeline tried to decode and decoded, as TF variables.

    A file that fails to decode at train time (changed or removed since ``prepare``)
    is skipped by ``ignore_errors`` and shows up as ``skipped = attempted - decoded``.
    With the memory cache, each file is decoded once, in the first pass.
    """

    def __init__(self) -> None:
        self.attempted = tf.Variable(0, dtype=tf.int64, trainable=False, name="decode_attempted")
        self.decoded = tf.Variable(0, dtype=tf.int64, trainable=False, name="decode_ok")

    @property
    def skipped(self) -> int:
        return int(self.attempted.numpy() - self.decoded.numpy())

    def as_dict(self) -> Dict[str, int]:
        return {"attempted": int(self.attempted.numpy()), "decoded": int(self.decoded.numpy()),
                "skipped": self.skipped}


def decoded_tracks(tracks: Sequence[Track], rows: Sequence[int], config: Config,
                   stats: Optional[DecodeStats] = None) -> tf.data.Dataset:
    """Dataset of ``(row int32, audio int16 [samples])`` for the tracks at ``rows``.

    Audio is mono at ``frontend.sample_rate``, stored as int16 so that a memory cache
    of the decoded collection costs 2 bytes a sample. A file that fails to decode is
    skipped with a warning (and counted in ``stats``); it never stops training.
    """
    sub = [tracks[r] for r in rows]
    paths, fmt, rate = _track_columns(sub)
    sr = config.frontend.sample_rate
    stats = stats or DecodeStats()

    def decode(row, path, fmt_index, file_rate):
        stats.attempted.assign_add(1)
        y = decode_audio_tf(tf.io.read_file(path), fmt_index, file_rate, sr)
        pcm = tf.cast(tf.round(tf.clip_by_value(y, -1.0, 1.0) * 32767.0), tf.int16)
        return row, pcm

    def count(row, pcm):
        stats.decoded.assign_add(1)
        return row, pcm

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(rows, np.int32), paths, fmt, rate))
    ds = ds.map(decode, num_parallel_calls=config.data.num_parallel_calls, deterministic=True)
    return ds.ignore_errors(log_warning=True).map(count)


def _excerpt(config: Config):
    """Random excerpt of a decoded track: (row, pcm, seed) -> (row, pcm [E], num_frames)."""
    fe = config.frontend
    excerpt = int(round(config.data.excerpt_seconds * fe.sample_rate))

    def fn(row, pcm, seed):
        n = tf.shape(pcm)[0]
        length = tf.minimum(n, excerpt)
        # start on a hop boundary, so crops of the excerpt stay frame-aligned with the file
        hops = (n - length) // fe.hop_length + 1
        start = tf.random.stateless_uniform([], seed, 0, hops, dtype=tf.int32) * fe.hop_length
        clip = pcm[start:start + length]
        clip = tf.pad(clip, [[0, excerpt - length]])
        frames = 1 + (length - fe.n_fft) // fe.hop_length
        return row, tf.ensure_shape(clip, [excerpt]), frames

    return fn


def check_pipeline_config(config: Config) -> None:
    need = config.frontend.segment_seconds * (2.0 - config.data.max_track_overlap)
    if config.data.excerpt_seconds < need:
        raise ConfigError(
            f"config value data.excerpt_seconds={config.data.excerpt_seconds} is too short: track triplets need "
            f"two {config.frontend.segment_seconds} s crops overlapping at most {config.data.max_track_overlap:.0%}, "
            f"so at least {need} s.")


def training_dataset(tracks: Sequence[Track], tables: LabelTables, rows: Sequence[int], config: Config,
                     batch_size: Optional[int] = None, seed: Optional[int] = None,
                     condition_probs: Optional[Sequence[float]] = None,
                     stats: Optional[DecodeStats] = None) -> tf.data.Dataset:
    """The infinite, deterministic (for a seed) stream of mined triplet batches.

    Args:
        tracks: all prepared tracks (``tables`` was built from them, in the same order).
        tables: their labels.
        rows: the tracks of this split (indices into ``tracks``).
        config: the Config; uses frontend, conditions and data sections.
        batch_size: triplets per batch (default ``train.batch_size``).
        seed: overrides ``data.seed``.
        condition_probs: mix over conditions + track, default :func:`condition_mix`.
        stats: receives the decode counts (files skipped at train time).
    Returns:
        tf.data.Dataset of the element format in the module docstring, batches of
        exactly ``batch_size`` triplets.
    """
    check_pipeline_config(config)
    rows = list(rows)
    if len(rows) < 2:
        raise ConfigError(f"a split with {len(rows)} track(s) cannot form triplets; add tracks or change data.split_fractions.")
    batch_size = batch_size or config.train.batch_size
    seed = config.data.seed if seed is None else seed
    probs = np.asarray(condition_probs if condition_probs is not None else condition_mix(config), np.float32)
    pool = min(config.data.pool_size, len(rows))
    per_pool = pool * config.data.triplets_per_track
    fe = config.frontend
    autotune = config.data.num_parallel_calls

    classes = [tf.constant(m) for m in tables.classes]
    tempo = tf.constant(tables.tempo)
    mel_matrix = tf.constant(mel_filterbank(fe))
    seg = fe.num_frames
    frame_range = tf.range(seg)

    ds = decoded_tracks(tracks, rows, config, stats)
    if config.data.cache == "memory":
        ds = ds.cache()
    elif config.data.cache != "none":
        tf.io.gfile.makedirs(config.data.cache)
        ds = ds.cache(config.data.cache.rstrip("/") + "/decoded")
    ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed + 1).batch(2)))
    ds = ds.map(lambda track, s: _excerpt(config)(track[0], track[1], s),
                num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(pool, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed + 2).batch(2)))

    def mine_pool(pool_el, s):
        row, pcm, frames = pool_el
        mel = log_mel(tf.cast(pcm, tf.float32) * INT16_SCALE, fe, mel_matrix)  # [P, Fe, M]
        trip = mine_triplets(s, [tf.gather(c, row) for c in classes], tf.gather(tempo, row), row, frames,
                             per_pool, probs, config)
        return mel, trip

    ds = ds.map(mine_pool, num_parallel_calls=autotune, deterministic=True)

    def crops(mel, trip):
        def take(who):
            starts = trip[f"{who}_frame"][:, None] + frame_range[None, :]  # [B, F]
            return tf.gather(tf.gather(mel, trip[who]), starts, batch_dims=1)  # [B, F, M]

        return {"anchor": take("anchor"), "positive": take("positive"), "negative": take("negative"),
                "condition": trip["condition"]}

    def to_batches(mel, trip):
        t = tf.data.Dataset.from_tensor_slices(trip).filter(lambda x: x["valid"])
        t = t.batch(batch_size, drop_remainder=True)
        return t.map(lambda x: crops(mel, x))

    ds = ds.flat_map(to_batches)
    return ds.prefetch(tf.data.AUTOTUNE)
