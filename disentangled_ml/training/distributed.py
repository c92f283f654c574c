"""Data-parallel training over several machines: ``tf.distribute`` in a custom training loop.

``dml train`` runs here when the ``TF_CONFIG`` environment variable describes a
cluster of more than one worker (one process per machine, each started with its
own ``TF_CONFIG``; see docs/cluster.md). The strategy is
:class:`tf.distribute.MultiWorkerMirroredStrategy`: every replica holds the whole
model, gradients are all-reduced at every step.

Why not ``model.fit``: with Keras 3, ``fit`` under MultiWorkerMirroredStrategy
fails as soon as there is more than one worker (keras-team/keras#20585, open; the
TensorFlow multi-worker tutorial fails since TF 2.16). This loop drives the same
:class:`~disentangled_ml.models.trainer.TripletModel`: each replica runs the
model's own ``train_step`` (forward pass, masked triplet loss, gradients, Adam),
so there is one definition of model, loss and optimiser for both paths.

How the pieces map:

* Input: :meth:`tf.distribute.Strategy.distribute_datasets_from_function`. Each
  worker builds the whole pipeline (:func:`~disentangled_ml.data.pipeline.training_dataset`)
  over the whole training split, with seed ``data.seed + PIPELINE_SEED_STRIDE *
  input_pipeline_id`` so the workers mine different triplets, and batches of
  ``train.batch_size`` per replica (global batch ``batch_size x replicas``, as
  ``train`` does on several GPUs). With ``--data-service`` the trainers read one
  shared tf.data service job instead.
* Loss scaling: ``TripletModel.train_step`` divides each replica's loss by
  ``num_replicas_in_sync`` before the gradients are summed across replicas. The
  loss is already a mean (per condition group, then weighted), not a sum over
  examples, so this is what ``tf.nn.compute_average_loss`` computes for
  per-example losses: the mean over the global batch when the replicas' batches
  are equal (they are: ``drop_remainder``).
* Batch-norm moving statistics: Keras 3 creates them as mirrored variables with
  no aggregation, so each replica updates its own copy and the copies drift
  apart. They are averaged across replicas at the end of every epoch (and before
  every save). The moving averages are linear in the batch statistics, so
  averaging the copies once per epoch gives the same result as averaging every
  step.
* Metrics: the model's metrics are synchronised on read; reading them outside
  ``strategy.run`` sums their totals and counts over all replicas.
* Validation: the fixed validation triplets are split between workers; each step
  takes one batch per replica, for ``ceil(triplets / global batch)`` steps, so a
  few triplets count twice when the split does not divide evenly.
* Schedule and logs: the callbacks of ``model.fit``'s path
  (:func:`disentangled_ml.training.callbacks.run_callbacks`: plateau learning rate,
  early stopping, the kill-safe ``last.keras``/``best.keras``, CSV and TensorBoard
  scalars), called at train and epoch begin and end by this loop. Every worker runs them
  (their decisions rest on identical, all-reduced numbers); the chief writes to
  the run directory, the others to a temporary directory that is deleted, the
  usual pattern for multi-worker saving (saving reads synchronised variables,
  which is a collective every worker must join).
* Resuming: a :class:`tf.train.CheckpointManager` in ``RUN_DIR/checkpoints/distributed``
  saves model, optimiser and epoch after every epoch; a restarted cluster resumes
  from the last one. The run directory must be on storage every worker can read
  (NFS, a shared disk) for the other workers to restore it too; the workers check
  that they restored the same epoch.

The same loop runs under any strategy (a single device, or
:class:`tf.distribute.MirroredStrategy` over several devices of one machine):
pass it as ``strategy``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.data.manifest import Track
from disentangled_ml.data.pipeline import DecodeStats, resolve_cache
from disentangled_ml.run_directory import RunDirectory
from disentangled_ml.training.callbacks import run_callbacks
from disentangled_ml.training.finish import finish_run
from disentangled_ml.training.history import best_score, elapsed_seconds
from disentangled_ml.training.replicas import agree, from_first_replica, make_average, moving_statistics, sync_config
from disentangled_ml.training.run_setup import eval_dataset, prepare_run

log = logging.getLogger(__name__)

__all__ = ["PIPELINE_SEED_STRIDE", "multi_worker_cluster", "make_strategy", "is_chief", "make_train_step",
           "train_distributed", "fit_distributed"]

#: Seed offset between the input pipelines of different workers (``data.seed`` + stride * pipeline id).
#: The pipeline uses seeds ``s``, ``s + 1``, ``s + 2``; a wide stride keeps workers' seeds apart.
PIPELINE_SEED_STRIDE = 1000


# --------------------------------------------------------------------------- cluster

def multi_worker_cluster(tf_config: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The parsed ``TF_CONFIG`` (default: the environment's) when it names more than one worker, else None.

    Workers are the ``chief`` and ``worker`` tasks. Raises :class:`ConfigError` for a
    malformed ``TF_CONFIG`` or one this trainer cannot serve (parameter servers).
    """
    raw = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not raw.strip():
        return None
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); see docs/cluster.md for an example.") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict):
        raise ConfigError('TF_CONFIG has no "cluster" object; expected {"cluster": {"worker": ["host:port", ...]}, '
                          '"task": {"type": "worker", "index": 0}}.')
    if cluster.get("ps"):
        raise ConfigError("TF_CONFIG names parameter servers (ps); this trainer uses MultiWorkerMirroredStrategy, "
                          "which needs chief/worker tasks only.")
    workers = list(cluster.get("chief", [])) + list(cluster.get("worker", []))
    if len(workers) <= 1:
        return None
    task = spec.get("task") or {}
    kind, index = task.get("type"), task.get("index")
    if kind not in ("chief", "worker") or not isinstance(index, int) or not 0 <= index < len(cluster.get(kind, [])):
        raise ConfigError(f"TF_CONFIG task {task!r} must be {{\"type\": \"chief\" or \"worker\", \"index\": i}} with i "
                          "indexing that list of the cluster.")
    return spec


