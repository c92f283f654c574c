"""What replicas of one model must agree on: collectives over a ``tf.distribute`` strategy.

Used by both training paths: ``model.fit`` under ``MirroredStrategy`` (several GPUs of
one machine, :class:`AverageMovingStatistics`) and the multi-worker loop
(:mod:`disentangled_ml.training.distributed`, which also uses the agreement checks).

Keras 3 creates batch-norm moving statistics as mirrored variables with no
aggregation, so each replica updates its own copy and the copies drift apart;
they are averaged here. The moving averages are linear in the batch statistics,
so averaging the copies once per epoch gives the same result as every step.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from disentangled_ml.config import Config, ConfigError

def from_first_replica(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
    """``values`` as the chief holds them, on every worker (sum of the chief's and zeros).

    The chief's first replica is replica 0 of the sync group.
    """
    v = tf.constant(np.asarray(values, np.float64))

    def fn():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, v, tf.zeros_like(v))

    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(fn), axis=None).numpy()


def agree(strategy: tf.distribute.Strategy, value: float) -> bool:
    """True when ``value`` is the same on every replica (the same answer on all of them)."""
    n = strategy.num_replicas_in_sync
    v = tf.constant(float(value), tf.float64)

    def fn():
        # every replica's value at its own position; summing gathers them all everywhere
        rid = tf.distribute.get_replica_context().replica_id_in_sync_group
        return tf.one_hot(rid, n, dtype=tf.float64) * v

    values = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(fn), axis=None).numpy()
    return bool(np.all(values == values[0]))


def sync_config(strategy: tf.distribute.Strategy, config: Config) -> Config:
    """The chief's mel statistics on every worker, and a check that the workers' configs match.

    Each worker measured the statistics itself (same tracks, same seed); taking the
    chief's makes them bit-identical even across different hardware.
    """
    fe = config.frontend
    mean, std = from_first_replica(strategy, [fe.norm_mean, fe.norm_std])
    config = config.replace(**{"frontend.norm_mean": float(mean), "frontend.norm_std": float(std)})
    if not agree(strategy, float(int(config.hash()[:8], 16))):
        raise ConfigError("the workers of the cluster run different configs (the hash of config.json differs): give "
                          "every worker the same --config/--set options, prepared collection and run directory.")
    return config


def moving_statistics(model: keras.Model) -> List[Any]:
    """Float non-trainable variables (batch-norm moving statistics) to average across replicas."""
    return [v for v in model.non_trainable_variables if "float" in str(v.dtype)]


def make_average(strategy: tf.distribute.Strategy, variables: Sequence[Any]) -> Callable[[], None]:
    tf_vars = [getattr(v, "value", v) for v in variables]

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in tf_vars])
        for v, m in zip(tf_vars, means):
            v.assign(m)  # aggregation NONE: each replica writes its own copy, all the same mean

    @tf.function
    def average():
        if tf_vars:
            strategy.run(replica_fn)

    return average


class AverageMovingStatistics(keras.callbacks.Callback):
    """Average the batch-norm moving statistics across replicas inside ``model.fit``.

    Under ``MirroredStrategy`` (one machine, several GPUs) Keras 3 leaves each
    replica its own copy of the moving statistics (module docstring), and
    saving writes replica 0's copy, which has seen only 1/N of the batches. This
    averages the copies before every validation pass and at every epoch end, so
    validation, checkpoints and the exported model all use the statistics of the
    whole global batch, as in the multi-worker loop. Put it before the callbacks
    that save. A no-op with one replica.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        super().__init__()
        self._strategy = strategy
        self._average: Optional[Callable[[], None]] = None

    def on_train_begin(self, logs=None):
        if self._strategy.num_replicas_in_sync > 1:
            self._average = make_average(self._strategy, moving_statistics(self.model))

    def _run(self):
        if self._average is not None:
            self._average()

    def on_test_begin(self, logs=None):
        self._run()

    def on_epoch_end(self, epoch, logs=None):
        self._run()
