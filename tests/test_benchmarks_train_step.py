"""disentangled_ml.models.profile (the MAC counter of benchmarks/train_step.py) on models counted by hand."""

import keras
import pytest
from keras import layers

from disentangled_ml.config import Config
from disentangled_ml.models import build_backbone
from disentangled_ml.models.profile import frontend_macs, layer_macs, summarize_macs


def by_name(rows):
    return {r["layer"]: r for r in rows}


def test_conv_dense_and_strided_conv_by_hand():
    x_in = keras.Input((8, 8, 1))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(x_in)  # 8*8 positions x 3*3*1 x 4
    s = layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False, name="strided")(x)  # 4*4 x 3*3*4 x 6
    g = layers.Conv2D(6, 1, groups=2, name="grouped")(s)  # 4*4 x 1*1*(6/2) x 6
    d = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(g)  # 4*4 x 3*3 x 6*2
    p = layers.SeparableConv2D(5, 3, padding="valid", name="separable")(d)  # 2*2 x (3*3*12 + 12*5)
    v = layers.GlobalAveragePooling2D(name="pool")(p)
    y = layers.Dense(3, name="dense")(v)  # 5 x 3
    rows = by_name(layer_macs(keras.Model(x_in, y)))
    assert rows["conv"]["macs"] == 8 * 8 * 9 * 1 * 4 == 2304
    assert rows["conv"]["params"] == 9 * 4 + 4
    assert rows["conv"]["output_shape"] == [8, 8, 4]
    assert rows["strided"]["macs"] == 4 * 4 * 9 * 4 * 6
    assert rows["strided"]["resolution"] == [4, 4]
    assert rows["grouped"]["macs"] == 4 * 4 * 3 * 6
    assert rows["depthwise"]["macs"] == 4 * 4 * 9 * 6 * 2
    assert rows["separable"]["macs"] == 2 * 2 * (9 * 12 + 12 * 5)
    assert rows["pool"]["macs"] == 0 and rows["pool"]["counted"]
    assert rows["dense"]["macs"] == 5 * 3 and rows["dense"]["params"] == 5 * 3 + 3

    summary = summarize_macs(list(rows.values()), [8, 8])
    assert summary["total_macs"] == sum(r["macs"] for r in rows.values())
    assert summary["full_resolution_share"] == pytest.approx(2304 / summary["total_macs"])
    assert summary["uncounted"] == []


def test_unknown_layers_are_listed_as_uncounted():
    class Scale(layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    x_in = keras.Input((6,))
    y = layers.Dense(2, name="dense")(Scale(name="scale")(x_in))
    rows = layer_macs(keras.Model(x_in, y))
    summary = summarize_macs(rows)
    assert summary["total_macs"] == 12
    assert [u["layer"] for u in summary["uncounted"]] == ["scale"]
    assert summary["total_params"] == 6 + 6 * 2 + 2


def test_backbone_layerwise_sum_is_the_total():
    cfg = Config().replace(**{"model.width": 8})
    model = build_backbone(cfg)
    rows = layer_macs(model)
    summary = summarize_macs(rows, [cfg.frontend.num_frames, cfg.frontend.n_bands])
    assert summary["total_macs"] > 0
    assert sum(r["macs"] for r in rows) == summary["total_macs"]
    assert summary["total_params"] == model.count_params()
    assert 0 <= summary["full_resolution_share"] <= summary["first_two_resolutions_share"] <= 1
    assert sum(e["macs"] for e in summary["by_resolution"]) == summary["total_macs"]


def test_frontend_macs_counts_filterbank_products():
    fe = Config().replace(**{"frontend.pitch_bands_per_octave": 0}).frontend
    out = frontend_macs(fe)
    assert out["pitch"] is None
    assert out["mel"]["filterbank"] == fe.num_frames * (fe.n_fft // 2 + 1) * fe.n_mels
    assert out["total"] > out["mel"]["filterbank"]
    with_pitch = frontend_macs(Config().frontend)
    assert with_pitch["pitch"]["filterbank"] == (Config().frontend.num_frames * (Config().frontend.pitch_n_fft // 2 + 1)
                                                 * Config().frontend.n_pitch_bands)


def test_custom_layer_can_count_itself():
    class Squares(layers.Layer):
        def call(self, x):
            return x * x

        def count_macs(self, output_shape, input_shapes):
            return int(output_shape[-1])

    x_in = keras.Input((7,))
    rows = by_name(layer_macs(keras.Model(x_in, Squares(name="squares")(x_in))))
    assert rows["squares"]["macs"] == 7 and rows["squares"]["counted"]