def make_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy from ``TF_CONFIG``.

    Create it before any other TensorFlow op runs in the process (TensorFlow
    configures collective ops at start-up); the call blocks until every worker of
    the cluster has started.
    """
    return tf.distribute.MultiWorkerMirroredStrategy()


def _task(strategy: tf.distribute.Strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in the process that writes the run directory (the ``chief`` task, else worker 0)."""
    kind, index, cluster = _task(strategy)
    if kind is None:
        return True
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)


# --------------------------------------------------------------------------- steps

def make_train_step(strategy: tf.distribute.Strategy, model: keras.Model) -> Callable[[Any], tf.Tensor]:
    """A ``tf.function(batch) -> loss`` running ``model.train_step`` on every replica.

    ``batch`` is one element of a distributed iterator (per-replica values). Returns
    the mean over replicas of the running epoch loss, a scalar (fetch it to wait for
    the step to finish, e.g. to time it).
    """

    @tf.function
    def step(batch):
        out = strategy.run(model.train_step, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, out["loss"], axis=None)

    return step


def _make_test_step(strategy: tf.distribute.Strategy, model: keras.Model):
    @tf.function
    def step(batch):
        strategy.run(model.test_step, args=(batch,))

    return step


def _make_read_metrics(model: keras.Model):
    @tf.function
    def read():
        # outside strategy.run: each synchronised-on-read total and count is summed over replicas
        return {m.name: m.result() for m in model.metrics}

    return read


def _reset_metrics(model: keras.Model) -> None:
    for m in model.metrics:
        m.reset_state()


# --------------------------------------------------------------------------- the loop

