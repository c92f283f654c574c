"""The callbacks of a training run, in one list that both training paths use.

:func:`run_callbacks` builds it for ``model.fit`` on one machine
(:mod:`~disentangled_ml.training.single_machine`) and for the multi-worker loop
(:mod:`~disentangled_ml.training.distributed`), which calls the same epoch and train
hooks. Loggers that add to the epoch logs come first, then the writers (CSV,
TensorBoard), the kill-safe checkpoints, the schedule, and the backup last: a kill
between two of them then repeats at most one epoch's history row instead of losing it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import List, Optional

import keras
import numpy as np
import tensorflow as tf

from disentangled_ml.config import Config
from disentangled_ml.data.pipeline import DecodeStats
from disentangled_ml.run_directory import RunDirectory
from disentangled_ml.training.history import MONITOR
from disentangled_ml.training.replicas import AverageMovingStatistics

log = logging.getLogger(__name__)


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the optimizer's learning rate into the epoch logs (TensorBoard, CSV)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ElapsedTimeLogger(keras.callbacks.Callback):
    """Puts ``elapsed_s`` into the epoch logs: wall seconds of training so far, validation included.

    It is what "time to accuracy" is read from (``benchmarks/backbones.py``). A resumed run
    continues from the last logged value, so the figure counts the time spent training, not
    the time a killed run lay idle.
    """

    def __init__(self, start_s: float = 0.0):
        super().__init__()
        self.start_s = float(start_s)
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._t0 = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._t0 is not None:
            logs["elapsed_s"] = self.start_s + time.monotonic() - self._t0


class DecodeStatsLogger(keras.callbacks.Callback):
    def __init__(self, stats: DecodeStats):
        super().__init__()
        self.stats = stats

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["skipped_files"] = float(self.stats.skipped)
        if self.stats.skipped:
            log.warning("%d file(s) failed to decode at train time and were skipped.", self.stats.skipped)


class AtomicCheckpoints(keras.callbacks.Callback):
    """Saves ``last.keras`` every epoch and ``best.keras`` on a new best ``val_mean_acc``.

    Unlike ``keras.callbacks.ModelCheckpoint``, which writes the file in place, each file is
    written beside its target and renamed over it, so a run killed mid-save keeps the previous
    complete checkpoint instead of a truncated zip.
    """

    def __init__(self, last_path: str, best_path: str, best: Optional[float] = None):
        super().__init__()
        self.last_path, self.best_path = last_path, best_path
        self.best = -np.inf if best is None else best

    def _save(self, path: str) -> None:
        tmp = path[: -len(".keras")] + ".tmp.keras"
        self.model.save(tmp, overwrite=True)
        os.replace(tmp, path)

    def on_epoch_end(self, epoch, logs=None):
        self._save(self.last_path)
        score = (logs or {}).get(MONITOR)
        if score is not None and score > self.best:
            self.best = float(score)
            self._save(self.best_path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` whose two files are replaced whole.

    Keras writes ``latest.weights.h5`` in place. A kill during that write leaves a truncated
    file, and when there is no earlier copy to fall back on (``double_checkpoint`` only has
    one from the second save on) the resumed run dies on it ("bad object header version
    number"). Here each file is written beside its target and renamed over it, so the backup
    always holds a whole epoch's state. A kill between the two renames leaves the new weights
    with the previous epoch number: that epoch runs again, as with Keras's own order.
    """

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        partial = self._weights_path[: -len(".weights.h5")] + ".partial.weights.h5"
        self.model.save_weights(partial, overwrite=True)
        with tf.io.gfile.GFile(self._training_metadata_path + ".partial", "w") as f:
            f.write(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
        tf.io.gfile.rename(partial, self._weights_path, overwrite=True)
        tf.io.gfile.rename(self._training_metadata_path + ".partial", self._training_metadata_path, overwrite=True)



def schedule_callbacks(config: Config, verbose: int = 1) -> List[keras.callbacks.Callback]:
    """The learning-rate logger, the schedule's callbacks and early stopping on val_mean_acc.

    ``train.lr_schedule="plateau"`` (the paper's) divides the learning rate when the validation
    loss stalls; ``"cosine"`` is a schedule inside the optimizer
    (:func:`disentangled_ml.models.trainer.learning_rate`) and needs no callback.
    """
    plateau = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.train.lr_factor,
                                                 patience=config.train.lr_patience, verbose=verbose)] \
        if config.train.lr_schedule == "plateau" else []
    return [LearningRateLogger()] + plateau + [
        keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config.train.early_stopping_patience,
                                      restore_best_weights=True, verbose=verbose),
    ]



def run_callbacks(out_dir: str, config: Config, *, best: Optional[float] = None, elapsed_s: float = 0.0,
                  decode_stats: Optional[DecodeStats] = None, strategy: Optional[tf.distribute.Strategy] = None,
                  backup: bool = False, write_graph: bool = True, verbose: int = 1) -> List[keras.callbacks.Callback]:
    """Every callback of a training run writing into ``out_dir``, in the order they must run.

    Args:
        out_dir: the run directory (a non-chief worker passes its private scratch folder).
            Gets ``history.csv``, ``tensorboard/``, ``checkpoints/last.keras``, ``best.keras``
            and, with ``backup``, ``backup/``.
        config: the run's config (schedule, early stopping).
        best: the best ``val_mean_acc`` so far (a resumed run's, from its history), so
            ``best.keras`` is only replaced by a better epoch. Every worker of a cluster must
            pass the same value: saving is a collective they all join.
        elapsed_s: training seconds logged so far (a resumed run continues the count).
        decode_stats: counters of the local input pipeline, logged as ``skipped_files``
            (None under the tf.data service, whose pipeline runs elsewhere).
        strategy: ``model.fit``'s strategy: with several replicas their batch-norm
            statistics are averaged first, before anything reads or saves them. The
            multi-worker loop averages them itself and passes None.
        backup: add Keras's BackupAndRestore (kill-safe) state in ``out_dir/backup`` (``model.fit``
            only: the multi-worker loop resumes from its own ``tf.train`` checkpoints).
        write_graph: let TensorBoard write the graph (the multi-worker loop has none to write).
        verbose: the schedule's messages.
    """
    lr_logger, *schedule = schedule_callbacks(config, verbose)
    run = RunDirectory(out_dir)  # a worker's scratch folder has the run directory's layout
    os.makedirs(run.checkpoints_dir, exist_ok=True)
    callbacks: List[keras.callbacks.Callback] = []
    if strategy is not None:
        callbacks.append(AverageMovingStatistics(strategy))
    callbacks += [lr_logger, ElapsedTimeLogger(elapsed_s)]
    if decode_stats is not None:
        callbacks.append(DecodeStatsLogger(decode_stats))
    callbacks += [
        keras.callbacks.CSVLogger(run.history_path, append=True),
        keras.callbacks.TensorBoard(run.tensorboard_dir, update_freq="epoch", write_graph=write_graph),
        AtomicCheckpoints(run.last_checkpoint_path, run.best_model_path, best=best),
    ] + schedule
    if backup:
        callbacks.append(AtomicBackupAndRestore(run.backup_dir))
    return callbacks
