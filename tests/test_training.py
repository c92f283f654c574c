"""`dml train` end to end on a tiny collection: run files, TensorBoard projector, resume after a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from disentangled_ml.training import train
from collections_for_tests import make_prepared, process_timeout

TRAIN_OVERRIDES = {"model.width": 4, "train.steps_per_epoch": 3, "train.epochs": 2,
                   "data.eval_triplets_per_condition": 8, "data.split_fractions": [0.6, 0.2, 0.2]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    prepared_dir, cfg, _ = make_prepared(tmp_path_factory.mktemp("train"), TRAIN_OVERRIDES)
    return prepared_dir, cfg


@pytest.mark.slow  # trains or evaluates a model end to end (pytest.ini)
def test_train_writes_run_and_projector(prepared, tmp_path):
    prepared_dir, cfg = prepared
    run = str(tmp_path / "run")
    summary = train(prepared_dir, run, cfg, verbose=0)
    for name in ("config.json", "splits.csv", "validation_triplets.csv", "test_triplets.csv", "best.keras",
                 "embedding.keras", "history.csv", "training_curves.png", "run.json", "checkpoints/last.keras"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert summary["epochs_total"] == 2 and 0 <= summary["best_val_mean_acc"] <= 1
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["frontend"]["norm_std"] != 1.0  # statistics measured on the training split
    with open(os.path.join(run, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in ("loss", "val_loss", "val_mean_acc", "learning_rate", "acc_genre", "val_acc_track", "elapsed_s"):
        assert key in rows[0], key
    # wall time of training, epoch by epoch: what time to accuracy is read from
    assert float(rows[1]["elapsed_s"]) > float(rows[0]["elapsed_s"]) > 0
    assert summary["train_seconds"] == pytest.approx(float(rows[1]["elapsed_s"]))

    # TensorBoard scalars and the projector: one tensor for the whole embedding and one per condition.
    tb = os.path.join(run, "tensorboard")
    assert any(f.startswith("events") for f in os.listdir(os.path.join(tb, "validation")))
    proj = os.path.join(tb, "projector")
    # an event file makes it a run of `tensorboard --logdir RUN/tensorboard` (tests/test_projector_tensorboard.py)
    assert any(f.startswith("events") for f in os.listdir(proj))
    pbtxt = open(os.path.join(proj, "projector_config.pbtxt")).read()
    for name in ("whole",) + tuple(cfg.conditions.names):
        assert f'tensor_name: "{name}/.ATTRIBUTES/VARIABLE_VALUE"' in pbtxt, name
    assert pbtxt.count("metadata_path") == 1 + len(cfg.conditions.names)
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(proj))
    whole = reader.get_tensor("whole/.ATTRIBUTES/VARIABLE_VALUE")
    genre = reader.get_tensor("genre/.ATTRIBUTES/VARIABLE_VALUE")
    assert whole.shape[1] == cfg.conditions.embedding_dim and genre.shape[1] == cfg.conditions.slice_dim
    np.testing.assert_allclose(whole[:, :cfg.conditions.slice_dim], genre)
    with open(os.path.join(proj, "metadata.tsv")) as f:
        lines = f.read().splitlines()
    header = lines[0].split("\t")
    assert {"track_id", "genre", "mood", "instrument", "tempo"} <= set(header)
    assert len(lines) - 1 == whole.shape[0]  # one metadata row per embedding

    # The saved waveform model reloads without custom_objects in a fresh process (importing
    # disentangled_ml.models registers every custom class).
    code = ("import keras, numpy as np, disentangled_ml.models; m = keras.saving.load_model(%r); "
            "print(m(np.zeros((1, %d), 'float32'))['embedding'].shape)" % (os.path.join(run, "embedding.keras"),
                                                                          cfg.frontend.segment_samples))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=process_timeout(120))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"(1, {cfg.conditions.embedding_dim})" in out.stdout


@pytest.mark.slow
def test_training_resumes_after_kill(prepared, tmp_path):
    prepared_dir, cfg = prepared
    run = str(tmp_path / "run")
    cfg_path = str(tmp_path / "cfg.json")
    cfg.replace(**{"train.epochs": 4, "train.steps_per_epoch": 30}).to_json(cfg_path)
    cmd = [sys.executable, "-m", "disentangled_ml", "train", prepared_dir, "--out", run, "--config", cfg_path,
           "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    history = os.path.join(run, "history.csv")
    deadline = time.time() + 240
    # kill once the first epoch is done, i.e. in the middle of the second
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(history) and len(open(history).read().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training finished or died before it could be interrupted: " + proc.stderr.read().decode()[-2000:]
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.isfile(os.path.join(run, "run.json"))  # it did not finish
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=process_timeout(600))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(history) as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    # epochs completed before the kill are not rerun; the run finishes all 4
    assert epochs[-1] == 3 and sorted(set(epochs)) == [0, 1, 2, 3]
    assert len(epochs) <= 5  # at most the interrupted epoch's row repeats
    assert json.load(open(os.path.join(run, "run.json")))["epochs_total"] >= 4


def test_backup_killed_mid_write_keeps_the_previous_epoch(tmp_path):
    """A kill while the backup's weights are being written must leave the last complete state. Keras's
    own callback writes in place: killed in its first save (no older copy for double_checkpoint to fall
    back on) it leaves a truncated file, and the resumed run dies on it."""
    import keras
    import numpy as np

    from disentangled_ml.training.callbacks import AtomicBackupAndRestore as _AtomicBackupAndRestore

    def model():
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile("sgd", "mse")
        return m

    def killed(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n truncated")  # what a kill mid-write leaves
        raise KeyboardInterrupt("killed")

    def resume(backup_dir):
        m = model()
        restore = _AtomicBackupAndRestore(backup_dir)
        restore.set_model(m)
        restore.on_train_begin()  # raised OSError for Keras's callback after a kill in its first save
        return m, getattr(m, "_initial_epoch", None)

    backup_dir = str(tmp_path / "backup")
    first = model()
    backup = _AtomicBackupAndRestore(backup_dir)
    backup.set_model(first)
    real_save = first.save_weights
    first.save_weights = killed
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(0)  # killed in the very first save: nothing to restore, nothing broken
    assert resume(backup_dir)[1] is None

    first.save_weights = real_save
    backup.on_epoch_end(0)  # state after epoch 0 -> resume at epoch 1
    saved = [w.copy() for w in first.get_weights()]
    first.set_weights([w + 1.0 for w in saved])
    first.save_weights = killed
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(1)
    resumed, epoch = resume(backup_dir)
    assert epoch == 1
    for got, want in zip(resumed.get_weights(), saved):
        np.testing.assert_array_equal(got, want)
