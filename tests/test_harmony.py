"""The harmony branch (0.5): pitch-class profiles from the pitch bands, learned templates matched in
every transposition, routed to the mood slice; and what configs saved by earlier versions get."""

import json

import numpy as np
import pytest

from disentangled_ml.config import BACKBONE_DEFAULTS, Config, ConfigError
from disentangled_ml.features import log_mel
from disentangled_ml.models.backbones import SliceGate, build_backbone
from disentangled_ml.models.harmony import PITCH_CLASSES, CircularTemplates, PitchClassProfile, chroma_folding
from collections_for_tests import assert_backbone_reloads, tiny_config

FE = Config().frontend
MAJOR, MINOR = (0, 4, 7), (0, 3, 7)


def _chord(root_midi: int, intervals, seconds: float = 3.0, sr: int = FE.sample_rate) -> np.ndarray:
    """A sustained chord of harmonic tones (four partials each), as float32 samples."""
    t = np.arange(int(seconds * sr)) / sr
    y = np.zeros_like(t)
    for i in intervals:
        f0 = 440.0 * 2 ** ((root_midi + i - 69) / 12)
        for k in range(1, 5):
            y += np.sin(2 * np.pi * k * f0 * t) / k
    return (0.1 * y).astype(np.float32)


def _profile(y: np.ndarray) -> np.ndarray:
    """Frame-averaged pitch-class profile of the default frontend, [12]."""
    layer = PitchClassProfile.from_frontend(FE)
    return np.asarray(layer(log_mel(y[None, :FE.segment_samples], FE)))[0].mean(axis=0)


def test_folding_gives_every_class_the_mean_of_its_bands():
    bins = np.arange(2049) * FE.sample_rate / 4096
    layer = PitchClassProfile.from_frontend(FE)
    fold = layer._folding
    assert fold.shape == (FE.n_pitch_bands, PITCH_CLASSES)
    np.testing.assert_allclose(fold.sum(axis=0), 1.0, rtol=1e-5)
    assert np.all(fold >= 0)
    # the band whose filter peaks nearest 440 Hz counts for A (class 9) above every other class
    bank = np.asarray(PitchClassProfile.from_frontend(FE)._folding)
    from disentangled_ml.features import pitch_filterbank
    peaks = bins[np.argmax(pitch_filterbank(FE), axis=0)]
    a4 = int(np.argmin(np.abs(peaks - 440.0)))
    assert int(np.argmax(bank[a4])) == 9
    with pytest.raises(ValueError, match="one frequency per bin"):
        chroma_folding(np.ones((10, 3)), bins[:9])
    with pytest.raises(ValueError, match="every pitch class"):
        narrow = np.zeros((2049, 1))
        narrow[41, 0] = 1.0  # a single bin near 220 Hz: one or two classes at most
        chroma_folding(narrow, bins)


@pytest.mark.parametrize("root", [48, 55, 62])  # C3, G3, D4
@pytest.mark.parametrize("intervals", [MAJOR, MINOR])
def test_profile_of_a_chord_peaks_on_its_pitch_classes(root, intervals):
    profile = _profile(_chord(root, intervals))
    assert profile.shape == (PITCH_CLASSES,)
    expected = {(root + i) % 12 for i in intervals}
    assert set(np.argsort(profile)[-3:].tolist()) == expected
    # zero mean, unit length in every frame, so louder audio gives the same profile
    np.testing.assert_allclose(_profile(4 * _chord(root, intervals)), profile, atol=0.05)


def test_templates_read_the_mode_in_every_key():
    """With fixed triad templates, the branch's arithmetic tells a major from a minor chord in all 12 keys:
    the learned templates start from a reading that can express the mode."""
    templates = CircularTemplates(2)
    templates.build((None, None, PITCH_CLASSES))
    kernel = np.zeros((PITCH_CLASSES, 2), np.float32)
    kernel[list(MAJOR), 0] = 1.0
    kernel[list(MINOR), 1] = 1.0
    templates.kernel.assign(kernel - kernel.mean(axis=0))
    layer = PitchClassProfile.from_frontend(FE)
    for root in range(48, 60):
        for intervals, want in ((MAJOR, 0), (MINOR, 1)):
            frames = layer(log_mel(_chord(root, intervals)[None, :FE.segment_samples], FE))
            scores = np.asarray(templates(frames))[0].mean(axis=0)
            assert int(np.argmax(scores)) == want, (root, intervals, scores)


