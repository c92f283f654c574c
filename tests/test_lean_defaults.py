"""0.3's defaults: the lean backbone and its onset branch, the cosine schedule, the feature
cache, and what configs saved by earlier versions still get."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import BACKBONE_DEFAULTS, Config, ConfigError
from disentangled_ml.data.pipeline import track_features
from disentangled_ml.features import filterbanks, log_mel
from disentangled_ml.models.backbones import STEMS, OnsetAutocorrelation, build_backbone
from disentangled_ml.models.trainer import build_triplet_model, learning_rate
from collections_for_tests import tiny_config


def test_default_is_the_lean_network_and_paper_families_keep_their_shape():
    cfg = Config()
    assert (cfg.model.backbone, cfg.model.width, cfg.model.onset_lags) == ("inception_lite", 32, 96)
    paper = cfg.replace(**{"model.backbone": "inception"})
    # naming the 0.2 default gives the 0.2 network: width 64, 5x5 stem at full resolution, no onset branch
    assert (paper.model.width, paper.model.onset_lags) == (64, 0)
    net = build_backbone(paper)
    assert net.get_layer("stem_conv").kernel.shape == (5, 5, 1, 64)
    assert net.get_layer("stem_conv").strides == (1, 1)
    assert not any(isinstance(layer, OnsetAutocorrelation) for layer in net.layers)
    lean = build_backbone(cfg)
    assert lean.get_layer("stem_conv").strides == (2, 1)
    assert any(isinstance(layer, OnsetAutocorrelation) for layer in lean.layers)
    # the lean stem (stride 2 in time, then 2x2 pooling) hands the first block half the paper's
    # frames and all of its frequency rows: 12 pitch bands an octave, as in the paper
    first = lambda m: m.get_layer("block1_1x1_conv").output.shape[1:3]  # noqa: E731
    assert first(lean)[1] == first(net)[1] and 2 * first(lean)[0] <= first(net)[0] + 1
    # an explicit width or onset branch survives a change of family
    assert cfg.replace(**{"model.backbone": "resnet", "model.width": 16}).model.width == 16
    assert set(STEMS) == set(BACKBONE_DEFAULTS)


def test_configs_saved_before_0_3_get_the_0_2_network_schedule_and_cache():
    saved = Config().to_dict()
    saved["version"] = "0.2.0"
    for section, key in (("model", "onset_lags"), ("model", "stem_stride"), ("train", "lr_schedule"), ("train", "warmup_steps"),
                         ("train", "lr_final_fraction"), ("data", "cache_features")):
        del saved[section][key]
    saved["model"].update(backbone="inception", width=64)
    old = Config.from_dict(saved)
    assert (old.model.backbone, old.model.width, old.model.onset_lags) == ("inception", 64, 0)
    assert old.model.stem_stride == (1, 1)
    assert old.train.lr_schedule == "plateau" and old.data.cache_features is False
    # a 0.3 config naming the lean network meant its stem with stride 2 on both axes
    saved_03 = Config().to_dict()
    saved_03["version"] = "0.3.0"
    del saved_03["model"]["stem_stride"]
    assert Config.from_dict(saved_03).model.stem_stride == (2, 2)
    assert Config.from_dict(json.loads(json.dumps(Config().to_dict()))).model.stem_stride == (2, 1)
    # a config a user wrote (no version) takes today's defaults
    assert Config.from_dict({"model": {"backbone": "inception"}}).train.lr_schedule == "cosine"


@pytest.mark.parametrize("bad", [{"model.onset_lags": -1}, {"model.width": 2}, {"train.lr_schedule": "step"},
                                 {"model.stem_stride": [2]}, {"model.stem_stride": [0, 1]},
                                 {"train.warmup_steps": -5}, {"train.lr_final_fraction": 1.5}])
def test_bad_values_are_named(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().replace(**bad)


def test_onset_branch_longer_than_the_segment_is_refused():
    cfg = tiny_config(**{"model.onset_lags": 96})  # 61 frames a segment
    with pytest.raises(ConfigError, match="model.onset_lags=96"):
        build_backbone(cfg)


def test_onset_autocorrelation_peaks_at_the_beat_period():
    frames, bands, period = 129, 16, 21  # 21 frames = 0.49 s: 123 BPM at hop 512 / 22,050 Hz
    x = np.zeros((2, frames, bands), np.float32)
    x[0, ::period] = 3.0  # onsets every `period` frames in every band
    x[1, ::period // 3 * 2] = 3.0  # a faster pulse: 14 frames
    x += np.random.default_rng(0).normal(0, 0.05, x.shape).astype(np.float32)
    layer = OnsetAutocorrelation(n_bands=bands, lags=40)
    ac = np.asarray(layer(x))
    assert ac.shape == (2, 40) and np.all(np.abs(ac) <= 1.0 + 1e-5)
    assert int(np.argmax(ac[0])) + 1 == period
    assert int(np.argmax(ac[1])) + 1 == 14
    # loudness does not matter: the autocorrelation is divided by its lag-0 energy
    np.testing.assert_allclose(np.asarray(layer(4 * x)), ac, atol=1e-4)
    # bands past n_bands (the pitch bands) are not read
    wide = np.concatenate([x, np.random.default_rng(1).normal(size=(2, frames, 5)).astype(np.float32)], -1)
    np.testing.assert_allclose(np.asarray(layer(wide)), ac, atol=1e-5)
    again = OnsetAutocorrelation.from_config(json.loads(json.dumps(layer.get_config())))
    assert (again.n_bands, again.lags) == (bands, 40)


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    cfg = Config().replace(**{"train.epochs": 4, "train.steps_per_epoch": 100, "train.warmup_steps": 50,
                              "train.learning_rate": 2e-3, "train.lr_final_fraction": 0.05})
    lr = learning_rate(cfg)
    values = [float(lr(s)) for s in (0, 25, 50, 225, 400)]
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert values[1] == pytest.approx(1e-3, rel=1e-3)
    assert values[2] == pytest.approx(2e-3, rel=1e-3)
    assert values[2] > values[3] > values[4]
    assert values[4] == pytest.approx(2e-3 * 0.05, rel=1e-3)
    assert learning_rate(cfg.replace(**{"train.lr_schedule": "plateau"})) == 2e-3


def test_cosine_schedule_survives_save_and_load(tmp_path):
    cfg = tiny_config(**{"model.width": 4, "train.epochs": 2, "train.steps_per_epoch": 10})
    model = build_triplet_model(cfg)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)
    sched = again.optimizer._learning_rate
    assert isinstance(sched, keras.optimizers.schedules.CosineDecay)
    assert float(sched(19)) > 0  # the warm-up is cut to fit the run's 20 steps


def test_cached_track_features_give_the_crops_computed_on_the_fly():
    cfg = tiny_config()
    fe = cfg.frontend
    banks = filterbanks(fe, as_tensors=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(4.0 * fe.sample_rate)) / fe.sample_rate
    y = 0.4 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2 + 0.02 * rng.standard_normal(t.size)
    pcm = np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)
    feats = track_features(tf.constant(pcm), cfg, banks).numpy()
    assert feats.dtype == np.float16 and feats.shape[1] == fe.n_bands
    wave = pcm.astype(np.float32) / 32768.0
    F, n_mels = fe.num_frames, fe.n_mels
    edge = (fe.pitch_n_fft - fe.n_fft) // 2 // fe.hop_length + 1  # frames whose pitch window reaches past a crop
    for start in (0, 7, 40, feats.shape[0] - F):
        crop = log_mel(wave[None, start * fe.hop_length:start * fe.hop_length + fe.segment_samples], fe, banks)[0]
        crop = crop.numpy()
        cached = feats[start:start + F].astype(np.float32)
        tol = 2 ** -10 * np.abs(crop).max() + 1e-3  # float16 rounding
        # mel bands: the same frames, whatever the crop's position
        np.testing.assert_allclose(cached[:, :n_mels], crop[:, :n_mels], atol=tol)
        # pitch bands: the same away from the crop's edges, where the crop alone sees zero padding
        np.testing.assert_allclose(cached[edge:-edge, n_mels:], crop[edge:-edge, n_mels:], atol=tol)


def test_onset_branch_feeds_only_the_tempo_slice_by_default():
    assert tiny_config().model.onset_conditions == ("tempo",)
    # the harmony branch feeds mood (test_harmony.py), the timbre branch instrument (test_timbre.py)
    cfg = tiny_config(**{"model.chroma_templates": 0, "model.timbre_filters": 0})
    net = build_backbone(cfg)
    # silence the main projection: what is left of the output comes through the onset branch alone
    proj = net.get_layer("projection")
    proj.set_weights([np.zeros_like(w) for w in proj.get_weights()])
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(2, cfg.frontend.num_frames, cfg.frontend.n_bands)).astype(np.float32)
    out = np.asarray(net(x))
    start, stop = cfg.conditions.slices["tempo"]
    assert np.abs(out[:, start:stop]).max() > 0
    outside = np.concatenate([out[:, :start], out[:, stop:]], axis=1)
    assert np.abs(outside).max() == 0.0
    # null feeds the whole embedding (0.3's graph: the onsets join the pooled features)
    whole = build_backbone(cfg.replace(**{"model.onset_conditions": None}))
    assert "cnn_and_onsets" in [layer.name for layer in whole.layers]
    with pytest.raises(ConfigError, match="model.onset_conditions"):
        build_backbone(cfg.replace(**{"model.onset_conditions": ["rhythm"]}))


def test_configs_saved_by_0_3_keep_the_onset_branch_on_every_slice():
    saved = Config().to_dict()
    saved["version"] = "0.3.0"
    for key in ("stem_stride", "onset_conditions"):
        del saved["model"][key]
    old = Config.from_dict(saved)
    assert old.model.onset_conditions is None and old.model.stem_stride == (2, 2)
    assert Config.from_dict(json.loads(json.dumps(Config().to_dict()))).model.onset_conditions == ("tempo",)


def test_training_on_a_collection_prepared_by_an_older_version_says_which_defaults_it_keeps(tmp_path, caplog):
    import argparse
    import logging

    from disentangled_ml.cli import train as cli_train

    saved = Config().to_dict()
    saved["version"] = "0.3.0"
    for key in ("stem_stride", "onset_conditions"):
        del saved["model"][key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    with caplog.at_level(logging.WARNING):
        cfg = cli_train.load_config(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "run")]))
    assert cfg.model.stem_stride == (2, 2)
    assert "written by disentangled_ml 0.3.0" in caplog.text and "--config" in caplog.text
    caplog.clear()
    (tmp_path / "config.json").write_text(json.dumps(Config().to_dict()))
    with caplog.at_level(logging.WARNING):
        cli_train.load_config(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "run")]))
    assert "written by" not in caplog.text


def test_a_collection_prepared_by_an_older_version_trains_todays_network_unless_told_otherwise(tmp_path, caplog):
    """What `dml prepare` of 0.5 wrote (that version's defaults, a collection setting of the user's)
    gives today's network with the collection's own settings; --config on the same file gives 0.5's."""
    import argparse
    import logging

    from disentangled_ml.cli import train as cli_train

    then = Config.from_dict({"version": "0.5.0"}).replace(**{"frontend.n_mels": 96, "data.split_seed": 3})
    saved = then.to_dict()
    saved["version"] = "0.5.0"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert Config.from_json(str(path)).model.timbre_filters == 0  # 0.5 had no timbre branch
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    with caplog.at_level(logging.WARNING):
        cfg = cli_train.load_config(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "run")]))
    today = Config()
    assert (cfg.model, cfg.loss, cfg.train) == (today.model, today.loss, today.train)
    assert cfg.frontend.n_mels == 96 and cfg.data.split_seed == 3  # the collection's own settings
    assert "written by disentangled_ml 0.5.0" in caplog.text and f"--config {path}" in caplog.text
    explicit = cli_train.load_config(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "run"),
                                                       "--config", str(path)]))
    assert explicit.model == then.model and explicit.model.timbre_filters == 0


@pytest.mark.parametrize("command", ["train", "tune"])
def test_cli_help_quotes_todays_training_defaults(command, capsys):
    """`dml train --help` and `dml tune --help` quote TrainConfig's defaults, not numbers of an older version."""
    from disentangled_ml.cli import main as dml_main
    from disentangled_ml.config import TrainConfig

    with pytest.raises(SystemExit):
        dml_main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    train = TrainConfig()
    assert f"train.epochs; default {train.epochs})" in text
    assert f"train.steps_per_epoch; default {train.steps_per_epoch})" in text
    assert f"train.batch_size; default {train.batch_size})" in text
