"""The pitch bands' count, which the config reads without TensorFlow (issue 15, item 5).

:attr:`FrontendConfig.n_pitch_bands` comes from :mod:`disentangled_ml.pitch_bands`; the
frontend multiplies the same matrix. The count must be the one madmom builds and the
one the frontend's output has, for the default and for other frontends.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from disentangled_ml.config import Config, ConfigError, FrontendConfig
from disentangled_ml.features import LogMelSpectrogram, filterbanks, log_mel, pitch_filterbank
from disentangled_ml.pitch_bands import band_count, log_filterbank
from collections_for_tests import process_timeout, tiny_config

FRONTENDS = [
    FrontendConfig(),  # 24 an octave, 65-2100 Hz, 4096-point STFT
    tiny_config().frontend,  # the tests' frontend: 8 kHz, 6 an octave
    FrontendConfig(pitch_bands_per_octave=12, pitch_fmin=30.0, pitch_fmax=5000.0),  # merged bins at the bottom
    FrontendConfig(pitch_bands_per_octave=36, pitch_n_fft=8192),
    FrontendConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=64, pitch_n_fft=2048,
                   pitch_fmin=100.0, pitch_fmax=4000.0),
    FrontendConfig(pitch_bands_per_octave=0),  # the paper's frontend
]


@pytest.mark.parametrize("fe", FRONTENDS, ids=lambda fe: f"{fe.sample_rate}Hz-{fe.pitch_bands_per_octave}bpo-"
                                                        f"{fe.pitch_n_fft}-{fe.pitch_fmin:g}-{fe.pitch_fmax:g}")
def test_the_config_counts_the_bands_the_frontend_builds(fe):
    from madmom.audio.filters import LogarithmicFilterbank
    from madmom.audio.stft import fft_frequencies

    n = fe.n_pitch_bands
    if fe.pitch_bands_per_octave:
        ref = LogarithmicFilterbank(fft_frequencies(fe.pitch_n_fft // 2 + 1, fe.sample_rate),
                                    num_bands=fe.pitch_bands_per_octave, fmin=fe.pitch_fmin, fmax=fe.pitch_fmax,
                                    norm_filters=True, unique_filters=True)
        assert n == ref.shape[1] == pitch_filterbank(fe).shape[1] == filterbanks(fe).pitch.shape[1] > 0
    else:
        assert n == 0 and pitch_filterbank(fe) is None
    wave = np.random.default_rng(0).standard_normal(fe.segment_samples).astype(np.float32)
    out = log_mel(wave, fe).numpy()
    assert out.shape == (fe.num_frames, fe.n_mels + n) and fe.n_bands == fe.n_mels + n
    assert LogMelSpectrogram.from_frontend(fe).compute_output_shape((None, fe.segment_samples))[-1] == fe.n_bands


def test_one_cached_matrix_and_the_same_error():
    fe = FrontendConfig()
    args = (fe.sample_rate, fe.pitch_n_fft, fe.pitch_bands_per_octave, fe.pitch_fmin, fe.pitch_fmax)
    assert pitch_filterbank(fe) is log_filterbank(*args) and not log_filterbank(*args).flags.writeable
    assert band_count(*args) == fe.n_pitch_bands and band_count(fe.sample_rate, 4096, 0, 65.0, 2100.0) == 0
    empty = dataclasses.replace(fe, pitch_fmin=100.0, pitch_fmax=103.0)  # no band between: valid fields, no band
    for ask in (lambda: empty.n_pitch_bands, lambda: pitch_filterbank(empty)):
        with pytest.raises(ConfigError, match="no pitch band"):
            ask()


def test_the_config_and_its_band_count_load_no_tensorflow():
    probe = ("import sys\n"
             "from disentangled_ml.config import Config\n"
             "cfg = Config()\n"
             "assert cfg.frontend.n_pitch_bands > 0 and cfg.frontend.n_bands > cfg.frontend.n_mels\n"
             "assert Config.from_dict(cfg.to_dict()) == cfg\n"
             "heavy = sorted(m for m in ('tensorflow', 'keras', 'librosa') if m in sys.modules)\n"
             "assert not heavy, heavy\n"
             "print(cfg.frontend.n_pitch_bands)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=process_timeout(15.0))
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == Config().frontend.n_pitch_bands
