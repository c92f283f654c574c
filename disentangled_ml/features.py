"""The frontend: waveform -> compressed, standardised log-mel (+ pitch) spectrogram.

The mel bands are the frontend of Park et al. (2018) as used by Lee et al. (2020): a
1024-sample periodic Hann window, hop 512, no centre padding, 128 Slaney mel bands,
power spectrogram, compressed as ``log10(1 + 10 * S)`` and standardised with fixed
statistics. By default *pitch bands* follow them on the frequency axis: a
log-frequency spectrogram (madmom's ``LogarithmicFilterbank``, 24 bands an octave,
65-2100 Hz, the input of madmom's chord CNN) from a 4096-sample window centred on the
same frames, with the same compression. The mel bands cannot tell a major from a
minor third below a few hundred Hz; these can (README, "The frontend").
``frontend.pitch_bands_per_octave = 0`` gives the paper's frontend alone. Every
number comes from :class:`disentangled_ml.config.FrontendConfig`.

It is written in TensorFlow ops that convert to TFLite *builtins* (Gather, MatMul,
Transpose, Mul, Log; the DFT is two passes of matmuls, :class:`DFTPlan`), so the same
graph runs in the ``tf.data`` pipeline, inside the Keras model, in the SavedModel and in
the ``.tflite`` export (docs/design.md, contract 2: the waveform goes in, no client
reimplements the frontend).

Three entry points share one definition:

* :func:`log_mel`: a plain function on tensors, for ``tf.data`` batches.
* :class:`LogMelSpectrogram`: the same as a serialisable Keras 3 layer.
* :func:`log_mel_librosa`: a numpy/librosa reference used by tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from disentangled_ml.config import ConfigError, FrontendConfig
from disentangled_ml.pitch_bands import log_filterbank

__all__ = ["mel_filterbank", "pitch_filterbank", "Filterbanks", "filterbanks",
           "DFTPlan", "dft_plan", "frontend_matmul_weights", "decimation_filter", "log_mel", "log_mel_librosa", "LogMelSpectrogram", "frontend_kwargs"]

_LN10 = math.log(10.0)


def frontend_kwargs(cfg: FrontendConfig) -> Dict[str, Any]:
    """The frontend fields of ``cfg`` as a plain (JSON-serialisable) dict."""
    return dataclasses.asdict(cfg)


def mel_filterbank(cfg: FrontendConfig) -> np.ndarray:
    """Slaney mel filterbank, transposed for right-multiplication.

    We reuse librosa's filterbank rather than ``tf.signal.linear_to_mel_weight_matrix``:
    the latter uses the HTK mel scale without area normalisation, so it would not
    match librosa (and therefore Park et al., whose features were computed with it).

    Args:
        cfg: the frontend configuration.

    Returns:
        np.ndarray, float32, shape ``[n_fft // 2 + 1, n_mels]``.
    """
    import librosa  # lazy: only needed at construction, not inside the graph

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                             fmin=cfg.fmin, fmax=cfg.mel_fmax, dtype=np.float32)
    return np.ascontiguousarray(fb.T, dtype=np.float32)


def pitch_filterbank(cfg: FrontendConfig) -> Optional[np.ndarray]:
    """The pitch bands' log-frequency filterbank, transposed for right-multiplication.

    madmom's ``LogarithmicFilterbank`` (triangular filters, ``pitch_bands_per_octave``
    an octave between ``pitch_fmin`` and ``pitch_fmax``, tuned to A4 = 440 Hz, each
    normalised to unit area, filters that land on the same STFT bin merged), on the
    bins of a ``pitch_n_fft`` STFT. Built and cached by :mod:`disentangled_ml.pitch_bands`,
    where the config counts its bands on the same matrix.

    Args:
        cfg: the frontend configuration.

    Returns:
        np.ndarray, float32, ``[pitch_n_fft // 2 + 1, n_pitch_bands]``, or None when
        ``pitch_bands_per_octave`` is 0.

    Raises:
        ConfigError: the range holds no band.
    """
    if not cfg.pitch_bands_per_octave:
        return None
    return log_filterbank(cfg.sample_rate, cfg.pitch_n_fft, cfg.pitch_bands_per_octave,
                          cfg.pitch_fmin, cfg.pitch_fmax)



def decimation_filter(cfg: FrontendConfig) -> Optional[np.ndarray]:
    """The anti-alias low-pass FIR of the pitch bands' decimation, or None at ``pitch_decimation`` 1.

    A Kaiser-window design (``scipy.signal.kaiserord`` / ``firwin``: the textbook
    method, not reimplemented here) with its passband up to ``pitch_fmax`` and at least
    60 dB of attenuation from ``sample_rate / D - pitch_fmax``: what lies above that edge
    would alias below ``pitch_fmax``; what lies between folds back above it, where no
    pitch band looks. Odd length, symmetric (zero phase once centred).

    Returns:
        float32 ``[taps]``, unit DC gain.
    """
    d = cfg.pitch_decimation_factor
    if d <= 1 or not cfg.pitch_bands_per_octave:
        return None
    from scipy import signal  # lazy: construction only, like librosa above

    nyquist = cfg.sample_rate / 2.0
    stop = cfg.sample_rate / d - cfg.pitch_fmax
    taps, beta = signal.kaiserord(60.0, (stop - cfg.pitch_fmax) / nyquist)
    taps += 1 - taps % 2  # odd: a whole-sample delay, so centring it leaves no phase shift
    h = signal.firwin(taps, (cfg.pitch_fmax + stop) / 2.0, window=("kaiser", beta), fs=cfg.sample_rate)
    return (h / h.sum()).astype(np.float32)


class Filterbanks(NamedTuple):
    """The frontend's constant matrices, each trimmed to the FFT bins it weights.

    ``mel`` is ``[mel_bins[1] - mel_bins[0], n_mels]`` and ``pitch``
    ``[pitch_bins[1] - pitch_bins[0], n_pitch_bands]`` (None without pitch bands): the
    rows of :func:`mel_filterbank` / :func:`pitch_filterbank` from the first to the last
    non-zero one. :func:`log_mel` multiplies only those bins of the spectrum, which gives
    the same bands: the pitch bands span 65-2100 Hz, about 380 of a 4096-point STFT's
    2049 bins, so the full matrix would spend four fifths of the frontend's largest
    matmul on zeros. numpy arrays or tensors; the bin ranges are Python ints.
    """

    mel: Any
    pitch: Any = None
    mel_bins: Tuple[int, int] = (0, 0)
    pitch_bins: Tuple[int, int] = (0, 0)
    decimation: Any = None  # :func:`decimation_filter` (``pitch_decimation`` > 1), else None
    mel_plan: Optional["DFTPlan"] = None  # :func:`dft_plan` of ``mel``; built by log_mel when None
    pitch_plan: Optional["DFTPlan"] = None  # :func:`dft_plan` of ``pitch``; built by log_mel when None


class DFTPlan(NamedTuple):
    """The constants of one band set's filtered power spectrum, computed as a factorised DFT.

    An ``n_fft = P * Q``-point DFT (``P = 2 ** floor(log2(n_fft) / 2)``; 1024 = 32 * 32) is
    Cooley-Tukey's two passes, each one matmul. With ``n = Q * n1 + n2`` and ``k = k1 + P * k2``:
    ``X[k] = sum_n2 W_Q^(n2 k2) sum_n1 x[Q n1 + n2] W_N^((Q n1 + n2) k1)``. The first pass is a
    batch of ``Q`` matmuls (one per ``n2``) whose matrices already hold the twiddle factors
    ``W_N^(n2 k1)``, so no elementwise complex product is needed; the second pass computes only
    the ``K`` groups of bins the filterbank reaches. The filterbank is applied in groups of
    consecutive bands, each on the contiguous bins it weights: a mel or log-frequency band
    touches a few dozen of the 512 bins, so one dense matmul would spend most of its time on zeros.

    Why not ``tf.signal.rfft``: LiteRT's RFFT2D kernel is not delegated to XNNPACK. For the 128
    frames of a 3 s segment the filtered mel spectrum took 1.83 ms through it against 0.56 ms as
    matmuls (``benchmarks/export.py``, rows ``stage_mel_stft_rfft`` and ``stage_mel_stft``), for
    the same values to float32 rounding (relative difference ~5e-7; tests/test_features.py).

    numpy arrays or tensors, float32:
        stage1: ``[Q, P, 2P]``, ``W_N^((Q n1 + n2) k1)`` indexed ``[n2, n1, k1]``: real parts,
            then imaginary parts.
        stage2: ``[2Q, 2K]``, ``W_Q^(n2 k2)`` as a real matrix: ``[re | im] @ stage2 = [Re X | Im X]``.
        banks: per band group, ``[bank_bins[g][1] - bank_bins[g][0], bands in group g]``; the
            groups' outputs, concatenated, are the filterbank's bands in order.
        bank_bins: per band group, the ``(first, last + 1)`` FFT bins it weights (Python ints).
    """

    stage1: Any
    stage2: Any
    banks: Tuple[Any, ...]
    bank_bins: Tuple[Tuple[int, int], ...]


def dft_plan(n_fft: int, bank: np.ndarray, bins: Tuple[int, int] = (0, 0), groups: int = 8) -> DFTPlan:
    """The :class:`DFTPlan` of an ``n_fft``-point power spectrum filtered by ``bank``.

    Args:
        n_fft: the DFT length, a power of two >= 4.
        bank: float32 ``[bins[1] - bins[0], bands]``: the filterbank rows of FFT bins
            ``bins[0] .. bins[1] - 1``, or ``[n_fft // 2 + 1, bands]`` with ``bins == (0, 0)``.
        bins: the bin range of ``bank``'s rows (as :class:`Filterbanks` keeps them).
        groups: band groups the filterbank is split into (at most one a band); 8 was the fastest
            of 1, 4 and 8 for the default mel bands under LiteRT.
    """
    if n_fft < 4 or n_fft & (n_fft - 1):
        raise ValueError(f"dft_plan: n_fft must be a power of two >= 4, got {n_fft}.")
    bank = np.asarray(bank, np.float32)
    lo, hi = bins if bins != (0, 0) else (0, n_fft // 2 + 1)
    if bank.ndim != 2 or bank.shape[0] != hi - lo:
        raise ValueError(f"dft_plan: the bank has {bank.shape[0]} rows for FFT bins {lo}..{hi - 1}.")
    P = 2 ** (int(math.log2(n_fft)) // 2)
    Q = n_fft // P
    K = -(-hi // P)  # k2 = 0 .. K-1 reaches bin P * K - 1 >= hi - 1
    n1, n2, k1, k2 = np.arange(P), np.arange(Q), np.arange(P), np.arange(K)
    # angles from exact integer products reduced modulo the period, rounded once to float32
    a1 = -2 * np.pi * (((Q * n1[None, :, None] + n2[:, None, None]) * k1[None, None, :]) % n_fft) / n_fft
    a2 = -2 * np.pi * (np.outer(n2, k2) % Q) / Q  # [n2, k2]
    c2, s2 = np.cos(a2), np.sin(a2)
    edges = np.linspace(0, bank.shape[1], min(groups, bank.shape[1]) + 1).round().astype(int)
    banks, bank_bins = [], []
    for first, last in zip(edges[:-1], edges[1:]):
        rows = np.flatnonzero(np.any(bank[:, first:last] != 0, axis=1))
        r0, r1 = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 1)
        banks.append(np.ascontiguousarray(bank[r0:r1, first:last]))
        bank_bins.append((lo + r0, lo + r1))
    return DFTPlan(stage1=np.concatenate([np.cos(a1), np.sin(a1)], axis=-1).astype(np.float32),
                   stage2=np.block([[c2, s2], [-s2, c2]]).astype(np.float32),
                   banks=tuple(banks), bank_bins=tuple(bank_bins))


def _support(matrix: np.ndarray) -> Tuple[int, int]:
    """``(first, last + 1)`` of the rows of ``matrix`` that hold a non-zero weight."""
    rows = np.flatnonzero(np.any(matrix != 0, axis=1))
    return (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, matrix.shape[0])


def filterbanks(cfg: FrontendConfig, as_tensors: bool = False) -> Filterbanks:
    """The matrices :func:`log_mel` multiplies with, trimmed to their bins, built once per config.

    Args:
        cfg: the frontend configuration.
        as_tensors: return ``tf.constant`` s (build them once, outside a ``tf.data`` map).
    """
    mel, pitch = mel_filterbank(cfg), pitch_filterbank(cfg)
    mel_bins = _support(mel)
    pitch_bins = _support(pitch) if pitch is not None else (0, 0)
    mel = mel[mel_bins[0]:mel_bins[1]]
    if pitch is not None:
        pitch = pitch[pitch_bins[0]:pitch_bins[1]]
        if pitch_bins[1] > cfg.pitch_n_fft // cfg.pitch_decimation_factor // 2 + 1:  # config validation should catch it
            raise ConfigError(f"frontend.pitch_decimation={cfg.pitch_decimation_factor}: the pitch bands reach FFT bin "
                              f"{pitch_bins[1] - 1}, beyond the decimated STFT's last bin.")
    decimation = decimation_filter(cfg)
    mel_plan = dft_plan(cfg.n_fft, mel, mel_bins)
    pitch_plan = None if pitch is None else _pitch_plan(cfg, pitch, pitch_bins)
    if as_tensors:
        mel, pitch, decimation = (None if b is None else tf.constant(b) for b in (mel, pitch, decimation))
        mel_plan, pitch_plan = (None if p is None else p._replace(
            stage1=tf.constant(p.stage1), stage2=tf.constant(p.stage2), banks=tuple(tf.constant(w) for w in p.banks))
            for p in (mel_plan, pitch_plan))
    return Filterbanks(mel, pitch, mel_bins, pitch_bins, decimation, mel_plan, pitch_plan)


def _pitch_plan(cfg: FrontendConfig, pitch: np.ndarray, pitch_bins: Tuple[int, int]) -> DFTPlan:
    """The pitch bands' :class:`DFTPlan`: the (decimated) ``pitch_n_fft // d``-point DFT, with the
    filterbank scaled by ``d ** power`` because the decimated signal's DFT is ``1 / d`` of the
    full-rate one's in the kept band (the scale is in the constant, where the converter would
    fold it anyway)."""
    d = cfg.pitch_decimation_factor
    return dft_plan(cfg.pitch_n_fft // d, np.asarray(pitch, np.float32) * np.float32(d ** cfg.power), pitch_bins)


def frontend_matmul_weights(cfg: FrontendConfig) -> list:
    """The constant right-hand sides of the frontend's matmuls as TFLite stores them, float32: per
    band set the DFT's first pass (a BATCH_MATMUL's ``[Q, P, 2P]``), then its second pass and the
    filterbank groups (FULLY_CONNECTED weights, transposed to ``[outputs, inputs]``); see
    :class:`DFTPlan`. The export keeps these float32 in every variant."""
    banks = filterbanks(cfg)
    return [np.ascontiguousarray(np.asarray(m) if i == 0 else np.asarray(m).T)
            for plan in (banks.mel_plan, banks.pitch_plan) if plan is not None
            for i, m in enumerate((plan.stage1, plan.stage2) + tuple(plan.banks))]


def _as_constant(m: Any) -> tf.Tensor:
    """``m`` as a float32 tensor: a tensor as is (``filterbanks(as_tensors=True)``), numpy as a constant."""
    return m if isinstance(m, tf.Tensor) else tf.constant(m, tf.float32)


def _lead_shape(t: tf.Tensor, drop: int) -> Any:
    """The shape of ``t`` without its last ``drop`` axes, for a reshape: a list of Python ints with
    ``-1`` for the one unknown axis when at most one is unknown (a served model's batch), else a
    tensor. Static shapes matter under LiteRT: a reshape to a computed shape leaves shape
    arithmetic (SHAPE, PACK, FLOOR_DIV) running outside XNNPACK between the delegated parts."""
    dims = t.shape.as_list()[:-drop] if t.shape.rank is not None else None
    if dims is not None and sum(d is None for d in dims) <= 1:
        return [-1 if d is None else int(d) for d in dims]
    return tf.shape(t)[:-drop]


def _with_tail(lead: Any, tail: list) -> Any:
    """``lead + tail`` as a reshape target (``lead`` from :func:`_lead_shape`)."""
    return lead + tail if isinstance(lead, list) else tf.concat([lead, tail], axis=0)


def _frames(x: tf.Tensor, n_fft: int, hop_length: int) -> tf.Tensor:
    """Periodic-Hann-windowed frames of ``x [..., samples]``, no padding: ``[..., T, n_fft]``,
    ``T = 1 + (samples - n_fft) // hop_length`` (librosa's ``center=False`` drops the trailing
    partial frame too).

    When the length is static (a served segment), the frames are gathered with constant indices
    from blocks of ``gcd(hop_length, n_fft)`` samples, so every shape is known when LiteRT
    prepares the graph; otherwise (whole tracks in the feature cache) ``tf.signal.frame``."""
    n = x.shape[-1] if x.shape.rank else None
    if n is None:
        frames = tf.signal.frame(x, n_fft, hop_length, pad_end=False)
    else:
        g = math.gcd(hop_length, n_fft)
        T = 1 + (int(n) - n_fft) // hop_length
        n_blocks = (T - 1) * (hop_length // g) + n_fft // g
        lead = _lead_shape(x, 1)
        blocks = tf.reshape(x[..., :n_blocks * g], _with_tail(lead, [n_blocks, g]))
        index = (np.arange(T)[:, None] * (hop_length // g) + np.arange(n_fft // g)[None, :]).astype(np.int32)
        frames = tf.reshape(tf.gather(blocks, index, axis=-2), _with_tail(lead, [T, n_fft]))
    return frames * tf.signal.hann_window(n_fft, periodic=True, dtype=tf.float32)  # scipy 'hann' (fftbins=True)


def _filtered_power(x: tf.Tensor, n_fft: int, hop_length: int, power: float, plan: DFTPlan) -> tf.Tensor:
    """``|STFT(x)|**power`` times the plan's filterbank: ``x [..., samples]`` -> ``[..., T, bands]``.

    The STFT is :class:`DFTPlan`'s factorised DFT of periodic-Hann frames without padding
    (librosa's ``center=False``).
    """
    stage1, stage2 = _as_constant(plan.stage1), _as_constant(plan.stage2)
    Q, P, K = int(stage1.shape[0]), int(stage1.shape[1]), int(stage2.shape[1]) // 2
    frames = _frames(x, n_fft, hop_length)  # [..., T, N]
    lead = _lead_shape(frames, 1)
    f = tf.transpose(tf.reshape(frames, [-1, P, Q]), [2, 0, 1])  # [n2, M, n1]: sample Q * n1 + n2
    a = tf.matmul(f, stage1)  # [n2, M, 2P]: the first pass with its twiddles, re | im
    a = tf.transpose(tf.reshape(a, [Q, -1, 2, P]), [1, 3, 2, 0])  # [M, k1, re/im, n2]
    spec = tf.matmul(tf.reshape(a, [-1, P, 2 * Q]), stage2)  # [M, k1, 2K]: X[k1 + P * k2], re | im
    re, im = spec[..., :K], spec[..., K:]
    # |X|^2 from real and imaginary parts; the power spectrogram (the default) needs no square root
    power_spec = re * re + im * im  # [M, k1, k2]
    if power == 1.0:  # FrontendConfig allows 1 (magnitude) or 2 (power)
        power_spec = tf.sqrt(power_spec)
    # bins in natural order (k2 * P + k1), so that each band group reads one contiguous slice
    natural = tf.reshape(tf.transpose(power_spec, [0, 2, 1]), _with_tail(lead, [P * K]))
    bands = [tf.matmul(natural[..., lo:hi], _as_constant(w)) for (lo, hi), w in zip(plan.bank_bins, plan.banks)]
    return bands[0] if len(bands) == 1 else tf.concat(bands, axis=-1)


def _decimate(x: tf.Tensor, fir: tf.Tensor, factor: int) -> tf.Tensor:
    """``x [..., samples]`` low-passed by the centred ``fir [taps]`` and kept at every ``factor``-th
    sample, the first output at sample 0: ``[..., 1 + (samples - 1) // factor]``.

    Computed in polyphase form: the zero-padded signal is cut into blocks of ``factor``
    samples, the blocks' positions become ``factor`` input channels, and one stride-1
    convolution with the FIR reshaped to ``[ceil(taps / factor), factor, 1]`` gives every kept
    output and nothing else. The products and sums are those of the direct strided FIR, only
    grouped differently. Why not the plain strided ``conv1d`` over one channel (the 0.9.0
    code): LiteRT runs that shape about three times slower (``benchmarks/export.py``, rows
    ``stage_decimate_polyphase`` and ``stage_decimate_strided``: 0.4 against 1.3 ms a 3 s
    segment), and it is a CONV_2D builtin either way.
    """
    taps = int(fir.shape[0])
    k = (taps - 1) // 2  # centring delay: output m is centred on input sample m * factor
    blocks_per_tap = -(-taps // factor)
    lead = _lead_shape(x, 1)
    n = x.shape[-1] if x.shape.rank and x.shape[-1] is not None else tf.shape(x)[-1]
    n_out = 1 + (n - 1) // factor
    flat = tf.reshape(x, [-1, n])
    # Output m reads padded samples m * factor .. m * factor + blocks_per_tap * factor - 1 (the
    # FIR's zero-padded tail covers the part past taps - 1), so n_out + blocks_per_tap - 1 whole
    # blocks are needed: pad generously on the right, then cut to exactly that many.
    flat = tf.pad(flat, [[0, 0], [k, k + blocks_per_tap * factor]])
    flat = flat[:, :(n_out + blocks_per_tap - 1) * factor]
    phases = tf.reshape(flat, [-1, n_out + blocks_per_tap - 1, factor])  # [B, blocks, factor]
    poly = tf.reshape(tf.pad(fir, [[0, blocks_per_tap * factor - taps]]), [blocks_per_tap, factor, 1])
    # conv1d correlates; the filter is symmetric, so that is its convolution
    y = tf.nn.conv1d(phases, poly, stride=1, padding="VALID")  # [B, n_out, 1]
    return tf.reshape(y, _with_tail(lead, [n_out]))


def log_mel(waveform: Any, cfg: FrontendConfig, banks: Optional[Filterbanks] = None) -> tf.Tensor:
    """Compressed, standardised log-mel (+ pitch) spectrogram of a waveform, in TensorFlow ops.

    Args:
        waveform: float32 tensor ``[..., samples]`` (typically ``[batch, samples]``),
            amplitude in [-1, 1], sampled at ``cfg.sample_rate`` Hz. At least
            ``cfg.n_fft`` samples long.
        cfg: the frontend configuration.
        banks: optional precomputed :func:`filterbanks` of ``cfg``; built when omitted.

    Returns:
        tf.Tensor, float32, shape ``[..., num_frames, n_bands]`` with
        ``num_frames = 1 + (samples - n_fft) // hop_length`` (no centre padding, the
        trailing partial frame is dropped) and ``n_bands = n_mels + n_pitch_bands``:
        the mel bands first, then the pitch bands. Values are
        ``(log10(1 + log_multiplier * S) - norm_mean) / norm_std`` where ``S`` is the
        filtered ``|STFT| ** power``. The pitch bands' frame ``t`` is a
        ``pitch_n_fft`` window centred where the mel frame ``t`` is: the waveform is
        zero-padded by ``(pitch_n_fft - n_fft) / 2`` samples at each end, so the first
        and last few frames of a clip see zeros beyond its ends.

    Raises:
        ValueError: when the waveform is statically known to be shorter than ``n_fft``.
    """
    x = tf.convert_to_tensor(waveform)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    n = x.shape[-1] if x.shape.rank else None
    if x.shape.rank == 0:
        raise ValueError("log_mel: the waveform must have at least one (time) axis, got a scalar.")
    if n is not None and n < cfg.n_fft:
        raise ValueError(f"log_mel: the waveform has {n} samples, fewer than one STFT window "
                         f"(n_fft={cfg.n_fft}); pad or use a longer excerpt.")
    if banks is None:
        banks = filterbanks(cfg)

    mel_plan = banks.mel_plan if banks.mel_plan is not None else dft_plan(cfg.n_fft, np.asarray(banks.mel),
                                                                          banks.mel_bins)
    s = _filtered_power(x, cfg.n_fft, cfg.hop_length, cfg.power, mel_plan)
    if cfg.pitch_bands_per_octave:
        if banks.pitch is None:
            raise ValueError("log_mel: the config has pitch bands but the filterbanks passed have none; "
                             "build them with filterbanks(cfg).")
        half = (cfg.pitch_n_fft - cfg.n_fft) // 2
        padded = tf.pad(x, [[0, 0]] * (x.shape.rank - 1) + [[half, half]])
        d = cfg.pitch_decimation_factor
        if d > 1:
            if banks.decimation is None:
                raise ValueError("log_mel: the config decimates the pitch STFT but the filterbanks passed have no "
                                 "decimation filter; build them with filterbanks(cfg).")
            padded = _decimate(padded, _as_constant(banks.decimation), d)
        pitch_plan = banks.pitch_plan if banks.pitch_plan is not None else _pitch_plan(cfg, banks.pitch,
                                                                                     banks.pitch_bins)
        pitch = _filtered_power(padded, cfg.pitch_n_fft // d, cfg.hop_length // d, cfg.power, pitch_plan)
        if d > 1:
            # Frame t starts at decimated sample t * hop / d, the full-rate frame t's start, but the
            # decimated signal keeps 1 + (n - 1) // d samples, which for lengths 3 samples or less
            # short of a whole hop holds one more window than the full rate: that trailing frame
            # has no mel frame beside it.
            pitch = pitch[..., :(s.shape[-2] if s.shape[-2] is not None else tf.shape(s)[-2]), :]
        s = tf.concat([s, pitch], axis=-1)
    # log10 via natural log: TFLite has LOG but no LOG10; log(1+x) rather than log1p,
    # which is not a builtin. Absolute error is ~1e-7, far below the parity tolerance.
    compressed = tf.math.log(1.0 + cfg.log_multiplier * s) * (1.0 / _LN10)
    if cfg.norm_mean != 0.0 or cfg.norm_std != 1.0:
        compressed = (compressed - cfg.norm_mean) * (1.0 / cfg.norm_std)
    return compressed


def log_mel_librosa(waveform: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Numpy reference of :func:`log_mel`, computed with librosa.

    ``librosa.feature.melspectrogram(center=False, window='hann')`` followed by the same
    compression and standardisation; the pitch bands from ``librosa.stft`` of the
    zero-padded waveform times :func:`pitch_filterbank`. Slow; for tests, parity
    checks and benchmarks.

    Args:
        waveform: float ``[samples]`` or ``[batch, samples]``, in [-1, 1], at ``cfg.sample_rate`` Hz.
        cfg: the frontend configuration.

    Returns:
        np.ndarray, float32, ``[num_frames, n_bands]`` or ``[batch, num_frames, n_bands]``
        (librosa's ``[bands, frames]`` transposed to the layer's layout).
    """
    import librosa

    y = np.asarray(waveform, dtype=np.float32)
    if y.shape[-1] < cfg.n_fft:
        raise ValueError(f"log_mel_librosa: the waveform has {y.shape[-1]} samples, fewer than n_fft={cfg.n_fft}.")
    s = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                       n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.mel_fmax, power=cfg.power,
                                       center=False, window="hann")
    if cfg.pitch_bands_per_octave:
        half = (cfg.pitch_n_fft - cfg.n_fft) // 2
        padded = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(half, half)])
        stft = librosa.stft(padded, n_fft=cfg.pitch_n_fft, hop_length=cfg.hop_length, center=False, window="hann")
        pitch = np.swapaxes(np.swapaxes(np.abs(stft) ** cfg.power, -1, -2) @ pitch_filterbank(cfg), -1, -2)
        s = np.concatenate([s, pitch], axis=-2)
    out = np.log10(1.0 + cfg.log_multiplier * s)
    out = (out - cfg.norm_mean) / cfg.norm_std
    return np.swapaxes(out, -1, -2).astype(np.float32)