def fit_distributed(strategy: tf.distribute.Strategy, model: keras.Model, train_dataset_fn, epochs: int,
                    steps_per_epoch: int, val_dataset_fn=None, val_steps: int = 0,
                    callbacks: Sequence[keras.callbacks.Callback] = (), checkpoint_dir: Optional[str] = None,
                    restore_dir: Optional[str] = None, verbose: int = 1) -> List[Dict[str, float]]:
    """Train ``model`` (built and compiled inside ``strategy.scope()``) for ``epochs`` epochs.

    Args:
        strategy: the tf.distribute strategy the model was built under.
        model: a compiled ``keras.Model`` whose ``train_step``/``test_step`` take one batch.
        train_dataset_fn: ``fn(tf.distribute.InputContext) -> tf.data.Dataset`` of
            per-replica batches, infinite.
        epochs, steps_per_epoch: as in ``fit``.
        val_dataset_fn: like ``train_dataset_fn`` for validation, repeated; read for
            ``val_steps`` steps after every epoch into ``val_*`` logs.
        callbacks: Keras callbacks, called at train begin/end and epoch begin/end
            with the epoch logs (no batch hooks).
        checkpoint_dir: where this process writes its ``tf.train`` checkpoints (model,
            optimiser, epoch) after every epoch; None: none.
        restore_dir: where to look for the checkpoint to resume from (the chief's
            ``checkpoint_dir``, default ``checkpoint_dir``).
        verbose: 1 logs one line per epoch.
    Returns:
        the epoch logs of this call, oldest first.
    """
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    restore_dir = restore_dir or checkpoint_dir
    if restore_dir:
        latest = tf.train.latest_checkpoint(restore_dir)
        if latest:
            checkpoint.restore(latest).expect_partial()
            log.info("resumed from %s (epoch %d done)", latest, int(epoch_var.numpy()))
    if not agree(strategy, float(epoch_var.numpy())):
        raise ConfigError("the workers restored different epochs: the run directory's checkpoints/distributed must "
                          "be readable by every worker (shared storage), or be absent on all of them.")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2) if checkpoint_dir else None

    train_step = make_train_step(strategy, model)
    test_step = _make_test_step(strategy, model)
    read_metrics = _make_read_metrics(model)
    average_statistics = make_average(strategy, moving_statistics(model))
    iterator = iter(strategy.distribute_datasets_from_function(train_dataset_fn))
    callback_list = keras.callbacks.CallbackList(list(callbacks), model=model)
    model.stop_training = False
    history: List[Dict[str, float]] = []
    callback_list.on_train_begin()
    for epoch in range(int(epoch_var.numpy()), epochs):
        started = time.perf_counter()
        callback_list.on_epoch_begin(epoch)
        _reset_metrics(model)
        for _ in range(steps_per_epoch):
            train_step(next(iterator))
        average_statistics()
        logs = {k: float(v) for k, v in read_metrics().items()}
        if val_dataset_fn is not None and val_steps > 0:
            _reset_metrics(model)
            val_iterator = iter(strategy.distribute_datasets_from_function(val_dataset_fn))
            for _ in range(val_steps):
                test_step(next(val_iterator))
            skip = getattr(model, "training_only_metrics", ())
            logs.update({f"val_{k}": float(v) for k, v in read_metrics().items() if k not in skip})
        callback_list.on_epoch_end(epoch, logs)
        epoch_var.assign(epoch + 1)
        if manager is not None:
            manager.save(checkpoint_number=epoch + 1)
        history.append(dict(logs))
        if verbose:
            shown = ", ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "mean_acc", "val_loss", "val_mean_acc") if k in logs)
            log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, epochs, shown, time.perf_counter() - started)
        if model.stop_training:
            break
    # (moving statistics were averaged at the end of the last epoch, before best/last were saved)
    callback_list.on_train_end(history[-1] if history else None)
    return history


def _pipeline_config(config: Config, pipeline_id: int, tracks: Sequence[Track], rows: Sequence[int]) -> Config:
    """The config an input pipeline runs: its own seed, and its own cache directory if any.

    ``data.cache`` is first resolved as the single-machine pipeline resolves it
    (:func:`~disentangled_ml.data.pipeline.resolve_cache` over ``rows`` of ``tracks``, the
    training split), so the default ``"auto"`` becomes ``"memory"`` or ``"none"``, never
    a directory called ``auto``. Only a directory that ``data.cache`` names gets a
    ``pipeline-<id>`` folder per pipeline.
    """
    cache = resolve_cache(tracks, rows, config)
    overrides: Dict[str, Any] = {"data.seed": config.data.seed + PIPELINE_SEED_STRIDE * pipeline_id,
                                 "data.cache": cache}
    if cache not in ("memory", "none"):
        # tf.data refuses two writers of one cache: each pipeline gets its own folder
        overrides["data.cache"] = cache.rstrip("/") + f"/pipeline-{pipeline_id}"
    return config.replace(**overrides)


def _or_minus_inf(value: Optional[float]) -> float:
    return float("-inf") if value is None else float(value)


