"""``dml train`` on one machine: ``model.fit`` on the CPU, one GPU or several (MirroredStrategy).

Kill-safe: ``checkpoints/last.keras``, ``best.keras`` and the BackupAndRestore state in
``backup/`` are replaced whole after every epoch, so a killed run resumes at its last
complete epoch when the same command is run again.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import keras
import tensorflow as tf

from disentangled_ml.config import Config
from disentangled_ml.data.pipeline import DecodeStats
from disentangled_ml.run_directory import RunDirectory
from disentangled_ml.training.callbacks import run_callbacks
from disentangled_ml.training.finish import finish_run
from disentangled_ml.training.history import best_score, completed_epochs, elapsed_seconds
from disentangled_ml.training.run_setup import prepare_run

log = logging.getLogger(__name__)


def train_single_machine(prepared_dir: str, run_dir: str, config: Optional[Config] = None, verbose: int = 1,
                         data_service: Optional[str] = None, audio_dir: Optional[str] = None) -> Dict[str, object]:
    """Train (or resume) a run with ``model.fit``. Returns the summary written to ``run.json``.

    Args: as :func:`disentangled_ml.training.train`.
    """
    from disentangled_ml.models.trainer import build_triplet_model

    data = prepare_run(prepared_dir, run_dir, config, audio_dir=audio_dir)
    config = data.config
    # Under the tf.data service the pipeline (and its counters) runs on the workers.
    decode_stats = None if data_service else DecodeStats()
    strategy = tf.distribute.MirroredStrategy() if len(tf.config.list_logical_devices("GPU")) > 1 \
        else tf.distribute.get_strategy()
    batch = config.train.batch_size * strategy.num_replicas_in_sync
    job_name = None
    if data_service:
        from disentangled_ml.data.service import job_name_for

        job_name = job_name_for(run_dir, config)
    train_ds, val_ds, val_steps = data.datasets(batch, decode_stats, data_service=data_service, job_name=job_name)

    # A run that finished (or stopped early) has no BackupAndRestore state left; rerunning it
    # continues from its last checkpoint when train.epochs was raised, and trains nothing otherwise.
    run = RunDirectory(run_dir)
    done = completed_epochs(run_dir)
    finished = done > 0 and not os.path.isdir(run.backup_dir) and os.path.isfile(run.last_checkpoint_path)
    with strategy.scope():
        model = keras.saving.load_model(run.last_checkpoint_path) if finished \
            else build_triplet_model(config)
    initial_epoch = done if finished else 0
    if finished and done >= config.train.epochs:
        log.info("%s already trained %d of %d epochs; raise --epochs to continue it.", run_dir, done,
                 config.train.epochs)

    callbacks = run_callbacks(run_dir, config, best=best_score(run_dir), elapsed_s=elapsed_seconds(run_dir),
                              decode_stats=decode_stats, strategy=strategy, backup=True, verbose=verbose)
    history = model.fit(train_ds, epochs=config.train.epochs, steps_per_epoch=config.train.steps_per_epoch,
                        validation_data=val_ds, validation_steps=val_steps, initial_epoch=initial_epoch,
                        callbacks=callbacks, verbose=verbose) if initial_epoch < config.train.epochs else None
    epochs_this_call = len(history.history.get("loss", [])) if history is not None else 0
    return finish_run(prepared_dir, run_dir, data, model, epochs_this_call, decode_stats)
