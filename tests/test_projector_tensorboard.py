"""The embedding projector as TensorBoard serves it from ``tensorboard --logdir RUN_DIR/tensorboard``.

TensorBoard's projector plugin reads ``projector_config.pbtxt`` only from its runs (folders
holding an event file) and from the logdir itself. These tests write a run's projector the way
``dml train`` does (:func:`disentangled_ml.training.write_validation_projector`, with a tiny
Keras model in place of the trained network) next to a ``validation`` scalar run, and load the
plugin over the logdir as TensorBoard does: an ``EventMultiplexer`` over the logdir behind a
``MultiplexerDataProvider``, then the plugin's HTTP routes.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import data_provider as tb_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.projector import projector_plugin
from werkzeug.test import Client

from collections_for_tests import tiny_config, write_tracks
from disentangled_ml.projector import EVENTS_PREFIX, write_projector
from disentangled_ml.training import write_validation_projector

SEGMENTS_PER_TRACK = 2
N_TRACKS = 4


def _tiny_embedding_model(cfg):
    """waveform [B, segment_samples] -> L2-normalised embedding [B, embedding_dim]."""
    import keras

    frames = cfg.frontend.segment_samples // 100
    assert frames * 100 == cfg.frontend.segment_samples
    inp = keras.Input((cfg.frontend.segment_samples,))
    x = keras.layers.Reshape((frames, 100))(inp)
    x = keras.layers.GlobalAveragePooling1D()(keras.ops.abs(x))
    x = keras.layers.Dense(cfg.conditions.embedding_dim, kernel_initializer=keras.initializers.RandomNormal(seed=0))(x)
    return keras.Model(inp, keras.layers.UnitNormalization()(x))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory's TensorBoard folder as ``dml train`` leaves it: a scalar run and the projector."""
    root = tmp_path_factory.mktemp("projector_tb")
    audio = root / "audio"
    audio.mkdir()
    tracks = write_tracks(str(audio), n=N_TRACKS)
    cfg = tiny_config()
    run = str(root / "run")
    writer = tf.summary.create_file_writer(os.path.join(run, "tensorboard", "validation"))
    with writer.as_default():
        tf.summary.scalar("epoch_loss", 0.5, step=0)
    writer.close()
    out = write_validation_projector(run, _tiny_embedding_model(cfg), tracks, list(range(N_TRACKS)), cfg,
                                     segments_per_track=SEGMENTS_PER_TRACK)
    assert out == os.path.join(run, "tensorboard", "projector")
    return run, cfg


def _load_plugin(logdir):
    """The projector plugin over ``logdir``, with its activity determined, as TensorBoard loads it."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=logdir, multiplexer=multiplexer,
        data_provider=tb_data_provider.MultiplexerDataProvider(multiplexer, logdir))
    plugin = projector_plugin.ProjectorPlugin(context)
    if not plugin.is_active():  # the first call starts a thread that decides
        thread = plugin._thread_for_determining_is_active
        if thread is not None:
            thread.join(timeout=60)
    return plugin


def _get(plugin, route, **params):
    app = plugin.get_plugin_apps()[route]
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = Client(app).get(route + ("?" + query if query else ""))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


@pytest.mark.parametrize("logdir_of", ["tensorboard", "run"])
def test_projector_served_from_the_printed_logdir(run_dir, logdir_of):
    """``tensorboard --logdir RUN_DIR/tensorboard`` (what `make demo` prints) and ``--logdir RUN_DIR``."""
    run, cfg = run_dir
    logdir = os.path.join(run, "tensorboard") if logdir_of == "tensorboard" else run
    projector_run = "projector" if logdir_of == "tensorboard" else os.path.join("tensorboard", "projector")
    plugin = _load_plugin(logdir)
    assert plugin.is_active()
    assert json.loads(_get(plugin, projector_plugin.RUNS_ROUTE).get_data()) == [projector_run]

    n_points = N_TRACKS * SEGMENTS_PER_TRACK
    info = json.loads(_get(plugin, projector_plugin.CONFIG_ROUTE, run=projector_run).get_data())
    shapes = {e["tensorName"]: [int(d) for d in e["tensorShape"]] for e in info["embeddings"]}
    names = {c: f"{c}/.ATTRIBUTES/VARIABLE_VALUE" for c in ("whole",) + tuple(cfg.conditions.names)}
    assert set(shapes) == set(names.values())  # the whole embedding and each condition's slice, nothing else
    assert shapes[names["whole"]] == [n_points, cfg.conditions.embedding_dim]
    tensors = {}
    for condition, name in names.items():
        if condition != "whole":
            assert shapes[name] == [n_points, cfg.conditions.slice_dim], condition
        raw = _get(plugin, projector_plugin.TENSOR_ROUTE, run=projector_run, name=name).get_data()
        tensors[condition] = np.frombuffer(raw, np.float32).reshape(shapes[name])
        assert np.all(np.isfinite(tensors[condition])), condition
        # one metadata row per point, under a header row
        lines = _get(plugin, projector_plugin.METADATA_ROUTE, run=projector_run,
                     name=name).get_data(as_text=True).splitlines()
        header = lines[0].split("\t")
        assert {"track_id", "segment", "genre", "mood", "instrument", "tempo"} <= set(header), header
        assert len(lines) == 1 + n_points, condition
        assert all(len(line.split("\t")) == len(header) for line in lines[1:])
    np.testing.assert_allclose(np.linalg.norm(tensors["whole"], axis=1), 1.0, rtol=1e-5)
    for condition, (start, stop) in cfg.conditions.slices.items():
        np.testing.assert_array_equal(tensors[condition], tensors["whole"][:, start:stop])
    # No sprite images are written (the points are audio segments), and none is configured.
    assert not any(e.get("sprite") for e in info["embeddings"])


def test_projector_needs_its_event_file(run_dir, tmp_path):
    """Without the event file in the projector folder the plugin has no run (the bug this guards against)."""
    run, _ = run_dir
    logdir = str(tmp_path / "tensorboard")
    tf.io.gfile.makedirs(logdir)
    for sub in ("validation", "projector"):
        src = os.path.join(run, "tensorboard", sub)
        os.makedirs(os.path.join(logdir, sub))
        for name in os.listdir(src):
            if sub == "validation" or not name.startswith(EVENTS_PREFIX):
                tf.io.gfile.copy(os.path.join(src, name), os.path.join(logdir, sub, name))
    plugin = _load_plugin(logdir)
    assert not plugin.is_active()
    assert json.loads(_get(plugin, projector_plugin.RUNS_ROUTE).get_data()) == []


def test_rewriting_the_projector_keeps_one_event_file(tmp_path):
    """A resumed run writes its projector again: still one event file, and the newest tensors are served."""
    log_dir = str(tmp_path / "tensorboard" / "projector")
    meta = [{"track_id": f"t{i}"} for i in range(3)]
    rng = np.random.default_rng(0)
    for k in range(2):
        emb = rng.standard_normal((3, 4)).astype(np.float32)
        write_projector(log_dir, emb, {"a": (0, 2), "b": (2, 4)}, meta)
    assert len([n for n in os.listdir(log_dir) if n.startswith(EVENTS_PREFIX)]) == 1
    plugin = _load_plugin(str(tmp_path / "tensorboard"))
    assert plugin.is_active()
    raw = _get(plugin, projector_plugin.TENSOR_ROUTE, run="projector", name="b/.ATTRIBUTES/VARIABLE_VALUE").get_data()
    np.testing.assert_array_equal(np.frombuffer(raw, np.float32).reshape(3, 2), emb[:, 2:])