@keras.saving.register_keras_serializable(package="disentangled_ml")
class LogMelSpectrogram(keras.layers.Layer):
    """Keras layer: waveform ``[batch, samples]`` -> log-mel ``[batch, num_frames, n_bands(, 1)]``.

    The constructor takes the fields of :class:`~disentangled_ml.config.FrontendConfig`
    as keyword arguments (so :meth:`get_config` is plain JSON); build it from a config
    with :meth:`from_frontend`. The mel filterbank is a constant computed at
    construction, not a weight: a saved model rebuilds it from the config. The pitch
    fields default to 0 bands here (unlike ``FrontendConfig``) because a layer saved
    before they existed has no such key and was trained on mel bands alone.

    The layer always computes in float32 (an FFT in float16 is not accurate enough),
    whatever the global dtype policy; cast its output if the backbone runs in
    mixed precision.

    Args:
        sample_rate, segment_seconds, n_fft, hop_length, n_mels, fmin, fmax, power,
            log_multiplier, norm_mean, norm_std, pitch_bands_per_octave, pitch_n_fft,
            pitch_fmin, pitch_fmax, pitch_decimation: see ``FrontendConfig``; validated
            there, so a bad value raises :class:`~disentangled_ml.config.ConfigError`.
        add_channel_axis: append a trailing axis of size 1 (for ``Conv2D``).
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ...).

    Input:
        float32 ``[batch, samples]``, in [-1, 1], at ``sample_rate`` Hz,
        ``samples >= n_fft``.
    Output:
        float32 ``[batch, num_frames, n_bands]`` (``[..., 1]`` with ``add_channel_axis``),
        ``num_frames = 1 + (samples - n_fft) // hop_length``.
    """

    def __init__(self, sample_rate: int = 22050, segment_seconds: float = 3.0, n_fft: int = 1024,
                 hop_length: int = 512, n_mels: int = 128, fmin: float = 0.0, fmax: Optional[float] = None,
                 power: float = 2.0, log_multiplier: float = 10.0, norm_mean: float = 0.0, norm_std: float = 1.0,
                 pitch_bands_per_octave: int = 0, pitch_n_fft: int = 4096, pitch_fmin: float = 65.0,
                 pitch_fmax: float = 2100.0, pitch_decimation: Optional[int] = 1, add_channel_axis: bool = False,
                 **kwargs: Any) -> None:
        kwargs.pop("dtype", None)  # always float32; see the class docstring
        super().__init__(dtype="float32", **kwargs)
        self.frontend = FrontendConfig(
            sample_rate=int(sample_rate), segment_seconds=float(segment_seconds), n_fft=int(n_fft),
            hop_length=int(hop_length), n_mels=int(n_mels), fmin=float(fmin),
            fmax=None if fmax is None else float(fmax), power=float(power),
            log_multiplier=float(log_multiplier), norm_mean=float(norm_mean), norm_std=float(norm_std),
            pitch_bands_per_octave=int(pitch_bands_per_octave), pitch_n_fft=int(pitch_n_fft),
            pitch_fmin=float(pitch_fmin), pitch_fmax=float(pitch_fmax),
            pitch_decimation=None if pitch_decimation is None else int(pitch_decimation))
        # the factor in use, not None (auto): a saved layer keeps computing what it was trained on
        # whatever a later version's auto rule picks
        self.frontend = self.frontend.resolved()
        self.add_channel_axis = bool(add_channel_axis)
        self._banks = filterbanks(self.frontend)
        self.supports_masking = False

    @classmethod
    def from_frontend(cls, cfg: FrontendConfig, add_channel_axis: bool = False, **kwargs: Any) -> "LogMelSpectrogram":
        """Build the layer from a :class:`FrontendConfig` (e.g. ``Config().frontend``)."""
        if not isinstance(cfg, FrontendConfig):
            raise ConfigError(f"LogMelSpectrogram.from_frontend expects a FrontendConfig, got {type(cfg).__name__}.")
        return cls(**frontend_kwargs(cfg), add_channel_axis=add_channel_axis, **kwargs)

    def num_frames(self, samples: Optional[int]) -> Optional[int]:
        """Output frames for an input of ``samples`` samples (None when unknown)."""
        if samples is None:
            return None
        if samples < self.frontend.n_fft:
            raise ValueError(f"{self.name}: input has {samples} samples, fewer than n_fft={self.frontend.n_fft}.")
        return 1 + (samples - self.frontend.n_fft) // self.frontend.hop_length

    def call(self, inputs: Any) -> tf.Tensor:
        out = log_mel(inputs, self.frontend, self._banks)
        if self.add_channel_axis:
            out = out[..., tf.newaxis]
        return out

    def compute_output_shape(self, input_shape: Any) -> tuple:
        input_shape = tuple(input_shape)
        if len(input_shape) < 1:
            raise ValueError(f"{self.name}: expected a waveform [batch, samples], got shape {input_shape}.")
        shape = (*input_shape[:-1], self.num_frames(input_shape[-1]), self.frontend.n_bands)
        return shape + (1,) if self.add_channel_axis else shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.pop("dtype", None)
        config.update(frontend_kwargs(self.frontend))
        config["add_channel_axis"] = self.add_channel_axis
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "LogMelSpectrogram":
        return cls(**config)
