"""Audio decoding: the one place that knows how bytes become a waveform.

docs/design.md pins tensorflow-io 0.37.1 (with TF 2.16.x) for its native decoders. All
decoding goes through this module so that a fallback (soundfile) or a later
TensorFlow needs one change here and nowhere else.

Two entry points:

* :func:`load_audio` (eager, numpy): used by ``prepare``, ``embed`` and tests.
* :func:`decode_audio_tf` (graph, for ``tf.data``): decodes file bytes with the
  format code that ``prepare`` measured, mixes to mono and resamples, with no
  Python call per element.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Tuple

import numpy as np

#: Extensions the decoders accept (docs/design.md, contract 1).
SUPPORTED_EXTENSIONS: Tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")

# Decoder codes understood by decode_audio_tf, chosen by prepare from the file's
# container and sample type. The order is part of the prepared-manifest format.
FORMAT_CODES: Tuple[str, ...] = ("wav:int16", "wav:int32", "wav:float32", "flac:int16", "flac:int32", "ogg", "mp3",
                                  "wav:uint8")  # new codes go last: prepared manifests store the index


# tensorflow-io's AudioIOTensor is not safe to construct from several threads at once:
# seen here, a 16-bit FLAC probed concurrently from a thread pool came back as float32.
# WAV and FLAC headers are therefore read with libsndfile (below); the lock still guards
# the Ogg and MP3 probes, which go through AudioIOTensor.
_PROBE_LOCK = threading.Lock()

# libsndfile subtype -> decoder code, for the containers whose sample type decides the
# decoder. Read with soundfile rather than tensorflow-io because tensorflow-io reports
# 32-bit integer WAV as float32 (it decodes it to garbage and NaN), and its header
# reader is not thread-safe. 24-bit PCM decodes through the int32 path (tensorflow-io
# widens it, measured exact to 1e-7).
_SNDFILE_CODES = {
    (".wav", "PCM_16"): "wav:int16", (".wav", "PCM_24"): "wav:int32", (".wav", "FLOAT"): "wav:float32",
    (".flac", "PCM_16"): "flac:int16", (".flac", "PCM_24"): "flac:int32",
    (".wav", "PCM_U8"): "wav:uint8",  # unsigned 8-bit, offset 128 (tensorflow-io decodes it exactly)
}
#: What to tell the user for sample types tensorflow-io cannot decode correctly.
_UNSUPPORTED_HINT = ("re-encode it as 16- or 24-bit PCM (or 32-bit float or unsigned 8-bit WAV), e.g. "
                     "`sox IN -b 16 OUT` or `ffmpeg -i IN -c:a pcm_s16le OUT.wav`")


class AudioDecodeError(RuntimeError):
    """A file could not be decoded; the message names the file and the cause."""


@dataclass(frozen=True)
class AudioInfo:
    """What ``prepare`` records about a decodable file."""

    sample_rate: int  # Hz, of the file
    num_frames: int  # samples per channel, of the file
    channels: int
    format_code: str  # one of FORMAT_CODES

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.num_frames / float(self.sample_rate)


def _tf():
    import tensorflow as tf  # noqa: F401 - imported lazily to keep `dml --help` fast

    return tf


def _tfio():
    import tensorflow_io as tfio

    return tfio


def check_extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise AudioDecodeError(
            f"{path}: unsupported audio format {ext or '(no extension)'!r}; "
            f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    return ext


def probe_audio(path: str) -> AudioInfo:
    """Read a file's header: rate, length, channels and decoder code.

    WAV and FLAC headers are read with libsndfile (soundfile), Ogg and MP3 with
    tensorflow-io; the decoder code picks the graph decoder for the file.

    Raises:
        AudioDecodeError: missing file, unsupported extension or unreadable header.
    """
    ext = check_extension(path)
    if not os.path.isfile(path):
        raise AudioDecodeError(f"{path}: file not found; check the manifest's path column.")
    if ext in (".wav", ".flac"):
        info = _probe_sndfile(path, ext)
    else:
        try:
            with _PROBE_LOCK:
                t = _tfio().audio.AudioIOTensor(path)
                num_frames, channels = (int(v) for v in t.shape.numpy())
                rate = int(t.rate.numpy())
        except Exception as e:  # tensorflow-io raises several error types for bad data
            raise AudioDecodeError(f"{path}: cannot be decoded ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200]}).") from e
        info = AudioInfo(sample_rate=rate, num_frames=num_frames, channels=channels, format_code=ext[1:])
    if info.num_frames <= 0 or info.sample_rate <= 0:
        raise AudioDecodeError(f"{path}: header reports {info.num_frames} samples at {info.sample_rate} Hz; "
                               "the file is empty or truncated.")
    return info


def _probe_sndfile(path: str, ext: str) -> AudioInfo:
    """WAV / FLAC header through libsndfile: rate, length, channels and the decoder for its sample type."""
    import soundfile

    try:
        sf_info = soundfile.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError for unreadable headers
        raise AudioDecodeError(f"{path}: cannot be decoded ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}).") from e
    code = _SNDFILE_CODES.get((ext, sf_info.subtype))
    if code is None:
        raise AudioDecodeError(f"{path}: sample type {sf_info.subtype} ({sf_info.subtype_info}) in {ext} is not "
                               f"supported by the decoder; {_UNSUPPORTED_HINT}.")
    return AudioInfo(sample_rate=int(sf_info.samplerate), num_frames=int(sf_info.frames),
                     channels=int(sf_info.channels), format_code=code)


def load_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode a whole file to mono float32 in [-1, 1] at ``sample_rate`` Hz.

    Uses the same graph decoder as training (:func:`decode_audio_tf`), so prepare,
    training and embedding see identical samples.

    Returns:
        float32 array of shape [num_samples].
    Raises:
        AudioDecodeError: the file cannot be read or decoded (truncated, corrupt, unknown format).
    """
    tf = _tf()
    info = probe_audio(path)
    try:
        y = _graph_decoder(sample_rate)(
            tf.io.read_file(path), tf.constant(FORMAT_CODES.index(info.format_code), tf.int32),
            tf.constant(info.sample_rate, tf.int64),
        ).numpy()
    except Exception as e:
        raise AudioDecodeError(f"{path}: decoding failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from e
    if y.size == 0:
        raise AudioDecodeError(f"{path}: decoded to zero samples; the file is empty or truncated.")
    if not np.isfinite(y).all():  # a mis-declared sample type decodes to NaN / inf; never train on it
        raise AudioDecodeError(f"{path}: decoded to non-finite samples (NaN or inf): the header's sample type "
                               f"does not match the data; {_UNSUPPORTED_HINT}.")
    return y


_DECODERS: dict = {}


def _graph_decoder(sample_rate: int):
    """decode_audio_tf traced once per target rate (eager calls would re-trace the resampler per file)."""
    if sample_rate not in _DECODERS:
        tf = _tf()
        _DECODERS[sample_rate] = tf.function(
            lambda contents, fmt, rate: decode_audio_tf(contents, fmt, rate, sample_rate),
            input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int64)],
        )
    return _DECODERS[sample_rate]


