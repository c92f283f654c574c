"""The timbre branch (disentangled_ml/models/timbre.py): routing, pitch invariance, serialisation, old configs."""

import json

import keras
import numpy as np
import pytest

from disentangled_ml.config import BACKBONE_DEFAULTS, Config, ConfigError
from disentangled_ml.models.backbones import SliceGate, build_backbone
from disentangled_ml.models.timbre import timbre_features, timbre_kernel

from collections_for_tests import assert_backbone_reloads, tiny_config


def test_default_has_a_timbre_branch_for_the_instrument_slice_only():
    cfg = Config()
    assert cfg.model.timbre_filters == BACKBONE_DEFAULTS["inception_lite"]["timbre_filters"] > 0
    assert cfg.model.timbre_conditions == ("instrument",)
    cfg = tiny_config(**{"model.width": 4})
    net = build_backbone(cfg)
    assert isinstance(net.get_layer("timbre_slices"), SliceGate)
    start, stop = cfg.conditions.slices["instrument"]
    gate = np.asarray(net.get_layer("timbre_slices").gate)
    assert gate[start:stop].min() == 1.0 and gate.sum() == stop - start
    # the tall filters read the mel bands only: the pitch bands are cropped off
    assert net.get_layer("timbre_conv").input.shape[2] == cfg.frontend.n_mels
    assert net.get_layer("timbre_conv").kernel.shape[:2] == timbre_kernel(cfg.frontend.n_mels)
    # silence every other path to the output: what is left comes through the timbre branch
    for name in ("projection", "onset_projection", "harmony_projection"):
        layer = net.get_layer(name)
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    x = np.random.default_rng(0).normal(size=(2, cfg.frontend.num_frames, cfg.frontend.n_bands)).astype(np.float32)
    out = np.asarray(net(x))
    assert np.abs(out[:, start:stop]).max() > 0
    assert np.abs(np.concatenate([out[:, :start], out[:, stop:]], axis=1)).max() == 0.0
    # and the pitch bands do not reach it: changing them leaves the instrument slice as it was
    y = x.copy()
    y[:, :, cfg.frontend.n_mels:] += 3.0
    np.testing.assert_allclose(np.asarray(net(y))[:, start:stop], out[:, start:stop], atol=1e-6)


def test_features_do_not_depend_on_where_in_pitch_and_time_a_pattern_sits():
    """Max over frequency and over time: a spectral shape moved up the mel axis by a multiple of the
    band stride, or later in time by a multiple of the time stride, gives the same max features."""
    frames, n_mels = 60, 32
    inputs = keras.Input((frames, n_mels, 1))
    feats = keras.Model(inputs, timbre_features(inputs, n_mels, filters=6, units=5, name="t"))
    # read the pooled features, not the dense layer: the max half of [mean, max] over time
    pooled = keras.Model(feats.input, feats.get_layer("t_time_max").output)
    rng = np.random.default_rng(0)
    patch = rng.normal(size=(5, 8)).astype(np.float32) + 2.0  # a 5-frame, 8-band "note"
    a = np.zeros((1, frames, n_mels, 1), np.float32)
    b = np.zeros_like(a)
    a[0, 9:14, 4:12, 0] = patch
    b[0, 30:35, 16:24, 0] = patch  # 21 frames later (7 time strides), 12 bands up (3 band strides)
    np.testing.assert_allclose(np.asarray(pooled(a)), np.asarray(pooled(b)), rtol=1e-5, atol=1e-5)
    assert np.asarray(pooled(a)).max() > 0


def test_timbre_branch_serialises_and_old_configs_have_none(tmp_path):
    cfg = tiny_config(**{"model.width": 4, "model.timbre_filters": 3})
    assert_backbone_reloads(cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"model\.timbre_filters"):
        Config().replace(**{"model.timbre_filters": -1})
    with pytest.raises(ConfigError, match=r"model\.timbre_conditions"):
        build_backbone(tiny_config(**{"model.timbre_conditions": ["timbre"]}))
    # the paper's families have none; a config saved by 0.5 had none either and keeps its network
    assert Config().replace(**{"model.backbone": "inception"}).model.timbre_filters == 0
    saved = Config().to_dict()
    saved["version"] = "0.5.0"
    del saved["model"]["timbre_filters"]
    del saved["model"]["timbre_conditions"]
    old = Config.from_dict(json.loads(json.dumps(saved)))
    assert old.model.timbre_filters == 0 and old.model.chroma_templates == 32
    assert "timbre_conv" not in [layer.name for layer in build_backbone(old).layers]
