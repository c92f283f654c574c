"""The frontend (log-mel + pitch bands): librosa parity, pitch resolution, shapes, Keras serialisation, TFLite."""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import Config, ConfigError, FrontendConfig
from disentangled_ml.features import (LogMelSpectrogram, filterbanks, log_mel, log_mel_librosa, mel_filterbank,
                                      pitch_filterbank)

#: The full-rate frontend (``pitch_decimation`` 1): what librosa computes and the definition the
#: default, decimated pitch STFT is held to (test_decimated_pitch_bands_match_the_full_rate_ones).
CFG = FrontendConfig(pitch_decimation=1)
# Max |tf - librosa| on the compressed scale. Both compute a float32 STFT of the same
# frames with the same window and filterbank, so they agree to float32 round-off
# (measured: ~5e-7); 1e-3 is the contract for downstream users.
PARITY_TOL = 1e-3


def synthetic_music(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Half a second of silence, then harmonic notes with ADSR-ish envelopes, a bass line
    and noise bursts (hi-hat-like), peaking near full scale."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    y = np.zeros(n, dtype=np.float64)
    t = np.arange(n) / sr
    note_len = int(0.25 * sr)
    start = int(0.5 * sr)
    for i, onset in enumerate(range(start, n - note_len, note_len)):
        f0 = 110.0 * 2 ** (rng.integers(0, 36) / 12.0)
        seg = np.arange(note_len) / sr
        env = np.minimum(seg / 0.01, 1.0) * np.exp(-seg * 6.0)
        note = sum(np.sin(2 * np.pi * f0 * k * seg + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 7))
        y[onset:onset + note_len] += 0.3 * env * note
        if i % 2 == 0:  # a noise burst on every other beat
            burst = int(0.05 * sr)
            y[onset:onset + burst] += 0.2 * rng.standard_normal(burst) * np.exp(-np.arange(burst) / (0.01 * sr))
    y[start:] += 0.15 * np.sin(2 * np.pi * 55.0 * t[start:])  # bass
    y /= np.max(np.abs(y)) / 0.95
    return y.astype(np.float32)


def white_noise(seconds: float, sr: int, db: float = -20.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (db / 20.0) * rng.standard_normal(int(seconds * sr))).astype(np.float32)


def _non_silent(wave: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    """Frames whose raw librosa mel energy is above a tiny threshold."""
    raw = log_mel_librosa(wave, dataclasses.replace(cfg, norm_mean=0.0, norm_std=1.0))
    energy = (10 ** raw - 1.0) / cfg.log_multiplier  # undo the compression
    return energy.sum(axis=-1) > 1e-8


@pytest.mark.parametrize("kind", ["music", "noise"])
def test_parity_with_librosa(kind):
    wave = synthetic_music(4.0, CFG.sample_rate) if kind == "music" else white_noise(4.0, CFG.sample_rate)
    ours = log_mel(wave[None], CFG).numpy()[0]
    ref = log_mel_librosa(wave, CFG)
    assert ours.shape == ref.shape
    keep = _non_silent(wave, CFG)
    if kind == "music":
        assert not keep[:5].any(), "the leading half second of silence should be excluded"
        assert keep.sum() > 0.8 * len(keep)
    else:
        assert keep.all()
    diff = np.abs(ours[keep] - ref[keep]).max()
    assert diff <= PARITY_TOL, f"max |tf - librosa| = {diff:.2e}"
    # The features span a real dynamic range: the check above compares structure, not zeros.
    assert ref[keep].max() > 1.0 and ref[keep].min() < 0.5


def test_parity_magnitude_and_normalisation():
    cfg = FrontendConfig(power=1.0, n_mels=64, fmin=30.0, fmax=8000.0, norm_mean=1.5, norm_std=0.7,
                         pitch_decimation=1)  # librosa computes the full-rate pitch STFT
    wave = synthetic_music(2.0, cfg.sample_rate, seed=3)
    ours = log_mel(wave, cfg).numpy()  # a 1-D waveform works too
    ref = log_mel_librosa(wave, cfg)
    assert ours.shape == ref.shape == (1 + (len(wave) - cfg.n_fft) // cfg.hop_length, 64 + cfg.n_pitch_bands)
    keep = _non_silent(wave, cfg)
    assert np.abs(ours[keep] - ref[keep]).max() <= PARITY_TOL


def test_filterbank_is_librosa_slaney():
    import librosa

    fb = mel_filterbank(CFG)
    assert fb.shape == (CFG.n_fft // 2 + 1, CFG.n_mels) and fb.dtype == np.float32
    np.testing.assert_array_equal(fb, librosa.filters.mel(sr=22050, n_fft=1024, n_mels=128).T)
    # HTK (tf.signal's) filterbank differs substantially, which is why we do not use it.
    htk = tf.signal.linear_to_mel_weight_matrix(128, 513, 22050, 0.0, 11025.0).numpy()
    assert np.abs(htk - fb).max() > 0.1


def test_shapes_match_config():
    layer = LogMelSpectrogram.from_frontend(CFG)
    x = np.zeros((3, CFG.segment_samples), np.float32)
    y = layer(x)
    assert y.dtype == tf.float32
    assert tuple(y.shape) == (3, CFG.num_frames, CFG.n_bands) == (3, 128, 128 + 105)
    assert layer.compute_output_shape((None, CFG.segment_samples)) == (None, CFG.num_frames, CFG.n_bands)
    # Silence maps to exactly 0 on the compressed scale (log10(1 + 0)).
    assert float(tf.reduce_max(tf.abs(y))) == 0.0

    chan = LogMelSpectrogram.from_frontend(CFG, add_channel_axis=True)
    assert tuple(chan(x).shape) == (3, CFG.num_frames, CFG.n_bands, 1)
    inp = keras.Input((CFG.segment_samples,))
    assert tuple(chan(inp).shape) == (None, CFG.num_frames, CFG.n_bands, 1)

    # An arbitrary length: frames = 1 + (samples - n_fft) // hop, trailing partial frame dropped.
    assert tuple(layer(np.zeros((1, 5000), np.float32)).shape) == (1, 1 + (5000 - 1024) // 512, CFG.n_bands)


def test_too_short_input_is_rejected():
    with pytest.raises(ValueError, match="fewer than"):
        log_mel(np.zeros((1, 1000), np.float32), CFG)
    with pytest.raises(ValueError, match="fewer than"):
        LogMelSpectrogram.from_frontend(CFG).compute_output_shape((None, 1000))


@pytest.mark.parametrize("kwargs, name", [
    ({"n_fft": 1000}, "n_fft"),
    ({"hop_length": 0}, "hop_length"),
    ({"fmax": 20000.0}, "fmax"),
    ({"power": 3.0}, "power"),
    ({"norm_std": 0.0}, "norm_std"),
    ({"pitch_bands_per_octave": -1}, "pitch_bands_per_octave"),
    ({"pitch_bands_per_octave": 24, "pitch_n_fft": 512}, "pitch_n_fft"),
    ({"pitch_bands_per_octave": 24, "pitch_n_fft": 3000}, "pitch_n_fft"),
    ({"pitch_bands_per_octave": 24, "pitch_fmin": 3000.0}, "pitch_fmin"),
    ({"pitch_bands_per_octave": 24, "pitch_fmin": 100.0, "pitch_fmax": 103.0}, "no pitch band"),
])
def test_bad_config_raises_config_error(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        LogMelSpectrogram(**kwargs)


def test_from_frontend_needs_a_frontend_config():
    with pytest.raises(ConfigError, match="FrontendConfig"):
        LogMelSpectrogram.from_frontend({"n_fft": 1024})


def test_serialisation_round_trip(tmp_path):
    cfg = FrontendConfig(n_mels=96, norm_mean=0.5, norm_std=2.0)
    layer = LogMelSpectrogram.from_frontend(cfg, add_channel_axis=True, name="mel")
    config = layer.get_config()
    json.dumps(config)  # plain JSON
    assert config["n_mels"] == 96 and config["add_channel_axis"] is True
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    # the layer records the pitch decimation factor in use, not None (auto)
    assert isinstance(clone, LogMelSpectrogram) and clone.frontend == cfg.resolved() and clone.name == "mel"
    assert cfg.pitch_decimation is None and config["pitch_decimation"] == clone.frontend.pitch_decimation == 4
    wave = white_noise(1.0, cfg.sample_rate)[None]
    np.testing.assert_array_equal(clone(wave).numpy(), layer(wave).numpy())

    inp = keras.Input((cfg.segment_samples,))
    h = keras.layers.Flatten()(layer(inp))
    model = keras.Model(inp, keras.layers.Dense(4)(h))
    path = os.path.join(tmp_path, "x.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layer is registered
    x = np.stack([synthetic_music(3.0, cfg.sample_rate), white_noise(3.0, cfg.sample_rate)])
    assert isinstance(loaded.layers[1], LogMelSpectrogram)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def _tflite(model: keras.Model, tmp_path, name: str) -> bytes:
    # docs/design.md: TFLiteConverter.from_keras_model aborts the process with TF 2.16 +
    # Keras 3; export a SavedModel and convert that.
    saved = os.path.join(tmp_path, name)
    model.export(saved, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # builtins only, no Flex
    return converter.convert()


def _run_tflite(flatbuffer: bytes, x: np.ndarray):
    interp = tf.lite.Interpreter(model_content=flatbuffer)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    ops = {op["op_name"] for op in interp._get_ops_details()}
    return interp.get_tensor(interp.get_output_details()[0]["index"]), ops


def test_tflite_conversion_builtins_only(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((CFG.segment_samples,))
    mel = LogMelSpectrogram.from_frontend(CFG)(inp)
    model = keras.Model(inp, keras.layers.Dense(4)(keras.layers.Flatten()(mel)))
    frontend = keras.Model(inp, mel)
    x = np.stack([synthetic_music(3.0, CFG.sample_rate), white_noise(3.0, CFG.sample_rate)])

    out, ops = _run_tflite(_tflite(model, tmp_path, "dense"), x)
    np.testing.assert_allclose(out, model.predict(x, verbose=0), atol=1e-4, rtol=0)
    # the DFT is matmuls (features.DFTPlan), not LiteRT's undelegated RFFT2D
    assert "FULLY_CONNECTED" in ops and "RFFT2D" not in ops
    assert not any(op.startswith("FlexDelegate") or op == "CUSTOM" for op in ops)

    mel_out, _ = _run_tflite(_tflite(frontend, tmp_path, "frontend"), x)
    assert mel_out.shape == (2, CFG.num_frames, CFG.n_bands)
    np.testing.assert_allclose(mel_out, frontend.predict(x, verbose=0), atol=1e-4, rtol=0)
    # ... and hence also matches librosa.
    assert np.abs(mel_out[0] - log_mel_librosa(x[0], CFG)).max() <= PARITY_TOL


def test_tf_data_graph_matches_the_librosa_reference():
    """The frontend as the training pipeline runs it (traced inside tf.data's map, batched) against
    librosa's independent implementation, not against another call of the same function."""
    wave = np.stack([white_noise(3.0, CFG.sample_rate, seed=0), synthetic_music(3.0, CFG.sample_rate)])
    ds = tf.data.Dataset.from_tensor_slices(wave).batch(2).map(lambda w: log_mel(w, CFG))
    got = np.concatenate([b.numpy() for b in ds])
    for i in range(len(wave)):
        assert np.abs(got[i] - log_mel_librosa(wave[i], CFG)).max() <= PARITY_TOL


def _tones(freqs, seconds: float = 1.0, sr: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in freqs)).astype(np.float32)


def _band_of_peak(features: np.ndarray, lo: int, hi: int) -> int:
    return int(np.argmax(features[:, lo:hi].mean(axis=0)))


def test_pitch_bands_resolve_a_semitone_where_mel_bands_cannot():
    """C3 (130.8 Hz) and C#3 (138.6 Hz) fall in one mel band, the reason major and minor
    harmony look alike to the paper's frontend; the pitch bands put them a band pair apart."""
    c3, cs3 = (log_mel(_tones([f])[None], CFG).numpy()[0] for f in (130.81, 138.59))
    m = CFG.n_mels
    assert _band_of_peak(c3, 0, m) == _band_of_peak(cs3, 0, m)
    assert _band_of_peak(cs3, m, CFG.n_bands) - _band_of_peak(c3, m, CFG.n_bands) == CFG.pitch_bands_per_octave // 12
    # and so a C minor triad differs from C major in the pitch bands far more than in the mel bands
    major, minor = (log_mel(_tones(ch)[None], CFG).numpy()[0].mean(axis=0)
                    for ch in ([130.81, 164.81, 196.00], [130.81, 155.56, 196.00]))
    mel_gap = np.abs(major[:m] - minor[:m]).max()
    pitch_gap = np.abs(major[m:] - minor[m:]).max()
    assert pitch_gap > 2 * mel_gap, (pitch_gap, mel_gap)


def test_pitch_filterbank_is_madmoms_and_off_gives_the_papers_frontend():
    from madmom.audio.filters import LogarithmicFilterbank
    from madmom.audio.stft import fft_frequencies

    fb = pitch_filterbank(CFG)
    ref = LogarithmicFilterbank(fft_frequencies(CFG.pitch_n_fft // 2 + 1, CFG.sample_rate), num_bands=24,
                                fmin=65.0, fmax=2100.0, norm_filters=True, unique_filters=True)
    assert fb.shape == (CFG.pitch_n_fft // 2 + 1, CFG.n_pitch_bands) == ref.shape
    np.testing.assert_array_equal(fb, np.asarray(ref, np.float32))
    paper = dataclasses.replace(CFG, pitch_bands_per_octave=0)
    assert paper.n_bands == paper.n_mels and pitch_filterbank(paper) is None and filterbanks(paper).pitch is None
    wave = synthetic_music(2.0, CFG.sample_rate)
    both, mel_only = log_mel(wave, CFG).numpy(), log_mel(wave, paper).numpy()
    assert mel_only.shape == (both.shape[0], 128)
    np.testing.assert_allclose(both[:, :128], mel_only, atol=1e-6)


def test_configs_saved_before_pitch_bands_keep_the_mel_frontend():
    """A config.json or a layer saved by version 0.1 has no pitch fields: its model saw mel bands only."""
    old = Config.from_dict({"version": "0.1.0", "frontend": {"n_mels": 128, "norm_mean": 0.25}})
    assert old.frontend.pitch_bands_per_octave == 0 and old.frontend.n_bands == 128
    assert Config.from_dict({"frontend": {"n_mels": 128}}).frontend.pitch_bands_per_octave == 24  # written by hand
    assert Config.from_dict(Config().to_dict()).frontend == Config().frontend  # saved by this version
    # 0.9 made the decimated pitch STFT the default; a config saved before without the key kept the full rate
    assert Config().frontend.pitch_decimation is None and Config().frontend.pitch_decimation_factor == 4
    assert Config.from_dict({"version": "0.5.0", "frontend": {"n_mels": 128}}).frontend.pitch_decimation == 1
    assert Config.from_dict({"version": "0.8.1", "frontend": {"pitch_decimation": 4}}).frontend.pitch_decimation == 4
    layer_config = LogMelSpectrogram.from_frontend(CFG).get_config()
    for k in ("pitch_bands_per_octave", "pitch_n_fft", "pitch_fmin", "pitch_fmax"):
        layer_config.pop(k)
    legacy = LogMelSpectrogram.from_config(layer_config)
    assert legacy.compute_output_shape((None, CFG.segment_samples)) == (None, CFG.num_frames, CFG.n_mels)


def test_filterbanks_are_trimmed_to_their_bins_without_changing_the_bands():
    banks = filterbanks(CFG)
    full_pitch, full_mel = pitch_filterbank(CFG), mel_filterbank(CFG)
    lo, hi = banks.pitch_bins
    # every weight outside the kept bins is zero, and the kept rows are the full matrix's
    assert not full_pitch[:lo].any() and not full_pitch[hi:].any()
    np.testing.assert_array_equal(banks.pitch, full_pitch[lo:hi])
    np.testing.assert_array_equal(banks.mel, full_mel[banks.mel_bins[0]:banks.mel_bins[1]])
    # 65-2100 Hz is a fifth of a 4096-point STFT's bins: the pitch matmul shrinks accordingly
    assert (hi - lo) * 4 < full_pitch.shape[0]
    # the bands equal those of the untrimmed matrices (librosa's STFT, the full filterbanks)
    wave = synthetic_music(2.0, CFG.sample_rate)
    np.testing.assert_allclose(log_mel(wave, CFG).numpy(), log_mel_librosa(wave, CFG), atol=2e-4)


# ----------------------------------------------------------------------------- decimated pitch STFT

def test_decimated_pitch_bands_match_the_full_rate_ones():
    """frontend.pitch_decimation=4: low-pass, every 4th sample, a 1024-point STFT. The mel bands are
    untouched and the pitch bands stay within a few thousandths of the full-rate 4096-point ones (the
    anti-alias filter's ripple; the bands' std is about 1): a model trained on either hears the same."""
    full = dataclasses.replace(Config().frontend, pitch_decimation=1)
    dec = dataclasses.replace(full, pitch_decimation=4)
    x = np.stack([synthetic_music(3.0, full.sample_rate), white_noise(3.0, full.sample_rate)])
    a, b = log_mel(x, full).numpy(), log_mel(x, dec).numpy()
    assert a.shape == b.shape == (2, full.num_frames, full.n_bands)
    np.testing.assert_array_equal(a[..., :full.n_mels], b[..., :full.n_mels])
    pitch = np.abs(a[..., full.n_mels:] - b[..., full.n_mels:])
    assert pitch.max() < 0.01 and pitch.mean() < 1e-3, (pitch.max(), pitch.mean())
    # The low-pass is what keeps it so: a loud 4 kHz tone, which every-4th-sample decimation alone
    # would fold onto 5512.5 - 4000 = 1512.5 Hz, right in the pitch bands, stays out of them.
    t = np.arange(3 * full.sample_rate) / full.sample_rate
    tone = (0.5 * np.sin(2 * np.pi * 4000.0 * t)).astype(np.float32)[None]
    a, b = log_mel(tone, full).numpy(), log_mel(tone, dec).numpy()
    assert np.abs(a[..., full.n_mels:] - b[..., full.n_mels:]).max() < 0.05
    naive = filterbanks(dec)._replace(decimation=np.ones(1, np.float32))  # no low-pass: the alias shows
    c = log_mel(tone, dec, naive).numpy()
    assert np.abs(a[..., full.n_mels:] - c[..., full.n_mels:]).max() > 0.5


@pytest.mark.parametrize("factor, taps", [(4, 63), (2, 31), (4, 1), (4, 3), (2, 5)])
@pytest.mark.parametrize("n", [1, 4, 61, 64, 1001])
def test_polyphase_decimation_is_the_strided_fir(factor, taps, n):
    """``_decimate`` (polyphase: blocks as channels, one stride-1 convolution) gives the outputs of
    the centred FIR kept at every ``factor``-th sample, computed here directly in numpy, for any
    length, odd filter lengths shorter or longer than the factor, and any leading axes."""
    from disentangled_ml.features import _decimate

    rng = np.random.default_rng(n + 10 * taps)
    fir = rng.normal(size=taps).astype(np.float32)
    fir = (fir + fir[::-1]) / 2  # symmetric, as the designed low-pass is
    x = rng.normal(size=(2, 3, n)).astype(np.float32)
    k = (taps - 1) // 2
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (k, k)])
    want = np.stack([padded[..., m * factor:m * factor + taps] @ fir.astype(np.float64)
                     for m in range(1 + (n - 1) // factor)], axis=-1)
    got = _decimate(tf.constant(x), tf.constant(fir), factor).numpy()
    assert got.shape == (2, 3, 1 + (n - 1) // factor)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # a waveform of unknown length, as the feature cache and the Keras layer trace it
    traced = tf.function(lambda w: _decimate(w, tf.constant(fir), factor),
                         input_signature=[tf.TensorSpec([None, None], tf.float32)])
    np.testing.assert_allclose(traced(x[0]).numpy(), want[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_fft, bins", [(1024, (1, 512)), (1024, (0, 0)), (1024, (13, 389)), (2048, (0, 0)),
                                         (256, (5, 120)), (64, (0, 0)), (8, (0, 0))])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_factorised_dft_is_the_filtered_rfft(n_fft, bins, power):
    """``_filtered_power`` (the DFT as two matmuls, bins in the plan's order, reordered filterbank)
    equals ``|rfft|**power`` of the same windowed frames times the filterbank in natural bin order,
    for square (P = Q) and oblong (P < Q) factorisations, a bin range trimmed at either end or
    not at all, and any leading axes, to float32 rounding."""
    from disentangled_ml.features import _filtered_power, _frames, dft_plan

    rng = np.random.default_rng(n_fft + bins[0])
    lo, hi = bins if bins != (0, 0) else (0, n_fft // 2 + 1)
    bank = rng.uniform(0, 1, size=(hi - lo, 7)).astype(np.float32)
    hop = n_fft // 4
    x = rng.uniform(-1, 1, size=(2, 3, 5 * n_fft)).astype(np.float32)
    frames = _frames(tf.constant(x), n_fft, hop).numpy().astype(np.float64)
    want = (np.abs(np.fft.rfft(frames, axis=-1)) ** power)[..., lo:hi] @ bank.astype(np.float64)
    got = _filtered_power(tf.constant(x), n_fft, hop, power, dft_plan(n_fft, bank, bins)).numpy()
    assert got.shape == want.shape == (2, 3, 1 + (5 * n_fft - n_fft) // hop, 7)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())
    traced = tf.function(lambda w: _filtered_power(w, n_fft, hop, power, dft_plan(n_fft, bank, bins)),
                         input_signature=[tf.TensorSpec([None, None], tf.float32)])
    np.testing.assert_allclose(traced(x[0]).numpy(), want[0], rtol=2e-5, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("n_fft, rows, why", [(1000, 501, "power of two"), (2, 2, "power of two"),
                                              (1024, 100, "100 rows for FFT bins 0..512")])
def test_dft_plan_refuses_what_it_cannot_factorise(n_fft, rows, why):
    from disentangled_ml.features import dft_plan

    with pytest.raises(ValueError, match=why):
        dft_plan(n_fft, np.ones((rows, 3), np.float32))


@pytest.mark.parametrize("kwargs, why", [
    ({"pitch_decimation": 0}, "integer >= 1"),
    ({"pitch_decimation": 3}, "divisor"),  # 4096 % 3
    ({"pitch_decimation": 8}, "Nyquist"),  # 22050 / 16 = 1378 Hz < pitch_fmax 2100 Hz
])
def test_bad_decimation_is_refused(kwargs, why):
    with pytest.raises(ConfigError, match=why):
        dataclasses.replace(Config().frontend, **kwargs)


def test_decimated_frontend_reloads_and_converts_to_tflite_builtins(tmp_path):
    cfg = dataclasses.replace(CFG, pitch_decimation=2)
    inp = keras.Input((cfg.segment_samples,))
    frontend = keras.Model(inp, LogMelSpectrogram.from_frontend(cfg)(inp))
    path = os.path.join(tmp_path, "dec.keras")
    frontend.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.layers[1].frontend.pitch_decimation == 2
    x = np.stack([synthetic_music(3.0, cfg.sample_rate), white_noise(3.0, cfg.sample_rate)])
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), frontend.predict(x, verbose=0))
    out, ops = _run_tflite(_tflite(frontend, tmp_path, "dec"), x)
    np.testing.assert_allclose(out, frontend.predict(x, verbose=0), atol=1e-4, rtol=0)
    assert "CONV_2D" in ops and not any(op.startswith("FlexDelegate") or op == "CUSTOM" for op in ops)


@pytest.mark.parametrize("extra", [0, 1, 508, 509, 510, 511])
def test_decimated_pitch_bands_have_the_mel_frame_count_at_any_length(extra):
    """A waveform of any length, not only a segment: the feature cache runs the frontend on whole
    excerpts. At ``n_fft + k * hop + 509..511`` samples the decimated signal holds one window more
    than the full-rate one; the pitch bands keep the mel bands' frames and match the full-rate ones."""
    full = dataclasses.replace(Config().frontend, pitch_decimation=1)
    dec = dataclasses.replace(full, pitch_decimation=4)
    n = full.n_fft + 7 * full.hop_length + extra
    x = synthetic_music(1.0, full.sample_rate)[:n][None]
    a, b = log_mel(x, full).numpy(), log_mel(x, dec).numpy()
    assert a.shape == b.shape == (1, 1 + (n - full.n_fft) // full.hop_length, full.n_bands)
    assert np.abs(a - b).max() < 0.01


@pytest.mark.parametrize("fields, factor", [
    ({}, 4),  # 22,050 Hz, pitch bands up to 2,100 Hz: aliases from 3,412 Hz
    ({"sample_rate": 16000}, 2),  # at 4, aliases would start at 1,900 Hz, inside the bands
    ({"sample_rate": 44100}, 4),  # never more than the factor the default was trained with
    ({"pitch_fmax": 5000.0}, 1),  # bands up to 5 kHz leave no room at 22,050 Hz
    ({"pitch_bands_per_octave": 0}, 1),  # no pitch STFT at all
    ({"pitch_n_fft": 1024, "hop_length": 256, "sample_rate": 16000}, 2),
])
def test_auto_pitch_decimation_picks_the_largest_safe_factor(fields, factor):
    """``pitch_decimation`` None (the default) never makes a config invalid: a user who changes the
    sample rate or the band range gets a smaller factor, not a decimation error."""
    cfg = FrontendConfig(**fields)
    assert cfg.pitch_decimation is None and cfg.pitch_decimation_factor == factor
    banks = filterbanks(cfg)  # builds: the bands fit the decimated STFT
    assert (banks.decimation is None) == (factor == 1)
    assert log_mel(np.zeros((1, cfg.segment_samples), np.float32), cfg, banks).shape[-2:] == (cfg.num_frames,
                                                                                           cfg.n_bands)
    # an explicit factor is the user's and is validated as given
    with pytest.raises(ConfigError, match="pitch_decimation"):
        FrontendConfig(**{**fields, "pitch_bands_per_octave": 24, "pitch_decimation": 3})  # divides no FFT
