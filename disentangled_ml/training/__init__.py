"""`dml train`: fit the masked triplet model on a prepared collection.

A run directory (``--out``) holds everything needed to resume, evaluate and export:
config.json, splits.csv, the fixed validation/test triplets, checkpoints, best.keras,
history.csv, tensorboard/, and when the run ends masks.npy, embedding.keras,
training_curves.png and run.json. Its layout, file by file, is
:class:`disentangled_ml.run_directory.RunDirectory`, which every stage reads it through.

The schedule is ``train.lr_schedule``: by default Adam on a warm-up + cosine decay over
``train.epochs * train.steps_per_epoch`` steps; ``"plateau"`` is the paper's (Adam at
``train.learning_rate``, multiplied by ``train.lr_factor`` when the validation loss
stalls). Both stop early on the validation mean triplet accuracy (``val_mean_acc``).

One run, two loops. Both paths share every step but the loop itself:

* :mod:`.run_setup`: config, splits, mel statistics, fixed triplets, datasets (:func:`prepare_run`);
* :mod:`.callbacks`: the callbacks, kill-safe checkpoints included (:func:`run_callbacks`);
* :mod:`.history`: the run's history.csv and its plot;
* :mod:`.finish`: model files, validation projector, curves and run.json (:func:`finish_run`);
* :mod:`.replicas`: what replicas must agree on (batch-norm statistics, configs, decisions);
* the loops: :mod:`.single_machine` (``model.fit``) and :mod:`.distributed` (a custom loop,
  because Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

from typing import Dict, Optional

from disentangled_ml.config import Config
from disentangled_ml.training.callbacks import run_callbacks, schedule_callbacks
from disentangled_ml.training.distributed import multi_worker_cluster, train_distributed
from disentangled_ml.training.finish import finish_run, save_run_model, write_validation_projector
from disentangled_ml.training.history import (MONITOR, best_score, completed_epochs, elapsed_seconds, plot_history,
                                              read_history)
from disentangled_ml.training.run_setup import (RunData, estimate_norm_stats, eval_dataset, load_prepared, prepare_run,
                                                resolve_config)
from disentangled_ml.training.single_machine import train_single_machine

__all__ = ["train", "train_single_machine", "train_distributed", "prepare_run", "RunData", "load_prepared",
           "estimate_norm_stats", "eval_dataset", "resolve_config", "run_callbacks", "schedule_callbacks",
           "finish_run", "save_run_model", "write_validation_projector", "MONITOR", "read_history",
           "best_score", "completed_epochs", "elapsed_seconds", "plot_history", "multi_worker_cluster"]


def train(prepared_dir: str, run_dir: str, config: Optional[Config] = None, verbose: int = 1,
          data_service: Optional[str] = None, audio_dir: Optional[str] = None) -> Dict[str, object]:
    """Train (or resume) a run. Returns the summary written to ``RUN_DIR/run.json``.

    Args:
        prepared_dir: a collection written by ``dml prepare``.
        run_dir: the run directory (created; an existing run resumes).
        config: the run's config; None: an existing run's saved one, else the prepared one.
        verbose: 1 shows Keras progress bars and the schedule's messages.
        data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher that runs the
            training pipeline (:mod:`disentangled_ml.data.service`).
        audio_dir: TFRecord audio shards (default ``PREPARED_DIR/audio`` when present).

    With ``TF_CONFIG`` naming more than one worker the run goes to
    :func:`~disentangled_ml.training.distributed.train_distributed`
    (MultiWorkerMirroredStrategy), else to ``model.fit``
    (:func:`~disentangled_ml.training.single_machine.train_single_machine`).
    """
    if multi_worker_cluster() is not None:
        return train_distributed(prepared_dir, run_dir, config, verbose=verbose, data_service=data_service,
                                 audio_dir=audio_dir)
    return train_single_machine(prepared_dir, run_dir, config, verbose=verbose, data_service=data_service,
                                audio_dir=audio_dir)
