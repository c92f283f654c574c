"""The pitch bands' log-frequency filterbank, in numpy (no TensorFlow).

madmom's ``LogarithmicFilterbank`` (triangular filters, ``bands_per_octave`` an octave
between ``fmin`` and ``fmax``, tuned to A4 = 440 Hz, each normalised to unit area,
filters that land on the same STFT bin merged), on the bins of an ``n_fft`` STFT. madmom
merges the log-spaced filters that share a bin, so the number of bands comes from
building the filterbank, not from a formula.

Two layers read it: :mod:`disentangled_ml.config` for the band count (the shapes every
stage is built with) and :mod:`disentangled_ml.features` for the matrix the frontend
multiplies. Keeping it out of :mod:`disentangled_ml.features` keeps TensorFlow out of the
config: this module imports only numpy, and madmom when a filterbank is first built.
"""

from __future__ import annotations

import functools

import numpy as np

from disentangled_ml.errors import ConfigError

__all__ = ["log_filterbank", "band_count"]


@functools.lru_cache(maxsize=16)
def log_filterbank(sample_rate: int, n_fft: int, bands_per_octave: int, fmin: float, fmax: float) -> np.ndarray:
    """The filterbank, float32 ``[n_fft // 2 + 1, bands]``, read-only (cached, shared by every caller).

    Raises:
        ConfigError: the range holds no band.
    """
    from madmom.audio.filters import LogarithmicFilterbank  # lazy: only needed at construction
    from madmom.audio.stft import fft_frequencies

    try:
        fb = LogarithmicFilterbank(fft_frequencies(n_fft // 2 + 1, sample_rate), num_bands=bands_per_octave,
                                   fmin=fmin, fmax=fmax, norm_filters=True, unique_filters=True)
    except ValueError as e:
        raise ConfigError(f"config values frontend.pitch_fmin={fmin}, pitch_fmax={fmax}, "
                          f"pitch_bands_per_octave={bands_per_octave} give no pitch band ({e}); widen the range "
                          "or set pitch_bands_per_octave=0.") from e
    if fb.shape[1] == 0:
        raise ConfigError(f"config values frontend.pitch_fmin={fmin}, pitch_fmax={fmax} give no pitch band; "
                          "widen the range or set frontend.pitch_bands_per_octave=0.")
    out = np.ascontiguousarray(np.asarray(fb), dtype=np.float32)
    out.setflags(write=False)  # shared by every caller through the cache
    return out


def band_count(sample_rate: int, n_fft: int, bands_per_octave: int, fmin: float, fmax: float) -> int:
    """Columns of :func:`log_filterbank` (0 when ``bands_per_octave`` is 0)."""
    if not bands_per_octave:
        return 0
    return int(log_filterbank(sample_rate, n_fft, bands_per_octave, fmin, fmax).shape[1])
