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
from typing import Optional, Tuple

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
#: libsndfile major formats -> the extension whose decoder reads them (a file of another
#: extension is misnamed).
_SNDFILE_CONTAINERS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MPEG": "mp3"}
#: What to tell the user for sample types tensorflow-io cannot decode correctly.
_UNSUPPORTED_HINT = ("re-encode it as 16- or 24-bit PCM (or 32-bit float or unsigned 8-bit WAV), e.g. "
                     "`sox IN -b 16 OUT` or `ffmpeg -i IN -c:a pcm_s16le OUT.wav`")


class AudioDecodeError(RuntimeError):
    """A file could not be decoded.

    The message names the file, says in words what is wrong with it and what to do
    (``"x.flac: truncated or corrupt FLAC (...): re-encode or re-download it."``);
    ``detail`` keeps the decoder's own text (exception type and message, one line),
    for bug reports, or ``""`` when the check was this module's own.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    def __reduce__(self):  # keep ``detail`` across processes
        return (type(self), (str(self), self.detail))


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
            raise explain_failure(path, e) from e
        info = AudioInfo(sample_rate=rate, num_frames=num_frames, channels=channels, format_code=ext[1:])
    if info.num_frames <= 0 or info.sample_rate <= 0:
        raise explain_failure(path, detail=f"header reports {info.num_frames} samples at {info.sample_rate} Hz")
    return info


def _probe_sndfile(path: str, ext: str) -> AudioInfo:
    """WAV / FLAC header through libsndfile: rate, length, channels and the decoder for its sample type."""
    import soundfile

    try:
        sf_info = soundfile.info(path)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError for unreadable headers
        raise explain_failure(path, e) from e
    kind = _SNDFILE_CONTAINERS.get(sf_info.format)
    if kind is not None and kind != ext[1:]:  # libsndfile goes by the bytes, the graph decoder by the extension
        raise explain_failure(path, detail=f"libsndfile reads it as {sf_info.format} {sf_info.subtype}")
    code = _SNDFILE_CODES.get((ext, sf_info.subtype))
    if code is None:
        raise AudioDecodeError(f"{path}: sample type {sf_info.subtype} ({sf_info.subtype_info}) in {ext} is not "
                               f"supported by the decoder; {_UNSUPPORTED_HINT}.",
                               f"libsndfile: {sf_info.format} {sf_info.subtype}")
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
        raise explain_failure(path, e) from e
    if y.size == 0:
        raise explain_failure(path, detail="the decoder returned zero samples")
    if not np.isfinite(y).all():  # never train on NaN / inf
        bad = int(np.size(y) - np.isfinite(y).sum())
        detail = f"{bad} of {y.size} decoded samples are NaN or inf (decoder {info.format_code})"
        stored = _nonfinite_samples(path) if info.format_code == "wav:float32" else None
        if stored:  # the file itself holds them: a float WAV written from broken audio
            raise AudioDecodeError(f"{path}: the WAV holds NaN or infinite samples ({stored[0]:,} of {stored[1]:,}): "
                                   "the program that wrote it produced invalid audio; export it again from "
                                   "the source, or leave it out.", detail)
        # otherwise a mis-declared sample type decoded to garbage
        raise AudioDecodeError(f"{path}: decoded to NaN or infinite samples: the header's sample type does not "
                               f"match the data; {_UNSUPPORTED_HINT}.", detail)
    return y


def _nonfinite_samples(path: str) -> Optional[Tuple[int, int]]:
    """``(non-finite, all)`` samples of a float WAV as libsndfile reads them; None if it cannot."""
    import soundfile

    try:
        data, _ = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception:
        return None
    bad = int(data.size - np.isfinite(data).sum())
    return (bad, int(data.size)) if bad else None


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


# --------------------------------------------------------------------------- saying why a file fails

#: Names of containers for messages, by what :func:`sniff_format` returns.
FORMAT_NAMES = {"wav": "WAV", "flac": "FLAC", "ogg": "Ogg", "mp3": "MP3", "aiff": "AIFF", "mp4": "MP4/M4A",
                "aac": "AAC (ADTS)", "matroska": "WebM/Matroska", "zip": "ZIP archive", "pdf": "PDF",
                "gzip": "gzip archive", "png": "PNG image", "jpeg": "JPEG image"}
#: First bytes read to recognise a file.
SNIFF_BYTES = 512
_FIX = "re-encode or re-download it"


def sniff_format(head: bytes) -> Optional[str]:
    """The container a file's first bytes announce (a key of :data:`FORMAT_NAMES`), or None.

    Magic numbers: ``RIFF``/``RIFX``/``RF64`` + ``WAVE`` (WAV), ``fLaC``, ``OggS``,
    ``ID3`` or an MPEG audio frame sync (MP3), and a few non-audio files users meet.
    """
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RIFX", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # 11-bit frame sync
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC; else MPEG layer I-III
    if len(head) >= 12 and head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "mp4"
    for magic, name in ((b"\x1a\x45\xdf\xa3", "matroska"), (b"PK\x03\x04", "zip"), (b"%PDF", "pdf"),
                        (b"\x1f\x8b", "gzip"), (b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpeg")):
        if head.startswith(magic):
            return name
    return None


def _text_start(head: bytes) -> Optional[str]:
    """The first line of ``head`` if the bytes are text (UTF-8, printable), else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the read
            return None
        text = head[:e.start].decode("utf-8")
    text = text.lstrip("\ufeff")
    if not text.strip() or not all(c.isprintable() or c in "\t\r\n" for c in text):
        return None
    first = text.strip().splitlines()[0].strip()
    return first if len(first) <= 40 else first[:40] + "..."


