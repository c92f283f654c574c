"""Tempo estimation with madmom, for tracks whose manifest gives no tempo.

The labels this module produces are *estimates*: madmom's RNN beat tracker
(Böck & Schedl 2011) followed by comb-filter tempo estimation (Böck et al.
2015, "Accurate tempo estimation based on recurrent neural networks and
resonating comb filters"), the estimator docs/design.md names for tempo labels. They
carry madmom's usual failure modes, above all octave errors (a 70 BPM track
reported as 140 BPM, or the reverse), and they are less reliable on music with
a weak or changing pulse. Give a ``tempo`` column in the manifest wherever
better labels exist; ``dml prepare`` records which source each tempo came
from (``tempo_source``).

madmom's neural-network models are licensed CC BY-NC-SA 4.0 (non-commercial).

madmom's ``RNNBeatProcessor`` wants a 44.1 kHz signal. Its own ``Signal`` would
"resample" an array at another rate with ``ffmpeg``, which may be absent, and a
bare numpy array is silently taken to *be* 44.1 kHz. So the signal is resampled
here with soxr (librosa's default resampler) and handed over as a 44.1 kHz
``madmom.audio.signal.Signal``.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

#: The rate madmom's beat-tracking networks were trained at (Hz).
MADMOM_SAMPLE_RATE = 44100
#: Frames per second of madmom's beat activation function.
MADMOM_FPS = 100

# Built once per process (loading the network ensemble takes ~0.1 s); keyed by
# the tempo range so callers with different ranges do not share a processor.
_PROCESSORS: Dict[Tuple[float, float], tuple] = {}


def _processors(min_bpm: float, max_bpm: float) -> tuple:
    key = (float(min_bpm), float(max_bpm))
    if key not in _PROCESSORS:
        from madmom.features.beats import RNNBeatProcessor
        from madmom.features.tempo import CombFilterTempoHistogramProcessor, TempoEstimationProcessor

        # The histogram processor is passed explicitly: `method=` is deprecated in madmom 0.17.
        histogram = CombFilterTempoHistogramProcessor(min_bpm=key[0], max_bpm=key[1], fps=MADMOM_FPS)
        _PROCESSORS[key] = (
            RNNBeatProcessor(),
            TempoEstimationProcessor(method=None, histogram_processor=histogram, fps=MADMOM_FPS),
        )
    return _PROCESSORS[key]


def madmom_signal(signal: np.ndarray, sample_rate: int):
    """A mono float32 waveform as the 44.1 kHz ``madmom.audio.signal.Signal`` madmom's networks expect.

    Resampled with soxr when ``sample_rate`` differs (module notes). Float input in
    [-1, 1] matches madmom's own scaling of int16 files (its STFT divides integer
    signals by their full scale).
    """
    from madmom.audio.signal import Signal

    signal = np.asarray(signal).astype(np.float32, copy=False)
    if sample_rate != MADMOM_SAMPLE_RATE:
        import soxr

        signal = soxr.resample(signal, sample_rate, MADMOM_SAMPLE_RATE).astype(np.float32, copy=False)
    return Signal(signal, sample_rate=MADMOM_SAMPLE_RATE, num_channels=1)


def estimate_tempo(signal: np.ndarray, sample_rate: int, min_bpm: float = 40.0,
                   max_bpm: float = 250.0) -> Optional[float]:
    """Estimate the dominant tempo of a mono signal with madmom (an estimate, not ground truth).

    Parameters
    ----------
    signal : np.ndarray, float32, shape [num_samples]
        Mono waveform in [-1, 1].
    sample_rate : int
        Rate of ``signal`` in Hz; resampled to 44,100 Hz for madmom.
    min_bpm, max_bpm : float
        Tempo search range in BPM (``Config.data.tempo_min_bpm`` / ``tempo_max_bpm``).

    Returns
    -------
    float or None
        The strongest tempo in BPM, or None when madmom finds no periodicity
        (e.g. no onsets at all). Octave errors are possible; see the module notes.

    Raises
    ------
    ValueError
        ``signal`` is not a 1-D array or ``sample_rate`` is not positive.
    """
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"estimate_tempo needs a mono signal of shape [num_samples], got shape {signal.shape}.")
    if sample_rate <= 0:
        raise ValueError(f"estimate_tempo: sample_rate must be a positive number of Hz, got {sample_rate}.")
    beats, tempo = _processors(min_bpm, max_bpm)
    activations = beats(madmom_signal(signal, sample_rate))
    tempi = tempo(activations)  # [[bpm, strength], ...], strongest first
    if len(tempi) == 0 or not np.isfinite(tempi[0, 0]):
        return None
    return float(tempi[0, 0])