def test_circular_templates_do_not_hear_the_key():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, PITCH_CLASSES)).astype(np.float32)
    layer = CircularTemplates(5)
    y = np.asarray(layer(x))
    assert y.shape == (3, 7, 5)
    for shift in (1, 5, 11):
        np.testing.assert_allclose(np.asarray(layer(np.roll(x, shift, axis=-1))), y, atol=1e-5)
    # but it is not blind: a reflected profile (major <-> minor) generally matches differently
    assert not np.allclose(np.asarray(layer(x[..., ::-1])), y, atol=1e-3)
    with pytest.raises(ValueError, match="pitch-class profiles"):
        CircularTemplates(2)(np.zeros((1, 10), np.float32))


def test_layers_serialise_without_custom_objects(tmp_path):
    again = PitchClassProfile.from_config(json.loads(json.dumps(PitchClassProfile.from_frontend(FE).get_config())))
    np.testing.assert_array_equal(again._folding, PitchClassProfile.from_frontend(FE)._folding)
    cfg = tiny_config(**{"model.width": 4, "model.chroma_templates": 3})
    assert_backbone_reloads(cfg, tmp_path)


def test_harmony_branch_feeds_the_mood_slice_only():
    cfg = Config()
    assert cfg.model.chroma_templates == BACKBONE_DEFAULTS["inception_lite"]["chroma_templates"] > 0
    assert cfg.model.chroma_conditions == ("mood",)
    net = build_backbone(tiny_config(**{"model.width": 4}))
    gate = np.asarray(net.get_layer("harmony_slices").gate)
    start, stop = tiny_config().conditions.slices["mood"]
    assert gate[start:stop].min() == 1.0 and gate.sum() == stop - start
    assert isinstance(net.get_layer("harmony_slices"), SliceGate)
    # silence the main projection and the other branches': what is left comes through the harmony branch
    for name in ("projection", "onset_projection", "timbre_projection"):
        layer = net.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    cfg = tiny_config()
    x = np.random.default_rng(0).normal(size=(2, cfg.frontend.num_frames, cfg.frontend.n_bands)).astype(np.float32)
    out = np.asarray(net(x))
    assert np.abs(out[:, start:stop]).max() > 0
    assert np.abs(np.concatenate([out[:, :start], out[:, stop:]], axis=1)).max() == 0.0
    # null: the branch joins the pooled CNN features before the projection, like 0.3's onsets
    whole = build_backbone(tiny_config(**{"model.width": 4, "model.chroma_conditions": None}))
    assert "harmony_slices" not in [layer.name for layer in whole.layers]
    assert whole.get_layer("cnn_and_harmony") is not None
    with pytest.raises(ConfigError, match=r"model\.chroma_conditions"):
        build_backbone(tiny_config(**{"model.width": 4, "model.chroma_conditions": ["key"]}))


def test_harmony_branch_needs_pitch_bands_and_old_configs_have_none():
    with pytest.raises(ConfigError, match=r"model\.chroma_templates=32 .*pitch_bands_per_octave=0"):
        build_backbone(Config().replace(**{"frontend.pitch_bands_per_octave": 0}))
    with pytest.raises(ConfigError, match=r"model\.chroma_templates"):
        Config().replace(**{"model.chroma_templates": -1})
    # the paper's families have no harmony branch; a config saved by 0.4 had none either
    assert Config().replace(**{"model.backbone": "inception"}).model.chroma_templates == 0
    saved = Config().to_dict()
    saved["version"] = "0.4.0"
    del saved["model"]["chroma_templates"]
    del saved["model"]["chroma_conditions"]
    old = Config.from_dict(saved)
    assert old.model.chroma_templates == 0 and old.model.stem_stride == (2, 1)
    assert "pitch_class_profile" not in [layer.name for layer in build_backbone(
        tiny_config(**{"model.chroma_templates": 0, "model.width": 4})).layers]