def train_distributed(prepared_dir: str, run_dir: str, config: Optional[Config] = None, verbose: int = 1,
                      strategy: Optional[tf.distribute.Strategy] = None, data_service: Optional[str] = None,
                      audio_dir: Optional[str] = None,
                      callbacks: Sequence[keras.callbacks.Callback] = ()) -> Dict[str, object]:
    """Train (or resume) a run with :func:`fit_distributed`; ``dml train`` under a multi-worker ``TF_CONFIG``.

    Writes the run directory of :func:`disentangled_ml.training.train` (the chief
    does; ``backup/`` is replaced by ``checkpoints/distributed/``) and returns the same
    summary, with ``"replicas"``, ``"workers"`` and ``"chief"`` added; the other
    workers write nothing there and return only those and ``"tensorboard"``.

    Args:
        prepared_dir, run_dir, config: as for :func:`~disentangled_ml.training.train`;
            every worker must be given the same ones.
        verbose: 1 logs one line per epoch.
        strategy: default: MultiWorkerMirroredStrategy when ``TF_CONFIG`` names more
            than one worker, else the default (single-device) strategy.
        data_service: ``grpc://HOST:PORT``: the trainers read one tf.data service job.
        audio_dir: TFRecord audio shards (default ``PREPARED_DIR/audio`` when present).
        callbacks: extra Keras callbacks (epoch and train hooks only).
    """
    from disentangled_ml.models.trainer import build_triplet_model

    if strategy is None:
        # before any other op: MultiWorkerMirroredStrategy configures the runtime
        strategy = make_strategy() if multi_worker_cluster() is not None else tf.distribute.get_strategy()
    chief = is_chief(strategy)
    kind, index, cluster = _task(strategy)
    workers = max(1, sum(len(cluster.get(k, [])) for k in ("chief", "worker")))
    run = work = RunDirectory(run_dir)
    if not chief:
        # The chief owns the run directory; this worker writes its copies (saving is a
        # collective every worker joins) to a private folder with the same layout, removed at the end.
        work = RunDirectory(tempfile.mkdtemp(prefix=f"dml-{kind}-{index}-"))
        if os.path.isfile(run.config_path):  # resuming: resolve the config as the chief does
            shutil.copy(run.config_path, work.config_path)
    try:
        data = prepare_run(prepared_dir, work.path, config, audio_dir=audio_dir)
        config = sync_config(strategy, data.config)
        data = dataclasses.replace(data, config=config)
        replicas = strategy.num_replicas_in_sync
        global_batch = config.train.batch_size * replicas
        decode_stats = None if data_service else DecodeStats()
        job_name = None
        if data_service:
            from disentangled_ml.data.service import job_name_for

            job_name = job_name_for(run_dir, config)
        val_triplets = data.triplets["validation"]

        def train_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            cfg = _pipeline_config(config, ctx.input_pipeline_id, data.tracks, data.splits["train"])
            batch = ctx.get_per_replica_batch_size(global_batch)
            return data.datasets(batch, decode_stats, cfg, data_service=data_service, job_name=job_name)[0]

        def val_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            part = val_triplets[ctx.input_pipeline_id::ctx.num_input_pipelines] or val_triplets
            return eval_dataset(part, data.val_audio, config, ctx.get_per_replica_batch_size(global_batch))

        with strategy.scope():
            model = build_triplet_model(config)
            model.optimizer.build(model.trainable_variables)

        # Every worker saves (a collective), so every worker must take the same decisions: the
        # best score so far is the chief's, read from the run directory's history.
        best = float(from_first_replica(strategy, [_or_minus_inf(best_score(run_dir))])[0])
        cbs = run_callbacks(work.path, config, best=None if np.isinf(best) else best,
                            elapsed_s=elapsed_seconds(run_dir), decode_stats=decode_stats, write_graph=False,
                            verbose=verbose if chief else 0) + list(callbacks)
        val_steps = -(-len(val_triplets) // global_batch)
        history = fit_distributed(strategy, model, train_fn, config.train.epochs, config.train.steps_per_epoch,
                                  val_fn, val_steps, cbs,
                                  checkpoint_dir=work.distributed_checkpoints_dir,
                                  restore_dir=run.distributed_checkpoints_dir,
                                  verbose=verbose if chief else 0)
        summary: Dict[str, object] = {"replicas": replicas, "workers": workers, "chief": chief,
                                      "tensorboard": run.tensorboard_dir}
        if chief:
            summary = finish_run(prepared_dir, run_dir, data, model, len(history), decode_stats, extra=summary)
        # Nobody leaves before the chief has written the run: a worker exiting early
        # trips the cluster's heartbeat checks.
        agree(strategy, 0.0)
        return summary
    finally:
        if not chief:
            shutil.rmtree(work.path, ignore_errors=True)
