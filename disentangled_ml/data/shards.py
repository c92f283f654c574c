"""The audio shards of a prepared collection: their schema, written by one side, read by the other.

``dml prepare --cache-audio`` (:mod:`disentangled_ml.data.prepare`) writes them;
the training pipeline (:mod:`disentangled_ml.data.pipeline`) reads them. Neither
imports the other: both take the layout from here.

``PREPARED_DIR/audio/`` holds:

* ``audio-SSSSS-of-NNNNN.tfrecord`` (:func:`shard_name`): one ``tf.train.Example`` a
  track (:func:`audio_example`), with the features of :func:`audio_features`:
  ``track_id`` (bytes), ``audio`` (little-endian int16 PCM bytes, mono, at the
  index's ``sample_rate``; divide by :data:`INT16_SCALE` for [-1, 1]) and
  ``num_samples`` (int64);
* ``index.json`` (:data:`INDEX_FILE`, :func:`new_index`, :func:`read_audio_index`):
  ``format`` ``"tfrecord"``, ``sample_rate`` (Hz), ``dtype`` ``"int16"``,
  ``byte_order`` ``"little"``, ``int16_scale``, ``features`` (the features above, in
  words) and ``shards``, one ``{"path", "num_records", "track_ids"}`` a shard, the
  records in ``track_ids`` order.

TensorFlow is imported inside the functions that need it: the preparer's worker
processes import this module and never touch a TFRecord.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import numpy as np

from disentangled_ml.config import ConfigError

__all__ = ["INDEX_FILE", "FORMAT", "DTYPE", "BYTE_ORDER", "INT16_SCALE", "FEATURES", "shard_name",
           "is_shard_name", "new_index", "audio_example", "audio_features", "parse_audio_example",
           "read_audio_index"]

#: The index of the shards, in the audio folder.
INDEX_FILE = "index.json"
FORMAT = "tfrecord"
DTYPE = "int16"
BYTE_ORDER = "little"
#: Scale between float samples in [-1, 1] and the int16 of the audio cache.
INT16_SCALE = 32767.0
#: The features of a record, as ``index.json`` describes them.
FEATURES = {"track_id": "bytes", "audio": "bytes (int16 PCM)", "num_samples": "int64"}


def shard_name(shard: int, num_shards: int) -> str:
    """File name of shard ``shard`` (from 0) of ``num_shards``."""
    return f"audio-{shard:05d}-of-{num_shards:05d}.tfrecord"


def is_shard_name(name: str) -> bool:
    """True for a file name :func:`shard_name` may have given (of any shard count)."""
    return name.startswith("audio-") and name.endswith(".tfrecord")


def new_index(sample_rate: int) -> Dict[str, Any]:
    """``index.json`` of shards of audio at ``sample_rate`` Hz, before any shard is listed."""
    return {
        "format": FORMAT, "sample_rate": sample_rate, "dtype": DTYPE, "byte_order": BYTE_ORDER,
        "int16_scale": INT16_SCALE, "features": dict(FEATURES), "shards": [],
    }


def audio_example(track_id: str, pcm: np.ndarray) -> bytes:
    """One serialised record: ``pcm`` is the track's int16 audio, ``[num_samples]``."""
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "track_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[track_id.encode()])),
        "audio": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pcm.astype("<i2").tobytes()])),
        "num_samples": tf.train.Feature(int64_list=tf.train.Int64List(value=[pcm.shape[0]])),
    })).SerializeToString()


def audio_features() -> Dict[str, Any]:
    """``tf.io.parse_single_example`` spec of the audio records.

    ``track_id``: bytes; ``audio``: little-endian int16 PCM bytes, mono, at
    ``index.json``'s ``sample_rate``; divide by :data:`INT16_SCALE` for [-1, 1];
    ``num_samples``: int64.
    """
    import tensorflow as tf

    return {
        "track_id": tf.io.FixedLenFeature([], tf.string),
        "audio": tf.io.FixedLenFeature([], tf.string),
        "num_samples": tf.io.FixedLenFeature([], tf.int64),
    }


def parse_audio_example(serialized):
    """Graph-mode parser of one audio record: ``{"track_id": tf.string [], "audio": tf.float32 [num_samples]}``."""
    import tensorflow as tf

    ex = tf.io.parse_single_example(serialized, audio_features())
    audio = tf.cast(tf.io.decode_raw(ex["audio"], tf.int16, little_endian=True), tf.float32) / INT16_SCALE
    return {"track_id": ex["track_id"], "audio": audio}


def read_audio_index(audio_dir: str) -> Dict:
    """The ``index.json`` of the audio shards written by ``dml prepare --cache-audio``.

    ``audio_dir`` may be any ``tf.io.gfile`` path (local, ``gs://``, ``hdfs://``, ...).
    Raises :class:`ConfigError` when it is missing or not a shard index.
    """
    import tensorflow as tf

    if "://" in audio_dir and not audio_dir.startswith(("gs://", "ram://", "file://")):
        import tensorflow_io  # noqa: F401 - registers its filesystems (s3://, hdfs://, az://, ...)
    path = audio_dir.rstrip("/") + "/" + INDEX_FILE
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"{audio_dir} holds no index.json; write the shards with "
                          "`dml prepare MANIFEST --out DIR --cache-audio` and point at DIR/audio.")
    with tf.io.gfile.GFile(path) as f:
        try:
            index = json.load(f)
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); rerun `dml prepare --cache-audio`.") from None
    if index.get("format") != FORMAT or index.get("dtype") != DTYPE or "shards" not in index:
        raise ConfigError(f"{path} is not an int16 TFRecord audio index; rerun `dml prepare --cache-audio`.")
    return index
