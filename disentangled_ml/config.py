"""Every tunable number of the project, in one frozen config object.

Modelled on YAMNet's ``params.py``: one frozen dataclass per stage, composed into
:class:`Config`, which is written as ``config.json`` next to every prepared
collection, checkpoint and export. Values are validated on construction, so a bad
value fails with a message that names it, before any work starts.

Units are in the field names or comments: seconds, Hz, samples, BPM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

# config is the bottom layer: from the package it imports only leaf modules without
# TensorFlow (errors, pitch_bands, the version); tests/test_layering.py holds it to that.
from disentangled_ml.errors import ConfigError

DEFAULT_CONDITIONS: Tuple[str, ...] = ("genre", "mood", "instrument", "tempo")
#: Conditions whose labels are sets of tags (a track may carry several, "|"-separated).
TAG_CONDITIONS: Tuple[str, ...] = ("genre", "mood", "instrument")
TRACK_CONDITION = "track"


#: Values of ``data.mining`` (see :mod:`disentangled_ml.losses`).
MINING_MODES = ("random", "batch_hard", "semi_hard", "in_batch_all", "in_batch_hard", "in_batch_contrastive")


def _check(cond: bool, name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"config value {name}={value!r} is invalid: expected {expected}.")


#: The largest pitch-STFT decimation :func:`auto_pitch_decimation` picks: the factor the 0.9
#: default was trained and measured with at 22,050 Hz.
MAX_AUTO_PITCH_DECIMATION = 4


def auto_pitch_decimation(sample_rate: int, pitch_n_fft: int, hop_length: int, pitch_fmax: float) -> int:
    """The largest power of two ``d <= 4`` that decimates the pitch STFT safely, else 1.

    ``d`` must divide ``pitch_n_fft`` and ``hop_length`` (the frames stay aligned), leave at
    least 64 FFT points, and leave the anti-alias filter room: the lowest frequency that would
    alias below ``pitch_fmax`` (``sample_rate / d - pitch_fmax``) must be at least
    ``1.5 * pitch_fmax``, because a narrower transition band needs a far longer FIR. At the default
    22,050 Hz and 2,100 Hz that band is 2,100-3,412 Hz and ``d`` is 4 (a 63-tap filter); at
    16 kHz ``d`` is 2; at 8 kHz with 880 Hz, 2.
    """
    d = MAX_AUTO_PITCH_DECIMATION
    while d > 1:
        if (pitch_n_fft % d == 0 and hop_length % d == 0 and pitch_n_fft // d >= 64
                and sample_rate / d - pitch_fmax >= 1.5 * pitch_fmax):
            return d
        d //= 2
    return 1


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel frontend (Park et al. 2018, as used by Lee et al. 2020).

    The frontend runs inside the TF graph (training pipeline and every export), so
    these numbers are the whole contract between raw audio and the network.
    """

    sample_rate: int = 22050  # Hz; every file is resampled to this on decode.
    segment_seconds: float = 3.0  # length of one training / embedding patch.
    n_fft: int = 1024  # samples per STFT window (46 ms at 22,050 Hz).
    hop_length: int = 512  # samples between frames (23 ms).
    n_mels: int = 128
    fmin: float = 0.0  # Hz
    fmax: Optional[float] = None  # Hz; None = sample_rate / 2.
    power: float = 2.0  # 2 = power spectrogram, as librosa.feature.melspectrogram's default.
    log_multiplier: float = 10.0  # compression log10(1 + log_multiplier * S).
    # Fixed standardisation statistics of the compressed mel, measured on training-split
    # tracks when `dml train` starts a run (training.prepare_run; 0 / 1 leaves the patch unscaled).
    norm_mean: float = 0.0
    norm_std: float = 1.0
    # Pitch bands, appended to the mel bands (0 bands per octave = the paper's frontend
    # alone). A log-frequency spectrogram: madmom's LogarithmicFilterbank, the input of
    # its chord-recognition CNN, on a longer STFT centred on the same frames. The mel
    # bands are 26 Hz wide below 1 kHz and the 1024-sample STFT's bins 21.5 Hz, wider
    # than a semitone below ~370 Hz, so major and minor harmony look alike there; see
    # README, "The frontend", for the measurement that made this the default.
    pitch_bands_per_octave: int = 24
    pitch_n_fft: int = 4096  # samples (186 ms at 22,050 Hz: 5.4 Hz bins)
    pitch_fmin: float = 65.0  # Hz (about C2)
    pitch_fmax: float = 2100.0  # Hz (about C7)
    # Pitch-band STFT on a decimated signal: low-pass (a Kaiser FIR, at least 60 dB down where
    # an alias would land below pitch_fmax), keep every pitch_decimation-th sample, then a
    # pitch_n_fft / pitch_decimation-point STFT: the same window span and the same 5.4 Hz bins,
    # a quarter of the FFT at 4. The full-rate 4096-point STFT was most of the exported
    # frontend's time; at 4 the bands move by at most .0034 and both synthetic collections
    # train to the same accuracies (benchmarks/RESULTS.md, "0.9"). None (the default) = the
    # largest factor the other fields allow (:func:`auto_pitch_decimation`: 4 at 22,050 Hz,
    # 2 at 16 kHz), so a user who changes the sample rate never meets a decimation error; an
    # integer is used as given (1 = the full-rate STFT, what every version before 0.9
    # computed; a config saved by one without the key gets 1).
    pitch_decimation: Optional[int] = None

    def __post_init__(self) -> None:
        _check(self.sample_rate >= 8000, "frontend.sample_rate", self.sample_rate, "an integer >= 8000 Hz")
        _check(self.segment_seconds > 0, "frontend.segment_seconds", self.segment_seconds, "> 0 seconds")
        _check(self.n_fft >= 64 and (self.n_fft & (self.n_fft - 1)) == 0, "frontend.n_fft", self.n_fft,
               "a power of two >= 64 (the frontend's factorised DFT needs a power of two)")
        _check(0 < self.hop_length <= self.n_fft, "frontend.hop_length", self.hop_length, "1..n_fft samples")
        _check(self.n_mels >= 8, "frontend.n_mels", self.n_mels, ">= 8 bands")
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        _check(0 <= self.fmin < fmax <= self.sample_rate / 2, "frontend.fmin/fmax", (self.fmin, self.fmax),
               "0 <= fmin < fmax <= sample_rate/2 Hz")
        _check(self.power in (1.0, 2.0), "frontend.power", self.power, "1 (magnitude) or 2 (power)")
        _check(self.log_multiplier > 0, "frontend.log_multiplier", self.log_multiplier, "> 0")
        _check(self.norm_std > 0, "frontend.norm_std", self.norm_std, "> 0")
        if self.segment_samples < self.n_fft:
            raise ConfigError("config value frontend.segment_seconds is shorter than one STFT window (n_fft).")
        _check(isinstance(self.pitch_bands_per_octave, int) and self.pitch_bands_per_octave >= 0,
               "frontend.pitch_bands_per_octave", self.pitch_bands_per_octave, "an integer >= 0 (0 = no pitch bands)")
        if self.pitch_bands_per_octave:
            _check(self.pitch_n_fft >= self.n_fft and (self.pitch_n_fft & (self.pitch_n_fft - 1)) == 0,
                   "frontend.pitch_n_fft", self.pitch_n_fft, f"a power of two >= n_fft ({self.n_fft})")
            _check(0 < self.pitch_fmin < self.pitch_fmax <= self.sample_rate / 2, "frontend.pitch_fmin/pitch_fmax",
                   (self.pitch_fmin, self.pitch_fmax), "0 < pitch_fmin < pitch_fmax <= sample_rate/2 Hz")
            d = self.pitch_decimation
            if d is None:  # auto: a factor that passes the checks below by construction
                return
            _check(isinstance(d, int) and d >= 1, "frontend.pitch_decimation", d,
                   "an integer >= 1 (1 = no decimation) or null (the largest factor the sample rate allows)")
            if d > 1:
                _check(self.pitch_n_fft % d == 0 and self.hop_length % d == 0 and (self.pitch_n_fft // d) >= 64,
                       "frontend.pitch_decimation", d,
                       "a divisor of frontend.pitch_n_fft and frontend.hop_length leaving >= 64 FFT points")
                _check(self.pitch_fmax < self.sample_rate / (2 * d), "frontend.pitch_decimation", d,
                       f"small enough that pitch_fmax ({self.pitch_fmax:g} Hz) stays below the decimated Nyquist "
                       f"frequency sample_rate / (2 * pitch_decimation)")

    @property
    def pitch_decimation_factor(self) -> int:
        """The pitch STFT's decimation factor in use: ``pitch_decimation``, or when it is None
        :func:`auto_pitch_decimation` of the other fields (1 without pitch bands)."""
        if not self.pitch_bands_per_octave:
            return 1
        if self.pitch_decimation is not None:
            return int(self.pitch_decimation)
        return auto_pitch_decimation(self.sample_rate, self.pitch_n_fft, self.hop_length, self.pitch_fmax)

    def resolved(self) -> "FrontendConfig":
        """This config with ``pitch_decimation`` set to :attr:`pitch_decimation_factor`: what a saved
        frontend layer records, and what two frontends are compared by (None and the factor it picks
        compute the same bands)."""
        return dataclasses.replace(self, pitch_decimation=self.pitch_decimation_factor)

    @property
    def segment_samples(self) -> int:
        """Samples in one segment (66,150 for 3 s at 22,050 Hz)."""
        return int(round(self.segment_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Mel frames in one segment: 1 + (segment_samples - n_fft) // hop (no centre padding)."""
        return 1 + (self.segment_samples - self.n_fft) // self.hop_length

    @property
    def n_pitch_bands(self) -> int:
        """Pitch bands after the mel bands (0 when ``pitch_bands_per_octave`` is 0).

        madmom merges the log-spaced filters that fall on the same STFT bin, so the
        count comes from building the filterbank (cached, the one the frontend uses),
        not from a formula.
        """
        if not self.pitch_bands_per_octave:
            return 0
        from disentangled_ml.pitch_bands import band_count  # lazy: numpy and madmom, no TensorFlow

        return band_count(self.sample_rate, self.pitch_n_fft, self.pitch_bands_per_octave,
                          self.pitch_fmin, self.pitch_fmax)

    @property
    def n_bands(self) -> int:
        """Frequency bands of the frontend's output: ``n_mels + n_pitch_bands``."""
        return self.n_mels + self.n_pitch_bands

    @property
    def mel_fmax(self) -> float:
        return float(self.sample_rate / 2 if self.fmax is None else self.fmax)


@dataclass(frozen=True)
class ConditionConfig:
    """Which similarity conditions exist and which slice of the embedding each owns."""

    names: Tuple[str, ...] = DEFAULT_CONDITIONS
    embedding_dim: int = 256
    tempo_positive_bpm: float = 5.0  # |BPM_a - BPM_p| <= this: similar in tempo (the paper's rule).
    tempo_negative_bpm: float = 10.0  # |BPM_a - BPM_n| > this: dissimilar; the gap between is never used.
    # {tag condition: number of classes in the collection}: written by `dml train` from the
    # prepared collection's labels (like frontend.norm_mean), read by the classification term
    # of the loss (loss.class_weight) to size its class proxies. None: not known (no proxies).
    class_counts: Optional[Dict[str, int]] = None

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if self.class_counts is not None:
            counts = dict(self.class_counts)
            _check(set(counts) <= set(names), "conditions.class_counts", counts,
                   f"keys among conditions.names {list(names)}")
            _check(all(isinstance(k, int) and k >= 1 for k in counts.values()), "conditions.class_counts",
                   counts, "positive integers (classes per tag condition)")
            object.__setattr__(self, "class_counts", counts)
        _check(len(names) >= 1, "conditions.names", names, "at least one condition")
        _check(len(set(names)) == len(names), "conditions.names", names, "distinct names")
        _check(TRACK_CONDITION not in names, "conditions.names", names,
               f"no condition called {TRACK_CONDITION!r} (it is reserved for track triplets)")
        _check(self.embedding_dim % len(names) == 0, "conditions.embedding_dim", self.embedding_dim,
               f"a multiple of the number of conditions ({len(names)})")
        _check(self.tempo_positive_bpm > 0, "conditions.tempo_positive_bpm", self.tempo_positive_bpm, "> 0 BPM")
        _check(self.tempo_negative_bpm >= self.tempo_positive_bpm, "conditions.tempo_negative_bpm",
               self.tempo_negative_bpm, ">= tempo_positive_bpm")

    @property
    def slice_dim(self) -> int:
        return self.embedding_dim // len(self.names)

    @property
    def slices(self) -> Dict[str, Tuple[int, int]]:
        """{condition: (start, stop)} in embedding dimensions; contiguous, equal width."""
        d = self.slice_dim
        return {name: (i * d, (i + 1) * d) for i, name in enumerate(self.names)}


@dataclass(frozen=True)
class DataConfig:
    """Splits, crops and triplet mining of the tf.data pipeline."""

    split_fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test, by track.
    split_seed: int = 0
    seed: int = 0  # seeds crops and mining; the pipeline is deterministic for it.
    # Triplets are mined inside a pool of decoded tracks, so a collection larger than
    # memory streams through: each track gives one random excerpt per pass.
    pool_size: int = 256  # tracks per pool
    excerpt_seconds: float = 12.0  # excerpt kept per track per pass; crops are cut from it.
    triplets_per_track: int = 8  # triplets mined per track in each pool.
    track_triplet_ratio: float = 0.2  # share of track (regularisation) triplets in the mix.
    class_balanced: bool = True  # draw the anchor's class uniformly, not by its frequency.
    max_track_overlap: float = 0.5  # track triplets: anchor/positive crops overlap at most this.
    # "random": the sampled triplets (the paper); "batch_hard" / "semi_hard": a selection of them;
    # "in_batch_all" / "in_batch_hard": every triplet the labels allow among all crops of a batch
    # (see disentangled_ml.losses); "in_batch_contrastive": the same pairs in a softmax over every
    # candidate of an anchor (supervised contrastive, loss.temperature) instead of a margin. in_batch_all is the default: on the 400-track synthetic
    # collection it matched the paper's sampling in half the steps, at no measurable cost per step
    # (benchmarks/RESULTS.md).
    mining: str = "in_batch_all"
    eval_triplets_per_condition: int = 500  # fixed validation/test triplet sets, per condition.
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    # Decoded-audio cache: "memory", "none", a directory for tf.data's file cache, or "auto":
    # memory when the split's decoded audio (int16) fits in data.cache_memory_fraction of the
    # machine's RAM, else none (each pass decodes again), with a warning.
    cache: str = "auto"
    cache_memory_fraction: float = 0.5
    # What the cache holds. True: the frontend's output of each whole track (float16), computed
    # once, so every later pass cuts excerpts and crops as frame slices of it and computes no
    # STFT at all. False: the decoded audio (int16), with the log-mel of each excerpt computed
    # again every pass (the 0.2 pipeline). With data.cache resolving to "none" nothing is cached
    # and the excerpt path is used either way.
    cache_features: bool = True
    silence_rms_db: float = -60.0  # a file whose RMS is below this (dBFS) is rejected as silent.
    # Range of madmom's tempo search in `dml prepare` (madmom's own defaults).
    tempo_min_bpm: float = 40.0
    tempo_max_bpm: float = 250.0
    # Audio shards (`dml prepare --cache-audio`) read at once, records interleaved in a
    # fixed order; it sets the order tracks enter the pipeline, so it is part of the config.
    shard_cycle_length: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        _check(len(self.split_fractions) == 3 and all(f >= 0 for f in self.split_fractions)
               and abs(sum(self.split_fractions) - 1) < 1e-6 and self.split_fractions[0] > 0,
               "data.split_fractions", self.split_fractions, "three non-negative fractions summing to 1")
        _check(self.pool_size >= 4, "data.pool_size", self.pool_size, ">= 4 tracks")
        _check(self.excerpt_seconds > 0, "data.excerpt_seconds", self.excerpt_seconds, "> 0 seconds")
        _check(self.triplets_per_track >= 1, "data.triplets_per_track", self.triplets_per_track, ">= 1")
        _check(0 <= self.track_triplet_ratio <= 1, "data.track_triplet_ratio", self.track_triplet_ratio, "in [0, 1]")
        _check(0 <= self.max_track_overlap < 1, "data.max_track_overlap", self.max_track_overlap, "in [0, 1)")
        _check(self.mining in MINING_MODES, "data.mining", self.mining,
               "one of " + ", ".join(repr(m) for m in MINING_MODES))
        _check(0 < self.cache_memory_fraction <= 1, "data.cache_memory_fraction", self.cache_memory_fraction,
               "in (0, 1]")
        _check(bool(self.cache), "data.cache", self.cache, "'auto', 'memory', 'none' or a directory")
        _check(self.eval_triplets_per_condition >= 1, "data.eval_triplets_per_condition",
               self.eval_triplets_per_condition, ">= 1")
        _check(self.num_parallel_calls == -1 or self.num_parallel_calls >= 1, "data.num_parallel_calls",
               self.num_parallel_calls, "-1 (autotune) or >= 1")
        _check(self.silence_rms_db < 0, "data.silence_rms_db", self.silence_rms_db, "< 0 dBFS")
        _check(0 < self.tempo_min_bpm < self.tempo_max_bpm, "data.tempo_min_bpm/tempo_max_bpm",
               (self.tempo_min_bpm, self.tempo_max_bpm), "0 < tempo_min_bpm < tempo_max_bpm BPM")
        _check(self.shard_cycle_length >= 1, "data.shard_cycle_length", self.shard_cycle_length, ">= 1 shard")


#: Backbone families (:mod:`disentangled_ml.models.backbones`) and what a config that names one
#: without a width or onset lags gets. The four paper families keep the paper's shape (a 5x5 stem
#: at full resolution, width 64, no onset branch), so a config that names the 0.2 default
#: (``"inception"``) builds the 0.2 network. ``inception_lite`` is the default since 0.3: the same
#: Inception blocks behind a strided 3x3 stem, width 32, plus the onset-autocorrelation branch;
#: it was chosen by measured time to accuracy (benchmarks/RESULTS.md, "Time to accuracy").
#: ``stem_stride`` is the stem convolution's (time, frequency) stride: since 0.4 the lean stem
#: strides time only, so the first block still resolves semitones in the pitch bands (24 an
#: octave, halved once by the stem's pooling); 0.3 strode both axes. ``chroma_templates`` is the
#: harmony branch (:mod:`disentangled_ml.models.harmony`), on in ``inception_lite`` since 0.5;
#: ``timbre_filters`` the timbre branch (:mod:`disentangled_ml.models.timbre`), since 0.6.
BACKBONE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "plain": {"width": 64, "onset_lags": 0, "stem_stride": (1, 1), "chroma_templates": 0, "timbre_filters": 0},
    "resnet": {"width": 64, "onset_lags": 0, "stem_stride": (1, 1), "chroma_templates": 0, "timbre_filters": 0},
    "se": {"width": 64, "onset_lags": 0, "stem_stride": (1, 1), "chroma_templates": 0, "timbre_filters": 0},
    "inception": {"width": 64, "onset_lags": 0, "stem_stride": (1, 1), "chroma_templates": 0, "timbre_filters": 0},
    "inception_lite": {"width": 32, "onset_lags": 96, "stem_stride": (2, 1), "chroma_templates": 32,
                       "timbre_filters": 32},
}
#: Family-resolved keys of ``model``: None takes the family's value, and a change of family
#: resets them unless they are set too (:meth:`Config.replace`).
FAMILY_KEYS = ("width", "onset_lags", "stem_stride", "chroma_templates", "timbre_filters")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and masks.

    ``width`` and ``onset_lags`` left at None take the family's value from
    :data:`BACKBONE_DEFAULTS`; the saved config always holds the resolved numbers.
    """

    backbone: str = "inception_lite"  # a key of BACKBONE_DEFAULTS; "inception" is the paper's network.
    width: Optional[int] = None  # filters of the stem; blocks scale from it. None: the family's.
    # Onset-autocorrelation branch (a tempogram in the graph): the autocorrelation of the
    # log-mel's spectral flux at lags 1..onset_lags frames (96 frames = 2.2 s, two beats at
    # 55 BPM), fed next to the CNN's pooled features. 0 = none. None: the family's.
    onset_lags: Optional[int] = None
    # (time, frequency) stride of the stem convolution. None: the family's.
    stem_stride: Optional[Tuple[int, int]] = None
    # Conditions whose slices the onset branch feeds (fixed masks); None: the whole embedding
    # (0.3, and always with learned masks or none). Tempo alone since 0.4: an onset
    # autocorrelation nearly identifies a track by its rhythm, and fed to every slice it let
    # the instrument slice memorise training tracks (benchmarks/RESULTS.md).
    onset_conditions: Optional[Tuple[str, ...]] = ("tempo",)
    # Harmony branch: the pitch bands folded into a 12-class pitch-class profile, matched with
    # this many learned templates in all 12 transpositions (max over transpositions: a
    # key-invariant reading of major, minor and seventh harmony). Needs pitch bands. 0 = none.
    # None: the family's (32 in inception_lite since 0.5).
    chroma_templates: Optional[int] = None
    # Conditions whose slices the harmony branch feeds (fixed masks), as onset_conditions.
    chroma_conditions: Optional[Tuple[str, ...]] = ("mood",)
    # Timbre branch: this many tall filters (5 frames by a quarter of the mel bands) over the
    # log-mel, max-pooled over frequency, mean- and max-pooled over time (Pons et al. 2017).
    # 0 = none. None: the family's (32 in inception_lite since 0.6).
    timbre_filters: Optional[int] = None
    # Conditions whose slices the timbre branch feeds (fixed masks), as onset_conditions.
    timbre_conditions: Optional[Tuple[str, ...]] = ("instrument",)
    mask_mode: str = "fixed"  # "fixed" slices, "learned" (CSN) or "none" (one global space).
    # Fixed masks: normalise each condition's slice to norm 1/sqrt(conditions) rather than the
    # whole vector to 1 (still unit norm overall). With one global norm the slices compete for it:
    # the 0.5 default's tempo slice took .80 of it and the instrument slice .25, so the same margin
    # asked four times more of instrument (benchmarks/RESULTS.md). Since 0.6.
    slice_norm: bool = True
    dropout: float = 0.0
    # Batch-norm moving-statistics momentum (Keras' default); lower it for short runs,
    # whose inference-mode statistics otherwise still lag the training batches.
    batchnorm_momentum: float = 0.99

    def __post_init__(self) -> None:
        _check(self.backbone in BACKBONE_DEFAULTS, "model.backbone", self.backbone,
               "one of " + ", ".join(repr(b) for b in BACKBONE_DEFAULTS))
        family = BACKBONE_DEFAULTS[self.backbone]
        if self.width is None:
            object.__setattr__(self, "width", family["width"])
        if self.onset_lags is None:
            object.__setattr__(self, "onset_lags", family["onset_lags"])
        if self.stem_stride is None:
            object.__setattr__(self, "stem_stride", family["stem_stride"])
        if self.chroma_templates is None:
            object.__setattr__(self, "chroma_templates", family["chroma_templates"])
        if self.timbre_filters is None:
            object.__setattr__(self, "timbre_filters", family["timbre_filters"])
        _check(isinstance(self.stem_stride, (list, tuple)) and len(self.stem_stride) == 2
               and all(isinstance(v, int) and v >= 1 for v in self.stem_stride), "model.stem_stride",
               self.stem_stride, "two integers >= 1: the stem's (time, frequency) stride")
        object.__setattr__(self, "stem_stride", tuple(self.stem_stride))  # JSON gives a list
        for key in ("onset_conditions", "chroma_conditions", "timbre_conditions"):
            routed = getattr(self, key)
            if routed is not None:
                _check(isinstance(routed, (list, tuple)) and len(routed) >= 1 and all(isinstance(n, str) for n in routed),
                       f"model.{key}", routed, "a list of condition names, or null for the whole embedding")
                object.__setattr__(self, key, tuple(routed))  # JSON gives a list
        _check(isinstance(self.width, int) and self.width >= 4, "model.width", self.width, "an integer >= 4 filters")
        _check(isinstance(self.onset_lags, int) and self.onset_lags >= 0, "model.onset_lags", self.onset_lags,
               "an integer >= 0 frames (0 = no onset branch)")
        _check(isinstance(self.chroma_templates, int) and self.chroma_templates >= 0, "model.chroma_templates",
               self.chroma_templates, "an integer >= 0 templates (0 = no harmony branch)")
        _check(isinstance(self.timbre_filters, int) and self.timbre_filters >= 0, "model.timbre_filters",
               self.timbre_filters, "an integer >= 0 filters (0 = no timbre branch)")
        _check(self.mask_mode in ("fixed", "learned", "none"), "model.mask_mode", self.mask_mode,
               "'fixed', 'learned' or 'none'")
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
        _check(isinstance(self.slice_norm, bool), "model.slice_norm", self.slice_norm, "true or false")
        _check(0 < self.batchnorm_momentum < 1, "model.batchnorm_momentum", self.batchnorm_momentum, "in (0, 1)")


@dataclass(frozen=True)
class LossConfig:
    """L = L_cond + track_weight * L_track (+ CSN penalties for learned masks)."""

    margin: float = 0.1  # the paper's margin, on L2-normalised embeddings.
    track_weight: float = 0.5  # lambda, the paper's value.
    # CSN: L1 penalty on learned masks. CSN used 5e-4 on [4, 64] masks; ours are [4, 256], so the
    # per-entry weight is scaled by 64/256 to keep the penalty's size relative to the triplet loss.
    mask_l1: float = 1.25e-4
    embed_norm: float = 5e-3  # CSN: penalty on the un-normalised embedding norm.
    hard_fraction: float = 0.5  # data.mining="batch_hard": share of each condition's triplets kept, hardest first.
    # data.mining="in_batch_contrastive": logits are -(squared distance in the view) / temperature.
    # On per-slice-normalised slices (norm 1/2) that is cos / (2 * temperature) plus a constant,
    # so 0.05 is supervised contrastive learning's usual cosine temperature of 0.1.
    temperature: float = 0.05
    # Weight of the classification term added to the triplet loss (0 turns it off): per tag
    # condition, a normalised-softmax classifier over that condition's view, one learned proxy per
    # class (Zhai & Wu 2019, "Classification is a strong baseline for deep metric learning"; softmax
    # beside the triplet loss as in Luo et al. 2019, "Bag of tricks ... for person re-identification").
    # The triplet loss sees B triplets a step; the classifier sees every one of the 3B crops against
    # every class, which is what the instrument slice lacked: with it (1.0, the default since 0.8)
    # validation instrument passed .85 after 1,500 steps on the drummed collection, where the 0.5
    # network never passed .69 in 3,000 (benchmarks/RESULTS.md, "0.8"). 0 is the paper's objective.
    class_weight: float = 1.0
    # logits are cos(view, proxy) / class_temperature
    class_temperature: float = 0.05

    def __post_init__(self) -> None:
        _check(self.margin >= 0, "loss.margin", self.margin, ">= 0 (a negative margin rewards wrong orderings)")
        _check(self.track_weight >= 0, "loss.track_weight", self.track_weight, ">= 0 (lambda)")
        _check(self.mask_l1 >= 0, "loss.mask_l1", self.mask_l1, ">= 0")
        _check(self.embed_norm >= 0, "loss.embed_norm", self.embed_norm, ">= 0")
        _check(0 < self.hard_fraction <= 1, "loss.hard_fraction", self.hard_fraction, "in (0, 1]")
        _check(self.temperature > 0, "loss.temperature", self.temperature, "> 0")
        _check(self.class_weight >= 0, "loss.class_weight", self.class_weight, ">= 0 (0 turns the term off)")
        _check(self.class_temperature > 0, "loss.class_temperature", self.class_temperature, "> 0")


#: Values of ``train.lr_schedule``.
LR_SCHEDULES = ("cosine", "plateau")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and stopping rule.

    ``lr_schedule="cosine"`` (the default since 0.3): a linear warm-up over ``warmup_steps``
    to ``learning_rate``, then a cosine decay to ``learning_rate * lr_final_fraction`` at
    ``epochs * steps_per_epoch`` steps, so the run's length is known when it starts and
    ends on a small step. ``"plateau"`` is the paper's: Adam at ``learning_rate``,
    multiplied by ``lr_factor`` when the validation loss stalls for ``lr_patience`` epochs.
    Both stop early after ``early_stopping_patience`` epochs without a better validation
    mean triplet accuracy and keep the best epoch's weights.
    """

    batch_size: int = 32  # triplets per step
    # Adam's peak step. 1e-3, not the paper's 0.01: with the width-64 Inception at 0.01 the
    # instrument slice stayed at chance until the first plateau drop (benchmarks/RESULTS.md).
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 200  # cosine: linear warm-up from 0 (Adam's first steps are the noisiest)
    lr_final_fraction: float = 0.01  # cosine: the last step's rate, as a fraction of learning_rate
    lr_factor: float = 0.2  # plateau: learning rate multiplied by this when validation loss stalls
    lr_patience: int = 3  # plateau: epochs
    early_stopping_patience: int = 8  # epochs without a better validation mean triplet accuracy
    # 3,000 steps: about 45 minutes of `dml train` on a 2-core x86 CPU with the default network
    # (benchmarks/RESULTS.md, "Time to accuracy").
    epochs: int = 12
    steps_per_epoch: int = 250

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, ">= 1")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "> 0")
        _check(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", self.lr_schedule,
               "one of " + ", ".join(repr(m) for m in LR_SCHEDULES))
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "train.warmup_steps",
               self.warmup_steps, "an integer >= 0 steps")
        _check(0 <= self.lr_final_fraction <= 1, "train.lr_final_fraction", self.lr_final_fraction, "in [0, 1]")
        _check(0 < self.lr_factor < 1, "train.lr_factor", self.lr_factor, "in (0, 1)")
        _check(self.lr_patience >= 1, "train.lr_patience", self.lr_patience, ">= 1 epoch")
        _check(self.early_stopping_patience >= 1, "train.early_stopping_patience",
               self.early_stopping_patience, ">= 1 epoch")
        _check(self.epochs >= 1, "train.epochs", self.epochs, ">= 1")
        _check(self.steps_per_epoch >= 1, "train.steps_per_epoch", self.steps_per_epoch, ">= 1")

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the cosine schedule's length)."""
        return self.epochs * self.steps_per_epoch