def _a(name: str) -> str:
    """The article before a format's name: "an MP3", "a WAV"."""
    return "an" if name[:1] in "AEIOUM" else "a"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())[:1000]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def explain_failure(path: str, error: Optional[BaseException] = None, detail: str = "") -> AudioDecodeError:
    """An :class:`AudioDecodeError` that says, in words, why ``path`` cannot be decoded and what to do.

    The raw decoder text (``error``, or ``detail``) goes to ``.detail``. The file is
    looked at to find the reason: its size (empty), its first bytes (text, another
    container than its extension says, no known audio format at all), and, for a file
    of the right container, how far it decodes (truncated or corrupt).
    """
    detail = _one_line(error) if error is not None else detail
    ext = os.path.splitext(path)[1].lower()
    name = FORMAT_NAMES.get(ext[1:], ext[1:].upper())
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        return AudioDecodeError(f"{path}: cannot be read ({e.strerror or e}); check the file's permissions.", detail)
    if size == 0:
        return AudioDecodeError(f"{path}: empty file (0 bytes): re-download or re-export it, or leave it out of "
                                "the manifest.", detail)
    kind = sniff_format(head)
    if kind is None:
        text = _text_start(head)
        if text is not None:
            what = ("an HTML page (an error page saved by a failed download?)"
                    if text.lower().startswith(("<!doctype html", "<html")) else f"starts with text: {text!r}")
            return AudioDecodeError(f"{path}: not an audio file ({what}); check the manifest's path, or "
                                    "re-download it.", detail)
        return AudioDecodeError(f"{path}: not {_a(name)} {name} file, nor any audio format the decoders know (it "
                                f"starts with bytes {head[:8].hex(' ')}); {_FIX}, e.g. as WAV or FLAC.", detail)
    if kind != ext[1:]:
        other = FORMAT_NAMES[kind]
        if "." + kind in SUPPORTED_EXTENSIONS:
            return AudioDecodeError(f"{path}: {_a(other)} {other} file named {ext}: rename it to .{kind} "
                                    "(the decoder is chosen by the extension).", detail)
        return AudioDecodeError(f"{path}: {_a(other)} {other} file, not {name}; convert it to one of "
                                f"{', '.join(SUPPORTED_EXTENSIONS)}.", detail)
    if kind == "wav":
        where = _wav_truncation(path, size)
        if where:
            return AudioDecodeError(f"{path}: truncated WAV ({where}): {_FIX}.", detail)
    if kind == "flac":
        where, whole = _flac_truncation(path, size, detail)
        if whole:  # libsndfile reads every sample: tensorflow-io's decoder is the one that fails
            return AudioDecodeError(f"{path}: the FLAC decoder (tensorflow-io) fails on this file although "
                                    f"libsndfile decodes it{f' ({where})' if where else ''}: re-encode it, e.g. "
                                    "`ffmpeg -i IN -c:a flac OUT.flac`, or as 16-bit WAV.", detail)
        if where:
            return AudioDecodeError(f"{path}: truncated or corrupt FLAC ({where}): {_FIX}.", detail)
    return AudioDecodeError(f"{path}: corrupt {name} (the decoder fails on this {size:,}-byte file): {_FIX}.", detail)


def _wav_truncation(path: str, size: int) -> Optional[str]:
    """Where a WAV file stops short of what its RIFF header announces, in words; None if it does not."""
    # The RIFF chunks are walked by hand because libsndfile (soundfile.info) reports the frames the file
    # actually holds, not the data chunk's announced length, so it cannot say that a file was cut.
    import struct

    with open(path, "rb") as f:
        head = f.read(1 << 16)  # the chunks before the audio: fmt, and LIST/fact/... of any length
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and pos + 22 <= len(head):
            rate, _, block = struct.unpack("<IIH", head[pos + 12:pos + 22])
            fmt = (rate, block)
        if chunk == b"data":
            end = pos + 8 + length
            if end <= size or length in (0, 0xFFFFFFFF):  # complete, or a streaming writer's placeholder
                return None
            seconds = ""
            if fmt and fmt[0] and fmt[1]:
                have, want = (size - pos - 8) // fmt[1] / fmt[0], length // fmt[1] / fmt[0]
                seconds = f": {have:.2f} s of {want:.2f} s"
            return f"stops at byte {size:,} of the {end:,} its header announces{seconds}"
        pos += 8 + length + (length & 1)
    if pos + 8 > size:
        return f"stops at byte {size:,}, inside its header"
    return None


def _flac_truncation(path: str, size: int, detail: str) -> Tuple[Optional[str], bool]:
    """How far a FLAC file decodes (libsndfile) against the length its header announces, in
    words, and whether libsndfile decodes all of it."""
    import re

    import soundfile

    at = re.search(r"unable to read at: (\d+)", detail)  # tensorflow-io's FLAC reader
    where = f"decoding stops at byte {int(at.group(1)):,} of {size:,}" if at else None
    try:
        with soundfile.SoundFile(path) as f:
            total, rate, decoded = f.frames, f.samplerate, 0
            try:
                for block in f.blocks(blocksize=4096, dtype="float32"):
                    decoded += len(block)
            except Exception:
                pass
    except Exception:
        return where, False
    if total > 0 and decoded >= total:
        return where, True
    audio = f"after {decoded / rate:.2f} s of the {total / rate:.2f} s its header announces"
    return (f"{where}, {audio}" if where else f"the audio stops {audio}"), False