def decode_audio_tf(contents, format_index, file_rate, sample_rate: int):
    """Graph-mode decode: file bytes -> mono float32 waveform at ``sample_rate``.

    Args:
        contents: scalar tf.string, the file's bytes.
        format_index: scalar int, index into :data:`FORMAT_CODES` (from prepare).
        file_rate: scalar int64, the file's sample rate in Hz (from prepare).
        sample_rate: target rate in Hz (python int).
    Returns:
        tf.float32 tensor of shape [num_samples], values in [-1, 1].
    """
    tf = _tf()
    tfio = _tfio()

    def pcm(decode, dtype, scale):
        return lambda: tf.cast(decode(contents, dtype=dtype), tf.float32) * scale

    branches = [
        pcm(tfio.audio.decode_wav, tf.int16, 1.0 / 32768.0),
        pcm(tfio.audio.decode_wav, tf.int32, 1.0 / 2147483648.0),
        pcm(tfio.audio.decode_wav, tf.float32, 1.0),
        pcm(tfio.audio.decode_flac, tf.int16, 1.0 / 32768.0),
        pcm(tfio.audio.decode_flac, tf.int32, 1.0 / 2147483648.0),
        lambda: tfio.audio.decode_vorbis(contents),
        lambda: tfio.audio.decode_mp3(contents),
        lambda: (tf.cast(tfio.audio.decode_wav(contents, dtype=tf.uint8), tf.float32) - 128.0) * (1.0 / 128.0),
    ]
    y = tf.switch_case(tf.cast(format_index, tf.int32), branches)
    y = tf.reduce_mean(y, axis=1)  # [samples, channels] -> mono
    file_rate = tf.cast(file_rate, tf.int64)
    return tf.cond(
        tf.equal(file_rate, sample_rate),
        lambda: y,
        lambda: tfio.audio.resample(y[:, None], file_rate, sample_rate)[:, 0],
    )
