"""The classification term (loss.class_weight): ConditionClassLoss against numpy, its views,
its wiring into TripletModel, and the class counts a run records."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.losses import ConditionClassLoss, build_class_loss

NAMES = ("genre", "mood", "tempo")
D = 6
# rows: genre = dims 0-1, mood = dims 2-3, tempo = dims 4-5, track = all
MASKS = np.kron(np.eye(3, dtype=np.float32), np.ones((1, 2), np.float32))
MASKS = np.concatenate([MASKS, np.ones((1, D), np.float32)])


def numpy_reference(emb, masks, proxies, classes, temperature):
    """Per condition: mean over labelled rows of the cross-entropy against the label distribution."""
    per = []
    for s, (w, c) in enumerate(zip(proxies, classes)):
        if w is None:
            per.append(np.nan)
            continue
        v = emb * masks[s]
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        p = w * masks[s]
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        logits = v @ p.T / temperature
        logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
        known = c.sum(1) > 0
        t = c[known] / c[known].sum(1, keepdims=True)
        per.append(-(t * logp[known]).sum(1).mean() if known.any() else np.nan)
    present = [x for x in per if not np.isnan(x)]
    return float(np.mean(present)), per


def test_matches_numpy_with_multi_labels_and_unlabelled_crops():
    rng = np.random.default_rng(0)
    layer = ConditionClassLoss(NAMES, {"genre": 3, "mood": 2}, D, temperature=0.1, seed=1)
    emb = rng.normal(size=(7, D)).astype(np.float32)
    genre = np.zeros((7, 3), np.float32)
    genre[[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]] = 1
    genre[0, 2] = 1  # two labels: the target is half each
    mood = np.zeros((7, 2), np.float32)
    mood[[0, 6], [1, 0]] = 1  # crops 1-5 have no mood label and are not scored
    loss, per = layer(tf.constant(emb), tf.constant(MASKS), [tf.constant(genre), tf.constant(mood), None])
    proxies = [layer.proxies["genre"].numpy(), layer.proxies["mood"].numpy(), None]
    ref, ref_per = numpy_reference(emb, MASKS, proxies, [genre, mood, None], 0.1)
    assert float(loss) == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(per.numpy()[:2], ref_per[:2], rtol=1e-5)
    assert per.numpy()[2] == 0.0  # tempo: no proxies


def test_a_condition_pulls_only_on_its_own_view():
    layer = ConditionClassLoss(NAMES, {"genre": 2}, D, seed=0)
    emb = tf.Variable(np.random.default_rng(1).normal(size=(4, D)).astype(np.float32))
    genre = tf.constant(np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    with tf.GradientTape() as tape:
        loss, _ = layer(emb, tf.constant(MASKS), [genre, None, None])
    grad = tape.gradient(loss, [emb, layer.proxies["genre"]])
    assert np.abs(grad[0].numpy()[:, :2]).sum() > 0
    np.testing.assert_array_equal(grad[0].numpy()[:, 2:], 0.0)  # mood and tempo slices untouched
    np.testing.assert_array_equal(grad[1].numpy()[:, 2:], 0.0)  # the proxies live in the slice too


def test_training_on_it_separates_the_classes():
    rng = np.random.default_rng(2)
    layer = ConditionClassLoss(("genre",), {"genre": 2}, 4, temperature=0.1, seed=0)
    emb = tf.Variable(rng.normal(size=(8, 4)).astype(np.float32))
    labels = tf.constant(np.eye(2, dtype=np.float32)[[0, 1] * 4])
    masks = tf.ones((2, 4))
    opt = keras.optimizers.Adam(0.05)
    first = None
    for _ in range(60):
        with tf.GradientTape() as tape:
            loss, _ = layer(emb, masks, [labels])
        first = float(loss) if first is None else first
        variables = [emb, layer.proxies["genre"]]
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    assert float(loss) < 0.1 * first
    e = emb.numpy() / np.linalg.norm(emb.numpy(), axis=1, keepdims=True)
    cos = e @ e.T
    same = np.equal.outer(np.arange(8) % 2, np.arange(8) % 2)
    assert cos[same].min() > cos[~same].max()


def test_config_validation_serialisation_and_build():
    with pytest.raises(ConfigError, match="loss.class_weight"):
        Config().replace(**{"loss.class_weight": -1.0})
    with pytest.raises(ConfigError, match="loss.class_temperature"):
        Config().replace(**{"loss.class_temperature": 0.0})
    with pytest.raises(ConfigError, match="conditions.class_counts"):
        Config().replace(**{"conditions.class_counts": {"colour": 3}})
    with pytest.raises(ConfigError, match="conditions.class_counts"):
        Config().replace(**{"conditions.class_counts": {"genre": 0}})
    layer = ConditionClassLoss(NAMES, {"mood": 4}, D, temperature=0.2, seed=3)
    again = ConditionClassLoss.from_config(layer.get_config())
    assert again.class_counts == {"mood": 4} and again.temperature == 0.2
    cfg = Config().replace(**{"loss.class_weight": 0.5, "conditions.class_counts": {"genre": 4, "mood": 3}})
    built = build_class_loss(cfg)
    assert built.class_counts == {"genre": 4, "mood": 3}
    assert tuple(built.proxies["genre"].shape) == (4, cfg.conditions.embedding_dim)
    assert build_class_loss(cfg.replace(**{"loss.class_weight": 0.0})) is None
    assert build_class_loss(cfg.replace(**{"conditions.class_counts": None})) is None


def test_older_configs_train_on_triplets_alone_and_keep_their_hash():
    old = Config().to_dict()
    old["version"] = "0.7.0"
    for key in ("class_weight", "class_temperature"):
        old["loss"].pop(key)
    old["conditions"].pop("class_counts")
    old["frontend"]["pitch_decimation"] = 1  # what 0.7 wrote (0.9's default is 4)
    cfg = Config.from_dict(old)
    assert cfg.loss.class_weight == 0.0 and cfg.conditions.class_counts is None
    # the hash a 0.7 run, export or catalogue recorded (it had none of these fields)
    import hashlib
    import json

    d = dict(old)
    d.pop("version")
    for section, key in (("frontend", "pitch_decimation"), ("loss", "temperature")):
        d[section].pop(key, None)
    assert cfg.hash() == hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _crop_batch(cfg, b=4, seed=0):
    """A triplet batch with the crop labels the training pipeline sends."""
    rng = np.random.default_rng(seed)
    shape = (b, cfg.frontend.num_frames, cfg.frontend.n_bands)
    x = {r: tf.constant(rng.normal(size=shape).astype(np.float32)) for r in ("anchor", "positive", "negative")}
    x["condition"] = tf.constant(rng.integers(0, len(cfg.conditions.names) + 1, size=b), tf.int32)
    x["crop_track"] = tf.constant(rng.integers(0, 100, size=(b, 3)), tf.int32)
    x["crop_excerpt"] = x["crop_track"]
    x["crop_frame"] = tf.zeros((b, 3), tf.int32)
    x["crop_tempo"] = tf.constant(rng.uniform(60, 180, size=(b, 3)), tf.float32)
    for name in cfg.conditions.names:
        k = cfg.conditions.class_counts.get(name, 40)
        x[f"crop_classes_{name}"] = tf.constant(np.eye(k, dtype=bool)[rng.integers(0, k, size=(b, 3))])
    return x


def test_triplet_model_adds_the_term_in_training_only_and_saves_its_proxies(tmp_path):
    from disentangled_ml.models.trainer import build_triplet_model

    cfg = Config().replace(**{"model.width": 4, "loss.class_weight": 2.0,
                              "conditions.class_counts": {"genre": 3, "mood": 2, "instrument": 4}})
    model = build_triplet_model(cfg)
    x = _crop_batch(cfg)
    out = model.triplet_outputs(x, training=True)
    assert float(out["class_loss"]) > 0
    masks = model.condition_masks.mask_matrix()
    assert float(out["loss"]) == pytest.approx(float(out["triplet_loss"]) + 2.0 * float(out["class_loss"]), rel=1e-5)
    assert "class_loss" not in model.triplet_outputs(x, training=False)
    logs = model.train_step(x)
    assert "loss_class" in logs and float(logs["loss_class"]) > 0
    assert "loss_class" not in model.test_step(x)  # evaluation has no crop labels to classify
    assert model.training_only_metrics == ("loss_class",)  # the multi-worker loop skips its val_ figure too

    # a hand-made triplet batch without crop labels trains on the triplets alone, and says so
    bare = {k: x[k] for k in ("anchor", "positive", "negative", "condition")}
    import logging

    caplog_records = []
    handler = logging.Handler()
    handler.emit = caplog_records.append
    logging.getLogger("disentangled_ml.models.trainer").addHandler(handler)
    try:
        out_bare = model.triplet_outputs(bare, training=True)
    finally:
        logging.getLogger("disentangled_ml.models.trainer").removeHandler(handler)
    assert "class_loss" not in out_bare
    assert any("classification term" in r.getMessage() for r in caplog_records)

    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(again.class_loss.proxies["mood"].numpy(), model.class_loss.proxies["mood"].numpy())
    assert again.class_loss.class_counts == {"genre": 3, "mood": 2, "instrument": 4}
    del masks


def test_a_run_records_its_class_counts_and_refuses_a_changed_collection(tmp_path):
    from collections_for_tests import make_prepared
    from disentangled_ml.data.labels import LabelTables
    from disentangled_ml.training import prepare_run
    from disentangled_ml.training.run_setup import load_prepared

    overrides = {"model.width": 4, "data.eval_triplets_per_condition": 4, "data.split_fractions": [0.6, 0.2, 0.2]}
    prepared_dir, cfg, _ = make_prepared(tmp_path / "p", overrides)
    run = str(tmp_path / "run")
    data = prepare_run(prepared_dir, run, cfg)
    tables = LabelTables.from_tracks(load_prepared(prepared_dir), cfg)
    expected = {n: len(v) for n, v in tables.vocab.items()}
    assert data.config.conditions.class_counts == expected and "tempo" not in expected
    assert Config.from_json(os.path.join(run, "config.json")).conditions.class_counts == expected
    # the saved run now meets a collection with another vocabulary
    saved = Config.from_json(os.path.join(run, "config.json"))
    wrong = dict(expected)
    wrong["genre"] += 1
    saved.replace(**{"conditions.class_counts": wrong}).to_json(os.path.join(run, "config.json"))
    with pytest.raises(ConfigError, match="classes per condition"):
        prepare_run(prepared_dir, run, cfg)
