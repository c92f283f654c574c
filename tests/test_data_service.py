"""Sharded audio storage and the tf.data service: the pipeline reads TFRecord shards (local or any tf.io.gfile
filesystem), and `dml train --data-service` trains through a dispatcher and two worker processes on 127.0.0.1."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from disentangled_ml.config import ConfigError
from disentangled_ml.data import service
from disentangled_ml.data.labels import LabelTables
from disentangled_ml.data.manifest import read_manifest
from disentangled_ml.data.pipeline import DecodeStats, decoded_tracks, training_dataset
from disentangled_ml.training import train
from collections_for_tests import make_prepared, process_timeout, tiny_config

OVERRIDES = {"model.width": 4, "model.backbone": "plain", "train.steps_per_epoch": 3, "train.epochs": 1,
             "data.eval_triplets_per_condition": 8, "data.split_fractions": [0.6, 0.2, 0.2]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    prepared_dir, cfg, _ = make_prepared(tmp_path_factory.mktemp("service"), OVERRIDES, cache_audio=True, shards=3)
    return prepared_dir, cfg


def _copy_tree(src, dst):
    tf.io.gfile.makedirs(dst)
    for name in tf.io.gfile.listdir(src):
        tf.io.gfile.copy(os.path.join(src, name), dst + "/" + name, overwrite=True)


def test_shards_give_the_tracks_and_stream_of_the_files(prepared, caplog):
    prepared_dir, cfg = prepared
    tracks = read_manifest(os.path.join(prepared_dir, "manifest.csv"))
    tables = LabelTables.from_tracks(tracks, cfg)
    rows = [0, 2, 3, 5, 7, 11, 13, 17, 19]  # a split: other tracks' records are skipped
    # on a non-local tf.io.gfile filesystem, as gs:// or hdfs:// would be
    remote = "ram://dml-test/audio"
    _copy_tree(os.path.join(prepared_dir, "audio"), remote)

    stats = DecodeStats()
    from_shards = {int(r): pcm.numpy() for r, pcm in decoded_tracks(tracks, rows, cfg, stats, audio_dir=remote)}
    from_files = {int(r): pcm.numpy() for r, pcm in decoded_tracks(tracks, rows, cfg)}
    assert sorted(from_shards) == sorted(from_files) == rows
    assert stats.as_dict() == {"attempted": len(rows), "decoded": len(rows), "skipped": 0}
    for r in rows:  # prepare decoded the same audio the pipeline decodes
        np.testing.assert_array_equal(from_shards[r], from_files[r])
    # interleaved over the shards (3 shards here), in a fixed order
    order = [int(r) for r, _ in decoded_tracks(tracks, rows, cfg, audio_dir=remote)]
    assert order == [int(r) for r, _ in decoded_tracks(tracks, rows, cfg, audio_dir=remote)]
    assert order != sorted(order)

    a = training_dataset(tracks, tables, rows, cfg, audio_dir=remote)
    b = training_dataset(tracks, tables, rows, cfg)
    assert a.element_spec == b.element_spec
    seen = set()
    for el in a.take(12):
        assert el["anchor"].shape == (cfg.train.batch_size, cfg.frontend.num_frames, cfg.frontend.n_bands)
        assert np.isfinite(el["anchor"].numpy()).all()
        seen.update(el["condition"].numpy().tolist())
    assert seen <= set(range(len(cfg.conditions.names) + 1)) and len(seen) >= 3

    # shards at another sample rate do not fit: the files are decoded instead, with a warning
    other = cfg.replace(**{"frontend.sample_rate": 16000})
    with caplog.at_level("WARNING"):
        ds = decoded_tracks(tracks, rows, other, audio_dir=remote)
    assert "decoding the original files instead" in caplog.text
    assert isinstance(ds, tf.data.Dataset)
    with pytest.raises(ConfigError, match="index.json"):
        decoded_tracks(tracks, rows, cfg, audio_dir="ram://dml-test/nothing-here")


def _start_worker(dispatcher_port, log_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "disentangled_ml", "data-service", "worker", "--dispatcher",
                             f"127.0.0.1:{dispatcher_port}", "--port", "0", "--host", "127.0.0.1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


@pytest.mark.slow
def test_train_through_dispatcher_and_two_workers(prepared, tmp_path):
    prepared_dir, cfg = prepared
    dispatcher = service.start_dispatcher(port=0)
    port = int(dispatcher.target.rsplit(":", 1)[1])
    address = f"grpc://127.0.0.1:{port}"
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    procs = [_start_worker(port, p) for p in logs]
    try:
        deadline = time.time() + process_timeout(120)
        while dispatcher._num_workers() < 2 and time.time() < deadline:
            assert all(p.poll() is None for p in procs), [p.read_text()[-2000:] for p in logs]
            time.sleep(0.2)
        assert dispatcher._num_workers() == 2

        # The workers draw their own seeds: two workers give different batches. (With fixed seeds the
        # second worker's stream repeats the first's batch for batch once its elements arrive, after
        # the client's buffer of the first worker's ones: hence the wait and the 40 batches.)
        tracks = read_manifest(os.path.join(prepared_dir, "manifest.csv"))
        tables = LabelTables.from_tracks(tracks, cfg)
        ds = service.distribute(training_dataset(tracks, tables, range(12), cfg, runtime_seeds=True), address,
                                job_name="distinct-batches")
        it = iter(ds)
        anchors = [next(it)["anchor"].numpy() for _ in range(4)]
        deadline = time.time() + process_timeout(30)
        while time.time() < deadline and not all("1 task(s)" in p.read_text() for p in logs):
            time.sleep(0.2)
        time.sleep(3)
        anchors += [next(it)["anchor"].numpy() for _ in range(36)]
        for i in range(len(anchors)):
            for j in range(i):
                assert not np.array_equal(anchors[i], anchors[j]), (i, j)
        del it, ds

        run = str(tmp_path / "run")
        summary = train(prepared_dir, run, cfg, verbose=0, data_service=address)
        assert summary["decode"] is None  # counted on the workers, not here
        with open(os.path.join(run, "history.csv")) as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"])) and float(rows[0]["loss"]) > 0
        assert np.isfinite(float(rows[0]["val_loss"]))
        assert os.path.isfile(os.path.join(run, "embedding.keras"))

        # both workers ran a task of the training job too (each logs its task count when it changes)
        deadline = time.time() + process_timeout(10)
        while time.time() < deadline and not all("2 task(s)" in p.read_text() for p in logs):
            time.sleep(0.5)
        for p in logs:
            assert "2 task(s)" in p.read_text(), p.read_text()[-2000:]

        # SIGTERM stops a worker cleanly
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, p in zip(procs, logs):
            assert proc.wait(timeout=process_timeout(30)) == 0, p.read_text()[-2000:]
            assert "worker stopped" in p.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        dispatcher.stop()


def test_addresses_and_cli_errors(capsys):
    assert service.service_address("127.0.0.1:5050") == "grpc://127.0.0.1:5050"
    assert service.service_address("grpc://localhost:80") == "grpc://localhost:80"
    for bad in ("127.0.0.1", "http://127.0.0.1:5050", "127.0.0.1:99999", "grpc://:5050"):
        with pytest.raises(ConfigError, match="grpc://HOST:PORT"):
            service.service_address(bad)
    from disentangled_ml.cli import main

    with pytest.raises(SystemExit) as e:
        main(["data-service", "worker", "--dispatcher", "not-an-address", "--port", "0"])
    assert e.value.code == 2
    assert "--dispatcher 'not-an-address'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "somewhere", "--out", "run", "--data-service", "127.0.0.1"])
    assert "--data-service '127.0.0.1'" in capsys.readouterr().err
    cfg = tiny_config()
    assert service.service_config(cfg.replace(**{"data.cache": "/tmp/x"})).data.cache == "none"
    for cache in ("auto", "memory", "none"):  # only a directory cache changes under the service
        assert service.service_config(cfg.replace(**{"data.cache": cache})).data.cache == cache
    assert service.job_name_for("/a/run1", cfg) != service.job_name_for("/b/run1", cfg)