_SECTIONS = {
    "frontend": FrontendConfig,
    "conditions": ConditionConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``config.json`` everywhere is ``Config.to_dict()``."""

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    conditions: ConditionConfig = field(default_factory=ConditionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return {"version": _package_version(), **{k: dataclasses.asdict(getattr(self, k)) for k in _SECTIONS}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        unknown = set(d) - set(_SECTIONS) - {"version"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; known: {sorted(_SECTIONS)}.")
        sections = {}
        legacy = saved_before(d.get("version"), PITCH_BANDS_SINCE)
        lean_legacy = saved_before(d.get("version"), LEAN_DEFAULTS_SINCE)
        legacy_decimation = saved_before(d.get("version"), DECIMATED_PITCH_SINCE)
        for name, klass in _SECTIONS.items():
            values = dict(d.get(name, {}))
            if legacy and name == "frontend":
                # saved before pitch bands existed: its models were trained on mel bands alone
                values.setdefault("pitch_bands_per_octave", 0)
            if lean_legacy:
                # saved before 0.3: the paper-shaped network, the plateau schedule, audio caches
                values.update({k: v for k, v in _BEFORE_LEAN.get(name, {}).items() if k not in values})
            if name == "model" and saved_before(d.get("version"), TIME_ONLY_STEM_SINCE):
                # saved by 0.3: its lean stem strode time and frequency, its onset branch fed every slice
                if values.get("backbone") == "inception_lite":
                    values.setdefault("stem_stride", (2, 2))
                values.setdefault("onset_conditions", None)
            if name == "model" and saved_before(d.get("version"), HARMONY_SINCE):
                # saved before the harmony branch existed
                values.setdefault("chroma_templates", 0)
            if name == "model" and saved_before(d.get("version"), TIMBRE_SINCE):
                # saved before the timbre branch and per-slice normalisation existed
                values.setdefault("timbre_filters", 0)
                values.setdefault("slice_norm", False)
            if legacy_decimation and name == "frontend":
                # saved before the decimated pitch STFT was the default: its models heard the full rate
                values.setdefault("pitch_decimation", 1)
            if name == "loss" and saved_before(d.get("version"), CLASS_LOSS_SINCE):
                # saved before the classification term existed
                values.setdefault("class_weight", 0.0)
            known = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - known
            if bad:
                raise ConfigError(f"unknown key(s) {sorted(bad)} in config section {name!r}; known: {sorted(known)}.")
            sections[name] = klass(**values)
        return cls(**sections)

    def replace(self, **overrides: Any) -> "Config":
        """Return a copy with dotted overrides, e.g. ``replace(**{"loss.margin": 0.2})``."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                raise ConfigError(f"override {key!r} must look like 'section.key' with section in {sorted(_SECTIONS)}.")
            d[section][name] = value
        if overrides.get("model.backbone", self.model.backbone) != self.model.backbone:
            # another family: its own width and onset branch, unless overridden too
            for k in FAMILY_KEYS:
                if f"model.{k}" not in overrides:
                    d["model"][k] = None
        return Config.from_dict(d)

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json(cls, path: str) -> "Config":
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist.")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        return cls.from_dict(d)

    def hash(self) -> str:
        """Short SHA-1 of the configuration (without the package version).

        Fields in :data:`HASH_NEUTRAL_DEFAULTS` are left out while they hold their neutral
        value, so a config keeps its hash when a later version adds a field whose default
        does what the earlier version did.
        """
        d = self.to_dict()
        d.pop("version")
        for (section, key), neutral in HASH_NEUTRAL_DEFAULTS.items():
            if d.get(section, {}).get(key, object()) == neutral:
                del d[section][key]
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


#: ``{(section, field): value}``: fields added since 0.7 whose value here is what every earlier
#: version did. :meth:`Config.hash` skips them at that value, so the hash that exports, catalogues
#: and tuning trials record for a config stays the same when a newer version reads it.
HASH_NEUTRAL_DEFAULTS = {("frontend", "pitch_decimation"): 1, ("loss", "temperature"): 0.05,
                         ("loss", "class_weight"): 0.0, ("loss", "class_temperature"): 0.05,
                         ("conditions", "class_counts"): None}


#: The package version whose frontend added pitch bands by default. A config saved by an
#: older version (its "version" key) lacks the field and means the mel bands alone; a
#: config without a "version" key (one a user wrote) takes today's defaults.
PITCH_BANDS_SINCE = (0, 2)
#: The version whose defaults became the lean network, the cosine schedule and the feature cache
#: (benchmarks/RESULTS.md, "Time to accuracy"). A config saved by an older version lacks those
#: fields and gets what that version did.
LEAN_DEFAULTS_SINCE = (0, 3)
#: The version whose lean stem strides time only (``model.stem_stride``) and whose onset branch
#: feeds the tempo slice alone (``model.onset_conditions``); a 0.3 config naming
#: ``inception_lite`` without those keys meant stride 2 on both axes and the whole embedding.
TIME_ONLY_STEM_SINCE = (0, 4)
#: The version whose lean network added the harmony branch (``model.chroma_templates``); an older
#: config without the key had none.
HARMONY_SINCE = (0, 5)
#: The version whose lean network added the timbre branch (``model.timbre_filters``) and whose
#: embedding normalises each fixed slice on its own (``model.slice_norm``).
TIMBRE_SINCE = (0, 6)
#: The version whose loss added the classification term (``loss.class_weight``); an older config
#: without the key trained on triplets alone.
CLASS_LOSS_SINCE = (0, 8)
#: The version whose frontend computes the pitch bands on a decimated signal by default
#: (``frontend.pitch_decimation`` 4); an older config without the key used the full rate.
DECIMATED_PITCH_SINCE = (0, 9)
_BEFORE_LEAN: Dict[str, Dict[str, Any]] = {
    "model": {"backbone": "inception", "onset_lags": 0},
    "train": {"lr_schedule": "plateau", "epochs": 100, "steps_per_epoch": 500},
    "data": {"cache_features": False},
}


def saved_before(version: Any, release: Tuple[int, int]) -> bool:
    """True when ``version`` (a config's "version" string) is older than ``release`` (major, minor);
    False for a missing or unparsable version (a config a user wrote takes today's defaults)."""
    if not isinstance(version, str):
        return False
    try:
        return tuple(int(p) for p in version.split(".")[:2]) < release
    except ValueError:
        return False


#: What a prepared collection's config.json owns whatever version wrote it: how its audio was
#: read and labelled and how it is split. The rest (the network, the loss, the schedule) is the method.
COLLECTION_SECTIONS = ("frontend", "conditions", "data")
METHOD_SECTIONS = ("model", "loss", "train")


def config_for_prepared(path: str) -> "Config":
    """The config ``dml train`` / ``dml tune`` start from when given a prepared folder and no --config.

    A config.json that the current minor version wrote is used as it is. One written by an
    older version, whose network, loss and schedule are still that version's defaults (the
    user named none of them), keeps its collection sections (:data:`COLLECTION_SECTIONS`) and
    takes today's defaults for the method: a user who upgrades gets the new network, and
    ``--config PREPARED/config.json`` still trains the old one. Where the user did name the
    method (it differs from that version's defaults), or today's network does not fit the old
    collection sections, the file is kept whole. Both cases are logged as warnings.
    """
    import logging

    __version__ = _package_version()
    log = logging.getLogger("disentangled_ml.cli.train")  # the name this warning has always had
    cfg = Config.from_json(path)
    with open(path) as f:
        saved = json.load(f).get("version")
    if not saved_before(saved, tuple(int(p) for p in __version__.split(".")[:2])):
        return cfg
    defaults_then = Config.from_dict({"version": saved})
    if all(getattr(cfg, s) == getattr(defaults_then, s) for s in METHOD_SECTIONS):
        try:
            current = Config.from_dict({s: dataclasses.asdict(getattr(cfg, s)) for s in COLLECTION_SECTIONS})
        except ConfigError as e:
            log.warning("%s was written by disentangled_ml %s, and %s's default network does not fit its %s (%s): "
                        "training %s's network; pass --config with a new config for today's.",
                        path, saved, __version__, "/".join(COLLECTION_SECTIONS), e, saved)
            return cfg
        log.warning("%s was written by disentangled_ml %s: keeping its %s settings and training %s's default "
                    "network, loss and schedule (pass --config %s to train %s's).",
                    path, saved, "/".join(COLLECTION_SECTIONS), __version__, path, saved)
        return current
    log.warning("%s was written by disentangled_ml %s and names its own network, loss or schedule, so this run "
                "keeps them and that version's defaults for what it does not name; for %s's defaults, pass "
                "--config with a new config.", path, saved, __version__)
    return cfg


def _package_version() -> str:
    from disentangled_ml import __version__

    return __version__
