"""Multi-worker training: the custom tf.distribute loop under MirroredStrategy (two logical CPUs in one
process) and MultiWorkerMirroredStrategy (two worker processes on 127.0.0.1), resuming, TF_CONFIG parsing."""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from disentangled_ml.config import ConfigError
from disentangled_ml.training.distributed import multi_worker_cluster
from collections_for_tests import make_prepared, process_timeout

# "plain" keeps graph tracing cheap: the loop, not the backbone, is under test.
OVERRIDES = {"model.width": 4, "model.backbone": "plain", "train.steps_per_epoch": 3, "train.epochs": 2,
             "data.eval_triplets_per_condition": 8, "data.split_fractions": [0.6, 0.2, 0.2]}
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    # with audio shards, so the workers read the TFRecord source
    prepared_dir, cfg, cfg_path = make_prepared(tmp_path_factory.mktemp("distributed"), OVERRIDES, cache_audio=True,
                                                shards=2)
    return prepared_dir, cfg_path, cfg


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=TESTS_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _start_workers(cmds, cluster, tmp_path, tag="worker"):
    """One process per worker of ``cluster`` (``cmds[i]`` with its TF_CONFIG), output in tmp_path/{tag}{i}.log."""
    procs, logs = [], []
    for i, cmd in enumerate(cmds):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        log = open(tmp_path / f"{tag}{i}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(cmd, env=_env(TF_CONFIG=tf_config), stdout=log, stderr=subprocess.STDOUT,
                                      text=True))
    return procs, logs


def _stop_workers(procs, logs):
    """Kill what still runs; the workers' outputs."""
    outputs = []
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    return outputs


def _run_workers(cmds, cluster, tmp_path, tag="worker", worst_seconds=240):
    """Run a cluster to its end; assert every worker exited 0 in time. Returns their outputs."""
    procs, logs = _start_workers(cmds, cluster, tmp_path, tag)
    try:
        deadline = time.time() + process_timeout(worst_seconds)
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.5)
        finished = [p.poll() for p in procs]
    finally:
        outputs = _stop_workers(procs, logs)
    for code, text in zip(finished, outputs):
        assert code is not None, "a worker did not finish in time:\n" + text[-3000:]
        assert code == 0, text[-4000:]
    return outputs


# Saves the weights at train begin and end (after early stopping restored its best ones).
WEIGHT_SAVER = textwrap.dedent("""
    import keras, numpy as np

    class SaveWeights(keras.callbacks.Callback):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def on_train_begin(self, logs=None):
            self.initial = [np.array(w) for w in self.model.get_weights()]

        def on_train_end(self, logs=None):
            np.savez(self.path, *self.model.get_weights())
            np.savez(self.path.replace(".npz", "_initial.npz"), *self.initial)
""")


