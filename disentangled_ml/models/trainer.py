"""The trainable triplet model: embedding network + condition masks + masked triplet loss.

:class:`TripletModel` is a ``keras.Model`` whose ``fit``/``evaluate`` consume the
triplet batches of the data pipeline::

    {"anchor": float32 [B, F, M], "positive": float32 [B, F, M],
     "negative": float32 [B, F, M], "condition": int32 [B]}

(condition ``c < C`` is ``cfg.conditions.names[c]``, ``c == C`` a track triplet),
plus, from the training pipeline, the ``crop_*`` labels of every crop, which the
in-batch mining modes (``data.mining = "in_batch_*"``) use and the others ignore;
batches without them (hand-made triplet datasets) train on the sampled triplets,
with a warning. It reports, per epoch, ``loss``, ``loss_<condition>`` and
``acc_<condition>`` for every condition and ``track``, and ``mean_acc``, the mean
triplet accuracy over the conditions (not track): ``val_mean_acc`` is the
early-stopping target. ``model.predict`` / ``model(x)`` return the anchor embedding.

The whole model saves to ``.keras`` and loads back with ``keras.saving.load_model``
without ``custom_objects``: every class here is registered, and the model rebuilds
itself from its :class:`~disentangled_ml.config.Config`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Union

import keras
import tensorflow as tf
from keras import ops

from disentangled_ml.config import Config, ConfigError
from disentangled_ml.losses import IN_BATCH_MODES, build_class_loss, build_triplet_loss
from disentangled_ml.models.embedding import EMBEDDING_OUTPUT, RAW_OUTPUT, build_embedding_model
from disentangled_ml.models.masks import build_condition_masks
from disentangled_ml.pair_masks import batch_pair_masks, flatten_roles, missing_crop_labels

log = logging.getLogger(__name__)

__all__ = ["TripletModel", "MeanConditionAccuracy", "build_triplet_model", "TRIPLET_KEYS"]

TRIPLET_KEYS = ("anchor", "positive", "negative", "condition")


@keras.saving.register_keras_serializable(package="disentangled_ml")
class MeanConditionAccuracy(keras.metrics.Metric):
    """Mean over conditions of each condition's triplet accuracy, accumulated exactly.

    Keeps per-condition sums of correct triplets and triplet counts (summed across
    replicas under ``tf.distribute``), so the epoch result is the mean of the
    conditions' epoch accuracies, not a mean of per-batch means. Conditions with no
    triplet so far are left out of the mean.

    Args:
        num_conditions: ``C`` (the track group is not passed to this metric).
    """

    def __init__(self, num_conditions: int, name: str = "mean_acc", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.num_conditions = int(num_conditions)
        self.correct = self.add_variable(shape=(self.num_conditions,), initializer="zeros", name="correct",
                                         aggregation="sum")
        self.count = self.add_variable(shape=(self.num_conditions,), initializer="zeros", name="count",
                                       aggregation="sum")

    def update_state(self, correct, count):
        """Add ``correct`` (float ``[C]``, correct triplets) and ``count`` (``[C]``, triplets)."""
        self.correct.assign_add(ops.cast(correct, self.dtype))
        self.count.assign_add(ops.cast(count, self.dtype))

    def result(self):
        present = ops.cast(self.count > 0, self.dtype)
        accuracy = ops.divide_no_nan(self.correct, self.count)
        return ops.divide_no_nan(ops.sum(accuracy * present), ops.sum(present))

    def get_config(self) -> Dict[str, Any]:
        return {**super().get_config(), "num_conditions": self.num_conditions}


@keras.saving.register_keras_serializable(package="disentangled_ml")
class TripletModel(keras.Model):
    """Embedding network trained with the masked triplet loss.

    Args:
        config: a :class:`Config` or its ``to_dict()`` form (what ``get_config``
            stores, so a saved model rebuilds the same network).
        **kwargs: ``keras.Model`` arguments (``name``).

    Attributes:
        cfg: the :class:`Config`.
        embedding_model: mel ``[B, F, M]`` -> ``{"embedding", "raw_embedding"}``
            (:func:`~disentangled_ml.models.embedding.build_embedding_model`).
        condition_masks: :class:`~disentangled_ml.models.masks.ConditionMasks`.
        triplet_loss: :class:`~disentangled_ml.losses.MaskedTripletLoss`.
    """

    def __init__(self, config: Union[Config, Mapping[str, Any]], **kwargs: Any) -> None:
        kwargs.setdefault("name", "triplet_model")
        super().__init__(**kwargs)
        if isinstance(config, Mapping):
            config = Config.from_dict(config)
        if not isinstance(config, Config):
            raise ConfigError(f"TripletModel expects a Config or a config dict, got {type(config).__name__}.")
        self.cfg = config
        self.embedding_model = build_embedding_model(config)
        self.condition_masks = build_condition_masks(config)
        self.triplet_loss = build_triplet_loss(config)
        self.class_loss = build_class_loss(config)  # None unless loss.class_weight > 0 and class counts known
        self._learned_masks = config.model.mask_mode == "learned"
        self._warned_no_crop_labels = False

        groups = self.triplet_loss.metric_names  # conditions, then "track"
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.condition_loss_trackers = [keras.metrics.Mean(name=f"loss_{g}") for g in groups]
        self.condition_acc_trackers = [keras.metrics.Mean(name=f"acc_{g}") for g in groups]
        self.mean_acc_tracker = MeanConditionAccuracy(len(config.conditions.names), name="mean_acc")
        self.class_loss_tracker = keras.metrics.Mean(name="loss_class") if self.class_loss is not None else None
        # Every part is built at construction (fixed input shape), so fit() needs no
        # symbolic build pass and load_model() can restore weights straight away.
        self.built = True

    @property
    def metrics(self):
        extra = [self.class_loss_tracker] if self.class_loss_tracker is not None else []
        return [self.loss_tracker, *self.condition_loss_trackers, *self.condition_acc_trackers,
                self.mean_acc_tracker, *extra]

    @property
    def training_only_metrics(self) -> tuple:
        """Names of metrics that only training batches update (evaluation batches carry no crop
        labels to classify), so no ``val_`` figure is reported for them."""
        return (self.class_loss_tracker.name,) if self.class_loss_tracker is not None else ()

    def call(self, inputs, training=False):
        """Embedding of ``inputs["anchor"]`` (or of ``inputs`` when it is a mel batch).

        Returns float32 ``[batch, embedding_dim]``, unit norm.
        """
        if isinstance(inputs, Mapping):
            inputs = inputs["anchor"]
        return self.embedding_model(inputs, training=training)[EMBEDDING_OUTPUT]

    def _check_batch(self, x) -> None:
        if not isinstance(x, Mapping) or any(k not in x for k in TRIPLET_KEYS):
            found = sorted(x) if isinstance(x, Mapping) else type(x).__name__
            raise ValueError(f"TripletModel expects batches {{{', '.join(TRIPLET_KEYS)}}} from the triplet "
                             f"pipeline; got {found}.")

    def triplet_outputs(self, x: Mapping[str, Any], training: bool = False) -> Dict[str, Any]:
        """Embed a triplet batch in one forward pass and score it.

        Anchor, positive and negative go through the network as one ``3B`` batch, so
        batch normalisation sees all of them together.

        Returns:
            the :class:`~disentangled_ml.losses.MaskedTripletLoss` outputs, with
            ``"loss"`` also including the learned masks' L1 penalty and, in training
            with crop labels and ``loss.class_weight > 0``, ``class_weight * L_class``
            (:class:`~disentangled_ml.losses.ConditionClassLoss`; also returned as
            ``"class_loss"``).
        """
        self._check_batch(x)
        anchor = x["anchor"]
        b = ops.shape(anchor)[0]
        stacked = ops.concatenate([anchor, x["positive"], x["negative"]], axis=0)
        out = self.embedding_model(stacked, training=training)
        emb = ops.cast(out[EMBEDDING_OUTPUT], "float32")  # loss in float32 under mixed precision
        raw = ops.cast(out[RAW_OUTPUT], "float32") if self._learned_masks else None
        pairs = None
        in_batch = self.cfg.data.mining in IN_BATCH_MODES
        has_labels = False
        if training and (in_batch or self.class_loss is not None):
            missing = missing_crop_labels(x, self.cfg)
            has_labels = not missing
            if has_labels and in_batch:
                pairs = batch_pair_masks(x, self.cfg)  # crop labels -> [C + 1, 3B, 3B] pairs
            elif missing and not self._warned_no_crop_labels:  # once, when the step is traced
                self._warned_no_crop_labels = True
                skipped = []
                if in_batch:
                    skipped.append(f"data.mining={self.cfg.data.mining!r} trains on the sampled triplets only, "
                                   "as with 'random'")
                if self.class_loss is not None:
                    skipped.append(f"the classification term (loss.class_weight={self.cfg.loss.class_weight:g}) "
                                   "is left out")
                log.warning("the training batches carry no crop labels (%s): %s. Batches from "
                            "disentangled_ml.data.pipeline.training_dataset carry them.",
                            ", ".join(missing), "; ".join(skipped))
        masks = self.condition_masks.mask_matrix()
        result = self.triplet_loss(emb[:b], emb[b:2 * b], emb[2 * b:], x["condition"], masks,
                                   raw_embeddings=raw, pairs=pairs, training=training)
        result = dict(result)
        result["loss"] = result["loss"] + self.condition_masks.penalty()
        if has_labels and self.class_loss is not None:
            classes = [flatten_roles(x[f"crop_classes_{n}"]) if n in self.class_loss.proxies else None
                       for n in self.cfg.conditions.names]
            class_loss, _ = self.class_loss(emb, masks, classes)
            result["class_loss"] = class_loss
            result["loss"] = result["loss"] + self.cfg.loss.class_weight * class_loss
        return result

    def _update_metrics(self, result: Mapping[str, Any]) -> Dict[str, Any]:
        self.loss_tracker.update_state(result["loss"])
        count = result["condition_count"]
        for k, (loss_t, acc_t) in enumerate(zip(self.condition_loss_trackers, self.condition_acc_trackers)):
            # weighted by the triplets of that condition in the batch; weight 0 when absent
            loss_t.update_state(result["condition_loss"][k], sample_weight=count[k])
            acc_t.update_state(result["condition_accuracy"][k], sample_weight=count[k])
        c = self.triplet_loss.num_conditions
        self.mean_acc_tracker.update_state(result["condition_accuracy"][:c] * count[:c], count[:c])
        if self.class_loss_tracker is not None and "class_loss" in result:  # training batches only
            self.class_loss_tracker.update_state(result["class_loss"])
        skip = () if "class_loss" in result else self.training_only_metrics
        return {m.name: m.result() for m in self.metrics if m.name not in skip}

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            result = self.triplet_outputs(x, training=True)
            loss = result["loss"]
            # Per-replica mean; gradients are summed across replicas, hence the division
            # (what keras.Model's own train_step does).
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled = loss / replicas if replicas > 1 else loss
            scaled = self.optimizer.scale_loss(scaled)  # loss scaling under mixed precision
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        return self._update_metrics(result)

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_metrics(self.triplet_outputs(x, training=False))

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self(x, training=False)

    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, "config": self.cfg.to_dict()}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "TripletModel":
        config = dict(config)
        cfg = config.pop("config")
        return cls(cfg, name=config.get("name", "triplet_model"))


def learning_rate(cfg: Config):
    """Adam's learning rate for ``cfg.train``: a float (``"plateau"``; callbacks lower it) or a
    ``keras.optimizers.schedules.CosineDecay`` with linear warm-up (``"cosine"``), which is
    saved with the optimizer, so a resumed run continues on the same curve."""
    t = cfg.train
    if t.lr_schedule == "plateau":
        return t.learning_rate
    warmup = min(t.warmup_steps, max(t.total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else t.learning_rate, decay_steps=max(t.total_steps - warmup, 1),
        alpha=t.lr_final_fraction, warmup_target=t.learning_rate if warmup else None, warmup_steps=warmup)


def build_triplet_model(cfg: Config) -> TripletModel:
    """A :class:`TripletModel` of ``cfg``, compiled with Adam on the schedule of :func:`learning_rate`.

    Under ``tf.distribute``, call it inside ``strategy.scope()``.
    """
    model = TripletModel(cfg)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate(cfg)))
    return model
