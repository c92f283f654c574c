"""The baselines the trained embedding is compared with (Lee et al. 2020, Table 1).

Each baseline maps waveform crops ``float32 [b, segment_samples]`` (in [-1, 1], at
``frontend.sample_rate`` Hz) to a feature vector ``[b, D]``, like a trained
embedder, so the same evaluation scores all of them. Baselines have no
per-condition slices: they are always scored on the whole vector.

* :class:`MFCCVQ`: the paper's baseline. 13 MFCCs + deltas + delta-deltas per frame
  (39-d), vector-quantised with a k-means codebook fitted on training-split frames;
  a crop is the normalised histogram of its frames' codewords.
* :class:`MFCCStats`: mean and standard deviation of 20 MFCCs over the crop,
  z-scored with training statistics; the usual "bag of frames" baseline.
* :func:`untrained_embedder`: the run's own architecture with random weights, which
  shows how much of the score the architecture and frontend give for free.

The MFCCs use the frontend's sample rate, STFT window and hop (``n_fft``,
``hop_length``, no centre padding), so a baseline sees exactly the frames the
network sees.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional, Sequence

import numpy as np

from disentangled_ml.config import Config, FrontendConfig

log = logging.getLogger(__name__)

__all__ = ["MFCCVQ", "MFCCStats", "mfcc_frames", "training_crops", "untrained_embedder",
           "DEFAULT_CODEBOOK_SIZE", "DEFAULT_FIT_TRACKS", "DEFAULT_FIT_CROPS_PER_TRACK"]

#: Codewords of the MFCC-VQ baseline.
DEFAULT_CODEBOOK_SIZE = 64
#: Training tracks (at most) whose crops fit the baselines' codebook and statistics.
DEFAULT_FIT_TRACKS = 200
#: Random crops per training track for fitting the baselines.
DEFAULT_FIT_CROPS_PER_TRACK = 4
#: Frame span of librosa's delta filter (its default).
DELTA_WIDTH = 9


def _check_waveforms(waveforms: np.ndarray, frontend: FrontendConfig, who: str) -> np.ndarray:
    y = np.asarray(waveforms, dtype=np.float32)
    if y.ndim != 2:
        raise ValueError(f"{who}: expected waveform crops [batch, samples], got shape {y.shape}.")
    if y.shape[1] < frontend.n_fft:
        raise ValueError(f"{who}: crops of {y.shape[1]} samples are shorter than one STFT window "
                         f"(n_fft={frontend.n_fft}).")
    return y


def mfcc_frames(waveforms: np.ndarray, frontend: FrontendConfig, n_mfcc: int, deltas: bool = False) -> np.ndarray:
    """Per-frame MFCCs of waveform crops, on the frontend's STFT grid.

    Args:
        waveforms: float32 ``[b, samples]`` in [-1, 1] at ``frontend.sample_rate`` Hz.
        frontend: gives the sample rate, ``n_fft``, ``hop_length``, ``fmin``/``fmax`` and
            the number of mel bands (``max(n_mels, n_mfcc)``: the DCT cannot return
            more coefficients than bands).
        n_mfcc: coefficients per frame (librosa's DCT-II, orthonormal, Slaney mel).
        deltas: append first and second time derivatives (librosa's 9-frame
            Savitzky-Golay filter, narrowed for crops shorter than 9 frames).

    Returns:
        float32 ``[b, frames, n_mfcc]`` or ``[b, frames, 3 * n_mfcc]`` with deltas;
        ``frames = 1 + (samples - n_fft) // hop_length``.
    """
    import librosa  # lazy: only the baselines need it at run time

    y = _check_waveforms(waveforms, frontend, "mfcc_frames")
    m = librosa.feature.mfcc(y=y, sr=frontend.sample_rate, n_mfcc=n_mfcc, n_fft=frontend.n_fft,
                             hop_length=frontend.hop_length, n_mels=max(frontend.n_mels, n_mfcc),
                             fmin=frontend.fmin, fmax=frontend.mel_fmax, center=False, window="hann")
    if deltas:
        frames = m.shape[-1]
        width = min(DELTA_WIDTH, frames if frames % 2 else frames - 1)
        if width >= 3:
            d1 = librosa.feature.delta(m, width=width, order=1, axis=-1)
            d2 = librosa.feature.delta(m, width=width, order=2, axis=-1)
        else:  # one or two frames: no slope to measure
            d1 = d2 = np.zeros_like(m)
        m = np.concatenate([m, d1, d2], axis=-2)
    return np.swapaxes(m, -1, -2).astype(np.float32)


class MFCCVQ:
    """MFCC vector-quantisation baseline: a crop is a histogram over ``k`` codewords.

    Frames are 13 MFCCs + deltas + delta-deltas (39-d), standardised with the
    training frames' mean and deviation (c0, the log energy, spans ten times the
    range of the other coefficients and would otherwise decide the codebook alone),
    then assigned to the nearest of ``k`` centroids of a k-means codebook
    (scikit-learn's ``MiniBatchKMeans``, seeded). A crop's feature is the share of
    its frames falling on each codeword.

    Args:
        frontend: the run's frontend configuration (sample rate, window, hop).
        codebook_size: ``k``, the number of codewords.
        n_mfcc: static coefficients per frame (13, plus deltas = 39-d frames).
        seed: seeds k-means.

    Call:
        ``vq(waveforms)`` with float32 ``[b, samples]`` returns float32 ``[b, k]``, each
        row summing to 1. :meth:`fit` must be called first.
    """

    def __init__(self, frontend: FrontendConfig, codebook_size: int = DEFAULT_CODEBOOK_SIZE, n_mfcc: int = 13,
                 seed: int = 0) -> None:
        if codebook_size < 2:
            raise ValueError(f"MFCCVQ: codebook_size must be >= 2 codewords, got {codebook_size}.")
        if n_mfcc < 1:
            raise ValueError(f"MFCCVQ: n_mfcc must be >= 1, got {n_mfcc}.")
        self.frontend = frontend
        self.codebook_size = int(codebook_size)
        self.n_mfcc = int(n_mfcc)
        self.seed = int(seed)
        self.kmeans = None
        self.mean: Optional[np.ndarray] = None
        self.std: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return self.codebook_size

    def _frames(self, waveforms: np.ndarray) -> np.ndarray:
        return mfcc_frames(waveforms, self.frontend, self.n_mfcc, deltas=True)

    def fit(self, waveforms: np.ndarray) -> "MFCCVQ":
        """Fit the standardisation and the codebook on training crops ``[b, samples]``.

        Raises:
            ValueError: fewer frames than codewords.
        """
        from sklearn.cluster import MiniBatchKMeans

        frames = self._frames(waveforms).reshape(-1, 3 * self.n_mfcc).astype(np.float64)
        if frames.shape[0] < self.codebook_size:
            raise ValueError(f"MFCCVQ.fit: {frames.shape[0]} training frames cannot fit {self.codebook_size} "
                             "codewords; give more training crops or a smaller codebook (--vq-codebook).")
        self.mean = frames.mean(axis=0)
        self.std = np.maximum(frames.std(axis=0), 1e-8)
        z = (frames - self.mean) / self.std
        self.kmeans = MiniBatchKMeans(n_clusters=self.codebook_size, random_state=self.seed, n_init=3,
                                      batch_size=max(1024, 4 * self.codebook_size))
        self.kmeans.fit(z)
        return self

    def codewords(self, waveforms: np.ndarray) -> np.ndarray:
        """int ``[b, frames]``: the codeword of every frame."""
        if self.kmeans is None:
            raise RuntimeError("MFCCVQ: call fit() on training crops before encoding.")
        f = self._frames(waveforms)
        b, t, d = f.shape
        z = (f.reshape(-1, d).astype(np.float64) - self.mean) / self.std
        return self.kmeans.predict(z).reshape(b, t)

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        codes = self.codewords(waveforms)
        b, t = codes.shape
        hist = np.zeros((b, self.codebook_size), np.float32)
        np.add.at(hist, (np.repeat(np.arange(b), t), codes.ravel()), 1.0)
        return hist / np.float32(t)


class MFCCStats:
    """Mean and standard deviation of ``n_mfcc`` MFCCs over a crop, z-scored.

    Args:
        frontend: the run's frontend configuration.
        n_mfcc: coefficients (20, librosa's default).

    Call:
        ``stats(waveforms)`` with float32 ``[b, samples]`` returns float32
        ``[b, 2 * n_mfcc]`` (means, then deviations), each dimension standardised with
        the training crops' statistics from :meth:`fit` (so no coefficient dominates
        the Euclidean distance).
    """

    def __init__(self, frontend: FrontendConfig, n_mfcc: int = 20) -> None:
        if n_mfcc < 1:
            raise ValueError(f"MFCCStats: n_mfcc must be >= 1, got {n_mfcc}.")
        self.frontend = frontend
        self.n_mfcc = int(n_mfcc)
        self.mean: Optional[np.ndarray] = None
        self.std: Optional[np.ndarray] = None

    @property
    def dim(self) -> int:
        return 2 * self.n_mfcc

    def raw(self, waveforms: np.ndarray) -> np.ndarray:
        """float32 ``[b, 2 * n_mfcc]`` before standardisation."""
        f = mfcc_frames(waveforms, self.frontend, self.n_mfcc)
        return np.concatenate([f.mean(axis=1), f.std(axis=1)], axis=1).astype(np.float32)

    def fit(self, waveforms: np.ndarray) -> "MFCCStats":
        """Measure the standardisation on training crops ``[b, samples]`` (``b >= 2``)."""
        x = self.raw(waveforms).astype(np.float64)
        if x.shape[0] < 2:
            raise ValueError("MFCCStats.fit: need at least 2 training crops to measure a deviation.")
        self.mean = x.mean(axis=0)
        self.std = np.maximum(x.std(axis=0), 1e-8)
        return self

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("MFCCStats: call fit() on training crops before encoding.")
        return ((self.raw(waveforms) - self.mean) / self.std).astype(np.float32)


def training_crops(audio: Mapping[str, np.ndarray], track_ids: Sequence[str], config: Config,
                   max_tracks: int = DEFAULT_FIT_TRACKS, crops_per_track: int = DEFAULT_FIT_CROPS_PER_TRACK,
                   seed: int = 0) -> np.ndarray:
    """Random waveform crops of (a seeded sample of) training tracks, to fit baselines.

    Args:
        audio: ``{track_id: float32 [samples]}`` at ``frontend.sample_rate``; may decode
            lazily (only the sampled tracks are read, each once).
        track_ids: the training split.
        config: gives the crop length.
        max_tracks: tracks sampled at most.
        crops_per_track: crops per sampled track, uniformly placed (overlap allowed).
        seed: seeds the choice of tracks and crop starts.

    Returns:
        float32 ``[n, segment_samples]``; a track shorter than a segment is zero-padded.
    """
    if not track_ids:
        raise ValueError("training_crops: the training split is empty; the baselines cannot be fitted.")
    if max_tracks < 1 or crops_per_track < 1:
        raise ValueError(f"training_crops: max_tracks ({max_tracks}) and crops_per_track ({crops_per_track}) must be >= 1.")
    rng = np.random.default_rng(seed)
    seg = config.frontend.segment_samples
    chosen = sorted(rng.choice(len(track_ids), size=min(max_tracks, len(track_ids)), replace=False))
    crops = []
    for i in chosen:
        y = np.asarray(audio[track_ids[i]], np.float32)
        for _ in range(crops_per_track):
            start = int(rng.integers(0, max(1, y.size - seg + 1)))
            c = y[start:start + seg]
            crops.append(c if c.size == seg else np.pad(c, (0, seg - c.size)))
    return np.stack(crops)


def untrained_embedder(config: Config, seed: int = 0, batch_size: int = 64):
    """The run's architecture with random (seeded) weights, as an embedder.

    Builds ``disentangled_ml.models.build_embedding_model(config, waveform_input=True)``
    after ``keras.utils.set_random_seed(seed)`` (which also seeds Python's and numpy's
    global generators: Keras 3 initialisers draw from the global seed).

    Returns:
        :class:`disentangled_ml.evaluation.embedders.KerasEmbedder` mapping float32
        ``[b, segment_samples]`` to ``[b, embedding_dim]``.
    """
    import keras

    from disentangled_ml.evaluation.embedders import KerasEmbedder
    from disentangled_ml.models.embedding import build_embedding_model

    keras.utils.set_random_seed(seed)
    model = build_embedding_model(config, waveform_input=True, name="untrained_embedding")
    return KerasEmbedder(model, batch_size=batch_size)
