"""The training input pipeline: decode -> features -> cache -> excerpt -> pool -> mine -> batch, all in tf.data.

Why features are cached (``data.cache_features``, the default since 0.3): the frontend
(two STFTs, one of them 4096 samples long, and two filterbanks) is a pure function of
the audio, so it is computed once per track in the first pass and kept (float16, in
memory or in a file cache); every later pass cuts excerpts and crops as frame slices of
it. With ``data.cache_features=False`` the decoded audio is cached instead and the
log-mel of each excerpt is computed again every pass (the 0.2 pipeline, below).

Why pools: a triplet needs random access to tracks by label, but a real collection
does not fit in memory. The pipeline streams tracks in a shuffled order, keeps one
random excerpt (``data.excerpt_seconds``) of each, groups ``data.pool_size`` of them
into a pool and mines ``data.triplets_per_track`` triplets per track *inside* the pool
(:func:`disentangled_ml.data.mining.mine_triplets`). The next pool brings other
tracks and other excerpts, so over epochs every pair of tracks can meet.

Why mel on the excerpt: the log-mel of an excerpt is computed once per pass, and
every 3 s crop is a slice of it at a frame boundary. With ``center=False`` framing
that slice is bit-for-bit the log-mel of the waveform crop starting at
``frame * hop_length`` samples, and it saves the STFT of every crop (3 crops per
triplet, ``triplets_per_track`` triplets per excerpt).

Element format (what :class:`disentangled_ml.models.trainer.TripletModel` consumes)::

    {"anchor": float32 [B, F, M], "positive": float32 [B, F, M],
     "negative": float32 [B, F, M], "condition": int32 [B]}

with F = ``frontend.num_frames`` and M = ``frontend.n_bands`` (mel, then pitch bands); condition ``C`` (the
number of conditions) marks a track triplet. Each batch also carries what is known
about every crop (``crop_track``, ``crop_excerpt``, ``crop_frame``, ``crop_tempo``,
``crop_classes_<condition>``, all ``[B, 3, ...]``; see
:func:`disentangled_ml.data.mining.crop_labels`), so that the loss can mine further
triplets among all ``3B`` crops of the batch (``data.mining = "in_batch_*"``). All
triplets of a batch come from one pool, so ``crop_excerpt`` identifies an excerpt.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from disentangled_ml.audio_io import FORMAT_CODES, decode_audio_tf
from disentangled_ml.config import Config, ConfigError
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.mining import condition_mix, crop_labels, mine_triplets
from disentangled_ml.data.shards import audio_features, read_audio_index
from disentangled_ml.features import filterbanks, log_mel

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


def _sharded_tracks(tracks: Sequence[Track], rows: Sequence[int], config: Config, stats: Optional[DecodeStats],
                    audio_dir: str) -> Optional[tf.data.Dataset]:
    """:func:`decoded_tracks` read from the TFRecord audio shards, or None when they do not fit this run."""
    index = read_audio_index(audio_dir)
    sr = config.frontend.sample_rate
    if int(index.get("sample_rate", -1)) != sr:
        log.warning("the audio shards in %s hold audio at %s Hz but frontend.sample_rate is %d Hz; "
                    "decoding the original files instead (rerun `dml prepare --cache-audio` with this config).",
                    audio_dir, index.get("sample_rate"), sr)
        return None
    wanted = {tracks[r].track_id: int(r) for r in rows}
    files, starts, counts, record_rows, record_ids = [], [], [], [], []
    for shard in index["shards"]:
        ids = list(shard["track_ids"])
        if not any(t in wanted for t in ids):
            continue  # holds only tracks of other splits
        files.append(audio_dir.rstrip("/") + "/" + shard["path"])
        starts.append(len(record_rows))
        counts.append(len(ids))
        record_rows += [wanted.get(t, -1) for t in ids]
        record_ids += ids
    missing = sorted(set(wanted) - set(record_ids))
    if missing:
        log.warning("%d track(s) of this split are not in the audio shards of %s (e.g. %s): the shards are older "
                    "than the manifest. Decoding the original files instead; rerun `dml prepare --cache-audio` to "
                    "update them.", len(missing), audio_dir, missing[0])
        return None

    rec_rows = tf.constant(record_rows, tf.int32)
    rec_ids = tf.constant(record_ids, tf.string)
    features = audio_features()

    def read_shard(path, first, count):
        # Record k of the collection is record (k - first) of this shard; the index
        # says which track it is, so other splits' tracks are dropped before parsing.
        keys = tf.data.Dataset.range(first, first + count)
        return tf.data.Dataset.zip((keys, tf.data.TFRecordDataset(path))).filter(
            lambda k, rec: tf.gather(rec_rows, k) >= 0)

    def parse(k, rec):
        if stats is not None:
            stats.attempted.assign_add(1)
        ex = tf.io.parse_single_example(rec, features)
        pcm = tf.io.decode_raw(ex["audio"], tf.int16, little_endian=True)
        checks = [
            tf.debugging.assert_equal(ex["track_id"], tf.gather(rec_ids, k),
                                      message="audio shard record does not match index.json; rerun dml prepare"),
            tf.debugging.assert_equal(tf.size(pcm, out_type=tf.int64), ex["num_samples"],
                                      message="audio shard record is truncated; rerun dml prepare"),
        ]
        with tf.control_dependencies(checks):
            return tf.gather(rec_rows, k), tf.identity(pcm)

    ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(starts, np.int64), np.asarray(counts, np.int64)))
    # Deterministic interleave with a fixed cycle: the record order (hence the stream
    # for a seed) does not depend on the machine's core count.
    ds = ds.interleave(read_shard, cycle_length=min(len(files), config.data.shard_cycle_length), block_length=1,
                       num_parallel_calls=config.data.num_parallel_calls, deterministic=True)
    ds = ds.map(parse, num_parallel_calls=config.data.num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    return ds.map(_counter(stats)) if stats is not None else ds


def _counter(stats: DecodeStats):
    def count(row, pcm):
        stats.decoded.assign_add(1)
        return row, pcm

    return count


def decoded_tracks(tracks: Sequence[Track], rows: Sequence[int], config: Config,
                   stats: Optional[DecodeStats] = None, audio_dir: Optional[str] = None) -> tf.data.Dataset:
    """Dataset of ``(row int32, audio int16 [samples])`` for the tracks at ``rows``.

    Audio is mono at ``frontend.sample_rate``, stored as int16 so that a memory cache
    of the decoded collection costs 2 bytes a sample. A file that fails to decode is
    skipped with a warning (and counted in ``stats``); it never stops training.

    With ``audio_dir`` (the ``audio/`` folder of ``dml prepare --cache-audio``, on any
    ``tf.io.gfile`` filesystem), the audio is read from its TFRecord shards, records
    interleaved over ``data.shard_cycle_length`` shards in a fixed order, instead of
    decoding the original files; when the shards do not fit (another sample rate,
    tracks missing) the files are decoded, with a warning. Without ``stats`` nothing
    is counted (no TF variables are captured, e.g. for the tf.data service).
    """
    if audio_dir is not None:
        ds = _sharded_tracks(tracks, rows, config, stats, audio_dir)
        if ds is not None:
            return ds
    sub = [tracks[r] for r in rows]
    paths, fmt, rate = _track_columns(sub)
    sr = config.frontend.sample_rate

    def decode(row, path, fmt_index, file_rate):
        if stats is not None:
            stats.attempted.assign_add(1)
        y = decode_audio_tf(tf.io.read_file(path), fmt_index, file_rate, sr)
        pcm = tf.cast(tf.round(tf.clip_by_value(y, -1.0, 1.0) * 32767.0), tf.int16)
        return row, pcm

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(rows, np.int32), paths, fmt, rate))
    ds = ds.map(decode, num_parallel_calls=config.data.num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    return ds.map(_counter(stats)) if stats is not None else ds


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


def _feature_excerpt(config: Config):
    """Random excerpt of a track's cached features: (row, feats float16 [N, M], seed) -> (row, float32 [E, M], frames).

    The frame-domain twin of :func:`_excerpt`: ``E`` is the frame count of a
    ``data.excerpt_seconds`` waveform excerpt, the start is uniform over the track's
    frames, and a track shorter than an excerpt is zero-padded with ``frames`` saying
    how many rows are real.
    """
    fe = config.frontend
    excerpt = int(round(config.data.excerpt_seconds * fe.sample_rate))
    excerpt_frames = 1 + (excerpt - fe.n_fft) // fe.hop_length

    def fn(row, feats, seed):
        n = tf.shape(feats)[0]
        length = tf.minimum(n, excerpt_frames)
        start = tf.random.stateless_uniform([], seed, 0, n - length + 1, dtype=tf.int32)
        clip = tf.cast(feats[start:start + length], tf.float32)
        clip = tf.pad(clip, [[0, excerpt_frames - length], [0, 0]])
        return row, tf.ensure_shape(clip, [excerpt_frames, fe.n_bands]), length

    return fn


def track_features(pcm: tf.Tensor, config: Config, banks=None) -> tf.Tensor:
    """The frontend's output for a whole decoded track, as the feature cache holds it.

    Args:
        pcm: int16 ``[samples]`` mono audio at ``frontend.sample_rate`` Hz.
        config: the Config (``frontend``).
        banks: :func:`~disentangled_ml.features.filterbanks` of the frontend, as tensors.

    Returns:
        float16 ``[frames, n_bands]``, frame ``t`` starting at sample ``t * hop_length``
        (no centre padding), so ``[t:t + num_frames]`` is the crop that starts there.
        float16 keeps 11 significant bits; the standardised log-mel lies within about
        +-10, so a cached value is within ~0.005 of the float32 one.
    """
    fe = config.frontend
    pcm = tf.ensure_shape(pcm, [None])  # decoders give an unknown rank; log_mel pads along the last axis
    return tf.cast(log_mel(tf.cast(pcm, tf.float32) * INT16_SCALE, fe, banks), tf.float16)


def decoded_bytes(tracks: Sequence[Track], rows: Sequence[int], config: Config) -> int:
    """Size of the decoded audio of ``rows`` as the pipeline caches it (int16 mono at
    ``frontend.sample_rate``), in bytes, from the prepared manifest's file information."""
    sr = config.frontend.sample_rate
    total = 0.0
    for r in rows:
        info = tracks[r].info
        total += float(info.get("num_frames") or 0) * sr / float(info.get("sample_rate") or sr)
    return int(2 * total)