@pytest.mark.slow
def test_mirrored_two_replicas_trains_and_resumes(prepared, tmp_path):
    prepared_dir, cfg_path, cfg = prepared
    run = str(tmp_path / "run")
    script = WEIGHT_SAVER + textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from disentangled_ml.config import Config
        from disentangled_ml.training.distributed import train_distributed
        cfg = Config.from_json({cfg_path!r})
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

        class StopAfterOneEpoch(keras.callbacks.Callback):  # an interrupted run, as far as the loop can tell
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True

        # the first call stops after epoch 1 of 2; the second resumes from its checkpoint
        first = train_distributed({prepared_dir!r}, {run!r}, cfg, verbose=0, strategy=strategy,
                                  callbacks=[StopAfterOneEpoch(), SaveWeights({str(tmp_path / "first.npz")!r})])
        second = train_distributed({prepared_dir!r}, {run!r}, cfg, verbose=0, strategy=strategy,
                                   callbacks=[SaveWeights({str(tmp_path / "second.npz")!r})])
        print("SUMMARY", json.dumps([first, second]))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=process_timeout(240))
    assert out.returncode == 0, out.stderr[-4000:]
    first, second = json.loads(out.stdout.split("SUMMARY", 1)[1])
    assert first["replicas"] == 2 and first["epochs_this_call"] == 1
    assert second["epochs_this_call"] == 1 and second["epochs_total"] == 2  # resumed, did not redo epoch 1
    with open(os.path.join(run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        for key in ("loss", "val_loss", "mean_acc", "val_mean_acc", "learning_rate", "acc_track"):
            assert np.isfinite(float(r[key])), (key, r[key])
    assert float(rows[0]["loss"]) > 0
    for name in ("best.keras", "embedding.keras", "masks.npy", "run.json", "checkpoints/last.keras"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(run, "tensorboard", "validation")))
    # the second call started from the first one's end state, and trained on
    w1 = np.load(tmp_path / "first.npz")
    init2 = np.load(tmp_path / "second_initial.npz")
    w2 = np.load(tmp_path / "second.npz")
    init1 = np.load(tmp_path / "first_initial.npz")
    assert any(not np.array_equal(w1[k], init1[k]) for k in w1.files)
    assert any(not np.array_equal(w2[k], init2[k]) for k in w2.files)
    for k in w1.files:  # restored from the checkpoint of epoch 1
        np.testing.assert_array_equal(init2[k], w1[k])


@pytest.mark.slow
def test_two_worker_processes_on_loopback_train_the_same_weights(prepared, tmp_path):
    prepared_dir, cfg_path, cfg = prepared
    run = str(tmp_path / "run")
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    script = WEIGHT_SAVER + textwrap.dedent(f"""
        import json, os, sys
        from disentangled_ml.config import Config
        from disentangled_ml.training.distributed import train_distributed
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        path = os.path.join({str(tmp_path)!r}, f"worker{{index}}.npz")
        summary = train_distributed({prepared_dir!r}, {run!r}, Config.from_json({cfg_path!r}), verbose=0,
                                    callbacks=[SaveWeights(path)])
        print("SUMMARY", json.dumps(summary))
    """)
    outputs = _run_workers([[sys.executable, "-c", script]] * 2, cluster, tmp_path)

    chief = json.loads(outputs[0].split("SUMMARY", 1)[1].splitlines()[0])
    other = json.loads(outputs[1].split("SUMMARY", 1)[1].splitlines()[0])
    assert chief["workers"] == 2 and chief["replicas"] == 2 and chief["epochs_this_call"] == 2
    assert chief["chief"] and not other["chief"] and "config_hash" not in other  # only the chief writes the run
    assert os.path.isfile(os.path.join(run, "run.json")) and os.path.isfile(os.path.join(run, "best.keras"))
    w0, w1 = np.load(tmp_path / "worker0.npz"), np.load(tmp_path / "worker1.npz")
    init = np.load(tmp_path / "worker0_initial.npz")
    assert w0.files == w1.files
    for k in w0.files:  # every weight, batch-norm moving statistics included
        np.testing.assert_allclose(w0[k], w1[k], rtol=0, atol=1e-6)
    assert any(not np.allclose(w0[k], init[k]) for k in w0.files)
    with open(os.path.join(run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.slow
def test_two_worker_cluster_resumes_after_kill(prepared, tmp_path):
    """The single-machine kill-and-resume test (test_training.py), on a two-worker cluster driven by
    `dml train` itself: SIGKILL both workers in the second epoch, start the cluster again with the
    same command, and it finishes without redoing the epochs done before the kill."""
    prepared_dir, _, cfg = prepared
    run = str(tmp_path / "run")
    cfg_path = str(tmp_path / "cfg.json")
    cfg.replace(**{"train.epochs": 4, "train.steps_per_epoch": 30}).to_json(cfg_path)
    cmd = [sys.executable, "-m", "disentangled_ml", "train", prepared_dir, "--out", run, "--config", cfg_path,
           "--quiet"]
    history = os.path.join(run, "history.csv")
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs, logs = _start_workers([cmd] * 2, cluster, tmp_path, tag="killed")
    try:
        deadline = time.time() + process_timeout(240)
        # kill once the first epoch is done and saved (its history row and the loop's resume
        # checkpoint, written last), i.e. early in the second
        saved = os.path.join(run, "checkpoints", "distributed", "checkpoint")
        while time.time() < deadline and all(p.poll() is None for p in procs):
            if os.path.isfile(saved) and os.path.isfile(history) and len(open(history).read().splitlines()) >= 2:
                break
            time.sleep(0.2)
        running = all(p.poll() is None for p in procs)
    finally:
        outputs = _stop_workers(procs, logs)
    assert running, "the cluster finished or died before it could be interrupted:\n" + outputs[0][-3000:]
    assert not os.path.isfile(os.path.join(run, "run.json"))  # it did not finish

    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}  # a restarted cluster gets new ports
    _run_workers([cmd] * 2, cluster, tmp_path, tag="resumed", worst_seconds=600)
    with open(history) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    # epochs completed before the kill are not rerun; the run finishes all 4
    assert epochs[-1] == 3 and sorted(set(epochs)) == [0, 1, 2, 3]
    assert len(epochs) <= 5  # at most the interrupted epoch's row repeats
    summary = json.load(open(os.path.join(run, "run.json")))
    assert summary["epochs_total"] == 4 and summary["workers"] == 2
    assert summary["epochs_this_call"] <= 3  # resumed: epoch 0 (at least) was not trained again
    for name in ("best.keras", "embedding.keras", "checkpoints/last.keras"):
        assert os.path.isfile(os.path.join(run, name)), name


def test_tf_config_parsing():
    one = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})
    assert multi_worker_cluster(one) is None  # a single worker trains with fit
    assert multi_worker_cluster("") is None
    two = {"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    assert multi_worker_cluster(json.dumps(two))["task"]["type"] == "worker"
    with pytest.raises(ConfigError, match="not valid JSON"):
        multi_worker_cluster("{cluster")
    with pytest.raises(ConfigError, match="task"):
        multi_worker_cluster(json.dumps({**two, "task": {"type": "worker", "index": 5}}))
    with pytest.raises(ConfigError, match="parameter servers"):
        multi_worker_cluster(json.dumps({"cluster": {"worker": ["a:1", "b:2"], "ps": ["c:3"]},
                                         "task": {"type": "worker", "index": 0}}))
