"""The harmony branch: a key-invariant reading of the pitch bands, in the graph.

Mode (major or minor) is a cue of mood that a CNN over log-mel patches does not pick up by
itself: trained with triplet losses, the lean network's mood slice learnt the synthetic
collection's brightness and stayed at chance on triplets that differ only in mode, even with
pitch bands that resolve semitones (benchmarks/RESULTS.md). Global average pooling over
frequency keeps *which* shapes occur in the spectrum, and the shape that separates a major
from a minor triad (a major third under a minor third, or the reverse, seven semitones
wide) is a long, sparse pattern across 14 pitch bands that a stack of 3x3 filters has to
assemble from scratch.

The classical answer in music information retrieval is a pitch-class profile (chroma) and
key templates (Krumhansl & Kessler 1982; Temperley 1999): correlate the profile with a
major and a minor template in all twelve transpositions and keep the best. This module
learns the templates instead of fixing them:

1. :class:`PitchClassProfile` folds each frame's pitch bands (the frontend's madmom
   log-frequency filterbank, 24 an octave) into 12 pitch classes and normalises each frame's
   profile to zero mean and unit length, so it depends neither on loudness nor on the
   frontend's standardisation.
2. :class:`CircularTemplates` correlates each profile with ``templates`` learned 12-point
   templates in every one of the 12 rotations and keeps the maximum over rotations: a
   transposition-invariant feature per template (a max-pooled group convolution over the
   cyclic group of pitch classes). A major and a minor triad are mirror images, not
   rotations of each other, so the templates can tell them apart in any key.
3. The backbone averages the matches over the segment's frames.

Matching frame by frame, then averaging, reads chords rather than a key: a 3 s crop that
spans two chords would blur them in one averaged profile. On 480 crops of the synthetic
collection (drums, bass and melody included), fixed major and minor triad templates told the
mode of .80 of crops this way against .75 from the averaged profile, and Krumhansl-Kessler
key profiles .65-.70 (benchmarks/RESULTS.md); learned templates start from there.

Both use only ``keras.ops`` that convert to TFLite builtins (strided slice, mean, matmul,
gather, max, rsqrt). The profile's normalisation is a ratio, so exports keep it float in the
full-integer model (``export.savedmodel.FLOAT_LAYERS``).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import keras
import numpy as np
from keras import ops

from disentangled_ml.pitch_bands import log_filterbank  # the frontend's own (cached) filterbank

__all__ = ["PITCH_CLASSES", "PitchClassProfile", "CircularTemplates", "chroma_folding"]

#: Pitch classes a profile has (C = 0, ..., B = 11).
PITCH_CLASSES = 12
_A4_HZ = 440.0
_A_CLASS = 9


def chroma_folding(filterbank: np.ndarray, bin_frequencies: Sequence[float]) -> np.ndarray:
    """The matrix that folds pitch bands into 12 pitch classes.

    Each STFT bin goes to the pitch classes within a semitone of its frequency, with a
    triangular weight (a bin on a semitone goes wholly to it, one a quarter-tone off is split
    in two); a band goes where its bins go, weighted by its filter. So a band that madmom
    merged into a single coarse bin at the bottom of the range (5.4 Hz apart with a
    4096-sample STFT, wider than a semitone below ~90 Hz) counts for the classes that bin
    straddles, and no hand-set frequency limit is needed. Each column is then scaled to sum
    to 1, so every class is a weighted mean of bands: a constant added to every band adds the
    same constant to every class, which the profile's zero-mean normalisation removes.

    Args:
        filterbank: the pitch filterbank, ``[bins, n_bands]`` (bins of the STFT, right-multiplied).
        bin_frequencies: the frequency of each of the ``bins`` rows, in Hz (A4 = 440 Hz tuning).

    Returns:
        float32 ``[n_bands, 12]``.

    Raises:
        ValueError: shapes that do not match, or a pitch class that no band reaches.
    """
    fb = np.asarray(filterbank, dtype=np.float64)
    f = np.asarray(bin_frequencies, dtype=np.float64)
    if fb.ndim != 2 or f.shape != (fb.shape[0],):
        raise ValueError(f"chroma_folding needs a [bins, bands] filterbank and one frequency per bin; got "
                         f"{fb.shape} and {f.shape}.")
    with np.errstate(divide="ignore"):
        semitones = 12.0 * np.log2(np.where(f > 0, f, np.nan) / _A4_HZ) + _A_CLASS  # C = 0 mod 12
    distance = np.abs(semitones[:, None] - np.arange(PITCH_CLASSES)[None, :]) % PITCH_CLASSES
    distance = np.minimum(distance, PITCH_CLASSES - distance)
    bin_classes = np.nan_to_num(np.maximum(0.0, 1.0 - distance))  # [bins, 12]; the 0 Hz bin counts nowhere
    weights = fb.T @ bin_classes  # [n_bands, 12]
    totals = weights.sum(axis=0)
    if np.any(totals <= 0):
        raise ValueError("chroma_folding: the pitch bands do not reach every pitch class; widen "
                         "frontend.pitch_fmin/pitch_fmax to at least an octave.")
    return (weights / totals).astype(np.float32)


@keras.saving.register_keras_serializable(package="disentangled_ml")
class PitchClassProfile(keras.layers.Layer):
    """The pitch-class profile (chroma) of a segment, from the frontend's pitch bands.

    The folding matrix (:func:`chroma_folding`) is rebuilt from the frontend's pitch-band
    parameters, like the frontend's filterbanks: it is part of the layer's config, not a weight.

    Args:
        band_offset: index of the first pitch band in the input (``frontend.n_mels``: the
            pitch bands follow the mel bands).
        sample_rate, pitch_n_fft, pitch_bands_per_octave, pitch_fmin, pitch_fmax: the
            frontend's pitch bands (see ``FrontendConfig``).

    Input: float32 ``[batch, frames, bands]``, the frontend's output (compressed,
    standardised). Output: float32 ``[batch, frames, 12]``: each frame's profile, C first,
    minus its mean over the 12 classes and divided by its length (zero for a flat frame).
    """

    def __init__(self, band_offset: int, sample_rate: int, pitch_n_fft: int, pitch_bands_per_octave: int,
                 pitch_fmin: float, pitch_fmax: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.band_offset = int(band_offset)
        self.pitch = dict(sample_rate=int(sample_rate), pitch_n_fft=int(pitch_n_fft),
                          pitch_bands_per_octave=int(pitch_bands_per_octave), pitch_fmin=float(pitch_fmin),
                          pitch_fmax=float(pitch_fmax))
        bank = log_filterbank(self.pitch["sample_rate"], self.pitch["pitch_n_fft"],
                                 self.pitch["pitch_bands_per_octave"], self.pitch["pitch_fmin"], self.pitch["pitch_fmax"])
        bins = np.arange(bank.shape[0]) * self.pitch["sample_rate"] / self.pitch["pitch_n_fft"]
        self._folding = chroma_folding(bank, bins)
        self.n_bands = int(bank.shape[1])

    @classmethod
    def from_frontend(cls, fe, **kwargs: Any) -> "PitchClassProfile":
        """The layer for a ``FrontendConfig`` with pitch bands."""
        return cls(fe.n_mels, fe.sample_rate, fe.pitch_n_fft, fe.pitch_bands_per_octave, fe.pitch_fmin,
                   fe.pitch_fmax, **kwargs)

    def call(self, x):
        stop = self.band_offset + self.n_bands
        bands = ops.cast(x[:, :, self.band_offset:stop], "float32")  # [B, T, n]
        profile = ops.matmul(bands, ops.convert_to_tensor(self._folding))  # [B, T, 12]
        profile = profile - ops.mean(profile, axis=-1, keepdims=True)
        return profile * ops.rsqrt(ops.sum(profile * profile, axis=-1, keepdims=True) + 1e-6)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], PITCH_CLASSES)

    def count_macs(self, output_shape, input_shapes) -> int:
        """Multiply-accumulates for one example (:mod:`disentangled_ml.models.profile`)."""
        frames = int(input_shapes[0][1])
        return frames * (self.n_bands + 2) * PITCH_CLASSES

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(band_offset=self.band_offset, **self.pitch)
        return config


@keras.saving.register_keras_serializable(package="disentangled_ml")
class CircularTemplates(keras.layers.Layer):
    """Learned pitch-class templates, matched in all 12 transpositions; the best match is kept.

    ``y[b, k] = max_r sum_c x[b, (c + r) mod 12] * w[c, k]``: rolling the input by any number
    of semitones leaves the output unchanged, so it reads the shape of the harmony (major,
    minor, seventh chords, scales), not its key.

    Args:
        templates: the number of learned templates ``K`` (``model.chroma_templates``).

    Input: float32 ``[..., 12]`` (:class:`PitchClassProfile`). Output: float32 ``[..., K]``.
    Weights: ``kernel`` ``[12, K]``.
    """

    def __init__(self, templates: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.templates = int(templates)
        rotations = (np.arange(PITCH_CLASSES)[:, None] + np.arange(PITCH_CLASSES)[None, :]) % PITCH_CLASSES
        self._rotations = rotations.astype(np.int32)  # [rotation r, class c] -> (c + r) mod 12

    def build(self, input_shape):
        if input_shape[-1] != PITCH_CLASSES:
            raise ValueError(f"CircularTemplates needs [..., {PITCH_CLASSES}] pitch-class profiles; got {input_shape}.")
        self.kernel = self.add_weight(name="kernel", shape=(PITCH_CLASSES, self.templates),
                                      initializer="glorot_uniform")

    def call(self, x):
        rolled = ops.take(x, ops.convert_to_tensor(self._rotations), axis=-1)  # [..., 12 rotations, 12]
        return ops.max(ops.matmul(rolled, self.kernel), axis=-2)  # [..., K]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.templates)

    def count_macs(self, output_shape, input_shapes) -> int:
        """Multiply-accumulates for one example (:mod:`disentangled_ml.models.profile`)."""
        positions = int(np.prod([int(d) for d in input_shapes[0][1:-1]], dtype=np.int64))
        return positions * PITCH_CLASSES * PITCH_CLASSES * self.templates

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(templates=self.templates)
        return config