def feature_bytes(tracks: Sequence[Track], rows: Sequence[int], config: Config) -> int:
    """Size of the cached features of ``rows`` (float16 ``[frames, n_bands]`` per track), in bytes."""
    fe = config.frontend
    samples = decoded_bytes(tracks, rows, config) // 2
    return int(2 * fe.n_bands * samples / fe.hop_length)


def physical_memory_bytes() -> Optional[int]:
    """RAM of this machine in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def resolve_cache(tracks: Sequence[Track], rows: Sequence[int], config: Config) -> str:
    """The decoded-audio cache to use: ``data.cache``, with ``"auto"`` resolved.

    ``"auto"`` caches in memory when the split's cached form (features or decoded audio,
    ``data.cache_features``) fits in
    ``data.cache_memory_fraction`` of the RAM, and otherwise decodes every pass
    (``"none"``), logging why and what to do: a real collection of full-length tracks
    (hours of audio) would not fit, and a memory cache that outgrows RAM kills the run.
    """
    cache = config.data.cache
    if cache != "auto":
        return cache
    what = "features" if config.data.cache_features else "decoded audio"
    need = (feature_bytes if config.data.cache_features else decoded_bytes)(tracks, rows, config)
    ram = physical_memory_bytes()
    if ram is None or need <= config.data.cache_memory_fraction * ram:
        return "memory"
    log.warning("the " + what + " of this split need(s) %.1f GB, more than data.cache_memory_fraction=%.2f of this "
                "machine's %.1f GB RAM: not caching it, every pass decodes the files again. Faster: write TFRecord "
                "shards with `dml prepare --cache-audio`, or set data.cache to a directory (a file cache on local "
                "disk).", need / 1e9, config.data.cache_memory_fraction, ram / 1e9)
    return "none"


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
                     stats: Optional[DecodeStats] = None, audio_dir: Optional[str] = None,
                     runtime_seeds: bool = False) -> tf.data.Dataset:
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
        audio_dir: read the decoded audio from these TFRecord shards
            (:func:`decoded_tracks`) instead of decoding the files.
        runtime_seeds: draw the shuffle, crop and mining seeds when an iterator
            starts instead of from ``seed``, so every copy of the dataset streams
            different triplets (tf.data service workers each run a copy of one
            serialised graph). Not reproducible; leave TF's global seed unset, or
            the copies draw the same seeds again.
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
    banks = filterbanks(fe, as_tensors=True)
    seg = fe.num_frames
    frame_range = tf.range(seg)

    ds = decoded_tracks(tracks, rows, config, stats, audio_dir=audio_dir)
    cache = resolve_cache(tracks, rows, config)
    from_features = config.data.cache_features and cache != "none"
    if from_features:
        # The frontend once per track: every later pass slices frames out of the cache. Two
        # tracks at a time at most: a long track's 4096-sample pitch STFT holds ~0.6 GB a
        # minute of audio while it is computed, and this runs in the first pass only.
        ds = ds.map(lambda row, pcm: (row, track_features(pcm, config, banks)),
                    num_parallel_calls=2, deterministic=True)
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        tf.io.gfile.makedirs(cache)
        ds = ds.cache(cache.rstrip("/") + ("/features" if from_features else "/decoded"))
    # seed None: tf.data draws the op's seed when the iterator starts (runtime_seeds)
    seeds = [None] * 3 if runtime_seeds else [seed, seed + 1, seed + 2]
    ds = ds.shuffle(len(rows), seed=seeds[0], reshuffle_each_iteration=True).repeat()
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seeds[1]).batch(2)))
    excerpt = _feature_excerpt(config) if from_features else _excerpt(config)
    ds = ds.map(lambda track, s: excerpt(track[0], track[1], s), num_parallel_calls=autotune, deterministic=True)
    if not from_features:
        # The log-mel of each excerpt on its own, before the excerpts are batched into a pool:
        # one pool's STFT at once held [pool_size, frames, pitch_n_fft] float32 frames plus the
        # complex spectrum (~6 GB for 256 excerpts of 12 s with the 4096-sample pitch window), and
        # AUTOTUNE ran several pools at a time. Per excerpt it is ~30 MB, for the same arithmetic.
        ds = ds.map(lambda row, pcm, frames: (row, log_mel(tf.cast(pcm, tf.float32) * INT16_SCALE, fe, banks),
                                              frames),
                    num_parallel_calls=autotune, deterministic=True)
    ds = ds.batch(pool, drop_remainder=True)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seeds[2]).batch(2)))

    def mine_pool(pool_el, s):
        row, mel, frames = pool_el  # mel: [P, Fe, M]
        pool_classes = [tf.gather(c, row) for c in classes]
        pool_tempo = tf.gather(tempo, row)
        trip = mine_triplets(s, pool_classes, pool_tempo, row, frames, per_pool, probs, config)
        trip.update(crop_labels(trip, row, pool_classes, pool_tempo, config))
        return mel, trip

    ds = ds.map(mine_pool, num_parallel_calls=autotune, deterministic=True)

    def crops(mel, trip):
        def take(who):
            starts = trip[f"{who}_frame"][:, None] + frame_range[None, :]  # [B, F]
            return tf.gather(tf.gather(mel, trip[who]), starts, batch_dims=1)  # [B, F, M]

        batch = {"anchor": take("anchor"), "positive": take("positive"), "negative": take("negative"),
                 "condition": trip["condition"]}
        batch.update({k: v for k, v in trip.items() if k.startswith("crop_")})
        return batch

    def to_batches(mel, trip):
        t = tf.data.Dataset.from_tensor_slices(trip).filter(lambda x: x["valid"])
        t = t.batch(batch_size, drop_remainder=True)
        return t.map(lambda x: crops(mel, x))

    ds = ds.flat_map(to_batches)
    return ds.prefetch(tf.data.AUTOTUNE)
