"""The masked triplet loss of Lee et al. (2020), with per-condition accuracy.

For a triplet ``(a, p, n)`` of condition ``s`` with mask ``m_s`` (a row of
:meth:`disentangled_ml.models.masks.ConditionMasks.mask_matrix`)::

    l = max(0, ||m_s * (f(a) - f(p))|| - ||m_s * (f(a) - f(n))|| + margin)

with Euclidean (not squared) distances (docs/design.md). Condition ``C`` (one past
the last name) marks a *track* triplet: its positive is another crop of the
anchor's track and its mask row is all ones. The objective is::

    L = mean(l over condition triplets) + track_weight * mean(l over track triplets)

(each mean over the triplets of that kind in the batch, 0 when there are none), plus,
for learned (CSN) masks, ``embed_norm * mean ||raw embedding||``; the masks' own L1
penalty comes from :meth:`ConditionMasks.penalty`.

Online mining (``data.mining``)
-------------------------------
The batches carry triplets, not labels: another triplet's negative is only known to
be dissimilar to *its own* anchor, so pairing an anchor with examples of other
triplets could create false negatives. Mining here therefore *selects among the
sampled triplets* rather than re-pairing them, within each condition (track counted
as one) of the batch, during training only (evaluation always scores every triplet):

* ``"random"`` (the paper): every triplet counts.
* ``"batch_hard"``: the hardest ``loss.hard_fraction`` (rounded up) of each
  condition's triplets, by loss, count; the rest get weight 0.
* ``"semi_hard"`` (FaceNet): only triplets with ``d(a,p) < d(a,n) < d(a,p) + margin``
  count; a condition with none of those in the batch falls back to its triplets with
  non-zero loss.

In-batch mining (``"in_batch_all"``, ``"in_batch_hard"``, ``"in_batch_contrastive"``)
---------------------------------------------------------------------------------------
The training pipeline also sends what is known about each crop (its track, excerpt,
crop start and labels), so every one of the ``N = 3B`` crops of a batch can be
paired with every other under the same similarity rules as the sampler
(:func:`disentangled_ml.pair_masks.batch_pair_masks`). The loss then uses all the
triplets the labels allow instead of only the ``B`` that were sampled (Hermans et
al. 2017, "In defense of the triplet loss"), at the cost of one ``[C + 1, N, N]``
distance matrix per batch -- the network's forward pass is unchanged:

* ``"in_batch_all"``: per condition, the mean hinge over its valid triplets with a
  non-zero loss (``N^3`` candidates per condition, one condition at a time: memory
  grows with the batch cubed, ``(3B)^3 * 4`` bytes a tensor, 3.5 MB at B = 32,
  225 MB at B = 128);
* ``"in_batch_hard"``: per condition and anchor, the hardest positive against the
  hardest negative, averaged over anchors that have both;
* ``"in_batch_contrastive"``: the same valid pairs in a supervised contrastive loss
  (Khosla et al. 2020, "Supervised contrastive learning"; its "L_out" form): per
  condition and anchor, the mean over its positives ``p`` of
  ``-log(exp(z_p) / sum_{c in positives and negatives} exp(z_c))`` with
  ``z = -d^2 / loss.temperature`` in the condition's view, averaged over anchors that
  have both. Every negative pushes with a weight that grows with how close it is,
  instead of the margin's all-or-nothing, so hard negatives count most without
  being selected. No margin.

``L_cond`` is then the mean over the conditions present in the batch and ``L_track``
the track group's value. Metrics (per-condition loss and accuracy) still describe the
sampled triplets, so they read the same in every mode.

The classification term (``loss.class_weight``)
-----------------------------------------------
:class:`ConditionClassLoss` adds ``class_weight * L_class`` to the objective:
for every tag condition ``s`` with ``K_s`` classes (``conditions.class_counts``) it
holds ``K_s`` learned proxies in the embedding space and scores each crop of the
batch whose label is known with a normalised softmax in the condition's view::

    logit_k = cos(m_s * f(x), m_s * w_k) / class_temperature
    L_s = cross-entropy(softmax(logit), t),   t = the crop's labels, each 1 / (number of its labels)

``L_class`` is the mean over the conditions with at least one labelled crop. The
proxies are trained with the network and are not part of the embedding or any export;
a condition's proxies live in its view, so they never pull on another slice. Tempo is
not a tag condition and gets no proxies (its 10-BPM sampling bins would make 109 and
111 BPM two classes).
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import keras
import tensorflow as tf
from keras import ops

from disentangled_ml.config import MINING_MODES, Config, ConfigError, TRACK_CONDITION

__all__ = ["IN_BATCH_MODES", "MINING_MODES", "MaskedTripletLoss", "ConditionClassLoss", "build_triplet_loss",
           "build_class_loss", "masked_distance", "pairwise_masked_distance"]

#: Modes that mine among all crops of a batch and need the pipeline's crop labels.
IN_BATCH_MODES = ("in_batch_all", "in_batch_hard", "in_batch_contrastive")


def masked_distance(x, y, mask, epsilon: float = 1e-12):
    """``||mask * (x - y)||`` row-wise, float32 ``[batch]``.

    ``epsilon`` inside the square root keeps the gradient finite when ``x == y``
    (an anchor and a positive cut from silence, say).
    """
    diff = mask * (x - y)
    return ops.sqrt(ops.sum(ops.square(diff), axis=-1) + epsilon)


def pairwise_masked_distance(embeddings, masks, epsilon: float = 1e-12, squared: bool = False):
    """``||m_g * (e_i - e_j)||`` for every mask row ``g`` and pair ``i, j``: float32 ``[G, N, N]``.

    Args:
        embeddings: float32 ``[N, D]``.
        masks: float32 ``[G, D]``.
        squared: return the squared distances (no square root, no ``epsilon``).

    Computed from Gram matrices (``|x|^2 + |y|^2 - 2 x.y``, clipped at 0), so memory
    is ``G * N^2`` rather than ``G * N^2 * D``.
    """
    me = masks[:, None, :] * embeddings[None, :, :]  # [G, N, D]
    sq = ops.sum(ops.square(me), axis=-1)  # [G, N]
    gram = ops.matmul(me, ops.transpose(me, (0, 2, 1)))  # [G, N, N]
    d2 = ops.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0)
    return d2 if squared else ops.sqrt(d2 + epsilon)


@keras.saving.register_keras_serializable(package="disentangled_ml")
class MaskedTripletLoss(keras.layers.Layer):
    """Masked triplet loss with track regularisation, per-condition loss and accuracy.

    Args:
        names: condition names (``cfg.conditions.names``); condition index ``c``
            means ``names[c]``, and ``len(names)`` means a track triplet.
        margin: triplet margin (``loss.margin``), in embedding distance units.
        track_weight: lambda, the weight of the track triplets (``loss.track_weight``).
        mining: ``"random"``, ``"batch_hard"`` or ``"semi_hard"`` (module docstring).
        hard_fraction: share of each condition's triplets kept by ``"batch_hard"``.
        embed_norm: weight of the mean raw-embedding norm penalty (CSN), applied
            when ``raw_embeddings`` is passed to the call.
        epsilon: added inside the square root of every distance.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        anchor, positive, negative: float32 ``[batch, D]`` embeddings.
        condition: int ``[batch]`` in ``[0, C]``.
        masks: float32 ``[C + 1, D]`` mask matrix.
        raw_embeddings: optional float32 ``[N, D]`` (or a list of such) un-normalised
            embeddings whose mean L2 norm is penalised by ``embed_norm``.
        pairs: for the in-batch modes, ``(pos, neg)`` bool ``[C + 1, 3B, 3B]`` from
            :func:`disentangled_ml.pair_masks.batch_pair_masks`, rows and columns in
            the order anchors, positives, negatives. Without it an in-batch mode
            scores the sampled triplets, as ``"random"`` does.
        training: mining applies only when True.

    Returns:
        dict of tensors:

        * ``"loss"``: scalar, the objective (triplet loss + embed-norm penalty).
        * ``"triplet_loss"``: scalar, ``L_cond + track_weight * L_track``.
        * ``"per_triplet"``: ``[batch]`` hinge loss of every triplet (before mining).
        * ``"correct"``: ``[batch]`` 1.0 where ``d(a,p) < d(a,n)`` in the masked space.
        * ``"weight"``: ``[batch]`` mining weight (all 1 for ``"random"``).
        * ``"condition_loss"``, ``"condition_accuracy"``, ``"condition_count"``:
          ``[C + 1]`` mean hinge loss, triplet accuracy and number of triplets of each
          condition (track last); 0 for a condition absent from the batch.
    """

    def __init__(self, names: Sequence[str], margin: float = 0.1, track_weight: float = 0.5,
                 mining: str = "random", hard_fraction: float = 0.5, embed_norm: float = 0.0,
                 temperature: float = 0.05, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = tuple(names)
        if not names or TRACK_CONDITION in names or len(set(names)) != len(names):
            raise ConfigError(f"condition names {names!r} must be distinct, non-empty and must not include "
                              f"{TRACK_CONDITION!r}.")
        if margin < 0:
            raise ConfigError(f"margin={margin!r} must be >= 0 (config value loss.margin).")
        if track_weight < 0:
            raise ConfigError(f"track_weight={track_weight!r} must be >= 0 (config value loss.track_weight).")
        if mining not in MINING_MODES:
            raise ConfigError(f"mining={mining!r} is not one of {MINING_MODES} (config value data.mining).")
        if not 0 < hard_fraction <= 1:
            raise ConfigError(f"hard_fraction={hard_fraction!r} must be in (0, 1] (config value loss.hard_fraction).")
        if embed_norm < 0:
            raise ConfigError(f"embed_norm={embed_norm!r} must be >= 0 (config value loss.embed_norm).")
        if temperature <= 0:
            raise ConfigError(f"temperature={temperature!r} must be > 0 (config value loss.temperature).")
        self.names = names
        self.margin = float(margin)
        self.track_weight = float(track_weight)
        self.mining = mining
        self.hard_fraction = float(hard_fraction)
        self.embed_norm = float(embed_norm)
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.built = True  # no weights

    @property
    def num_conditions(self) -> int:
        """``C``; condition index ``C`` is the track triplets."""
        return len(self.names)

    @property
    def metric_names(self) -> tuple:
        """Names of the ``C + 1`` groups, track last: ``(*names, "track")``."""
        return (*self.names, TRACK_CONDITION)

    def call(self, anchor, positive, negative, condition, masks, raw_embeddings=None, pairs=None, training=None):
        for label, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
            if len(t.shape) != 2:
                raise ValueError(f"MaskedTripletLoss: {label} embeddings must be [batch, D], got shape {t.shape}.")
        groups = self.num_conditions + 1
        condition = ops.cast(ops.reshape(condition, (-1,)), "int32")
        tf.debugging.assert_less(condition, groups, message=(
            f"MaskedTripletLoss: a condition index is >= {groups}; indices must be in [0, {self.num_conditions}] "
            f"({self.num_conditions} = track) for conditions {self.names}"))
        tf.debugging.assert_non_negative(condition, message="MaskedTripletLoss: negative condition index")

        masks = ops.cast(masks, anchor.dtype)
        m = ops.take(masks, condition, axis=0)  # [B, D]
        d_ap = masked_distance(anchor, positive, m, self.epsilon)
        d_an = masked_distance(anchor, negative, m, self.epsilon)
        hinge = ops.relu(d_ap - d_an + self.margin)
        correct = ops.cast(d_ap < d_an, hinge.dtype)

        onehot = ops.one_hot(condition, groups, dtype=hinge.dtype)  # [B, G]
        count = ops.sum(onehot, axis=0)  # [G]
        safe = ops.maximum(count, 1.0)
        condition_loss = ops.matmul(hinge, onehot) / safe
        condition_accuracy = ops.matmul(correct, onehot) / safe

        weight = ops.ones_like(hinge)
        if training and self.mining in IN_BATCH_MODES and pairs is not None:
            group_loss, present = self.in_batch_loss(ops.concatenate([anchor, positive, negative], axis=0),
                                                     masks, *pairs)
            n_cond = ops.sum(present[:-1])
            l_cond = ops.sum(group_loss[:-1] * present[:-1]) / ops.maximum(n_cond, 1.0)
            triplet_loss = l_cond + self.track_weight * group_loss[-1]
        else:
            if training and self.mining in ("batch_hard", "semi_hard"):
                weight = ops.stop_gradient(self._mining_weight(hinge, d_ap, d_an, onehot))
            is_track = onehot[:, -1]
            triplet_loss = (self._weighted_mean(hinge, weight * (1.0 - is_track))
                            + self.track_weight * self._weighted_mean(hinge, weight * is_track))
        loss = triplet_loss
        if raw_embeddings is not None and self.embed_norm > 0:
            if isinstance(raw_embeddings, (list, tuple)):
                raw_embeddings = ops.concatenate(list(raw_embeddings), axis=0)
            norms = ops.sqrt(ops.sum(ops.square(raw_embeddings), axis=-1) + self.epsilon)
            loss = loss + self.embed_norm * ops.mean(norms)
        return {
            "loss": loss,
            "triplet_loss": triplet_loss,
            "per_triplet": hinge,
            "correct": correct,
            "weight": weight,
            "condition_loss": condition_loss,
            "condition_accuracy": condition_accuracy,
            "condition_count": count,
        }

    def in_batch_loss(self, embeddings, masks, pos, neg):
        """Loss of every group (conditions, then track) over all valid in-batch triplets.

        Args:
            embeddings: float32 ``[N, D]``.
            masks: float32 ``[C + 1, D]``.
            pos, neg: bool ``[C + 1, N, N]``: ``pos[g, i, j]`` (``neg[g, i, k]``) when j
                (k) may be anchor i's positive (negative) in group g.
        Returns:
            (loss ``[C + 1]``, present ``[C + 1]``): the group's loss (module docstring)
            and 1.0 where the batch holds at least one valid triplet of it.
        """
        pos_f = ops.cast(pos, embeddings.dtype)
        neg_f = ops.cast(neg, embeddings.dtype)
        has = ops.cast(ops.logical_and(ops.any(pos, axis=2), ops.any(neg, axis=2)), embeddings.dtype)  # [G, N]
        present = ops.cast(ops.sum(has, axis=1) > 0, embeddings.dtype)
        if self.mining == "in_batch_contrastive":
            d2 = pairwise_masked_distance(embeddings, ops.cast(masks, embeddings.dtype), squared=True)
            logits = -d2 / self.temperature
            candidate = ops.logical_or(pos, neg)
            # log-sum-exp over each anchor's candidates only; the row maximum is shifted out
            # (stopped: it cancels in the softmax) so exp() cannot overflow at small temperatures.
            # Non-candidates are set to -1e9 *before* exp(): masking after it would leave an
            # overflowed exp() in the graph, and its gradient (inf * 0) would be NaN.
            masked = ops.where(candidate, logits, -1e9)
            shift = ops.stop_gradient(ops.max(masked, axis=2, keepdims=True))
            log_norm = ops.log(ops.sum(ops.exp(masked - shift), axis=2, keepdims=True)) + shift  # [G, N, 1]
            log_prob = logits - log_norm
            n_pos = ops.maximum(ops.sum(pos_f, axis=2), 1.0)
            per_anchor = -ops.sum(log_prob * pos_f, axis=2) / n_pos * has  # [G, N]
            return ops.sum(per_anchor, axis=1) / ops.maximum(ops.sum(has, axis=1), 1.0), present
        dist = pairwise_masked_distance(embeddings, ops.cast(masks, embeddings.dtype), self.epsilon)
        if self.mining == "in_batch_all":
            losses = []
            for g in range(pos.shape[0]):  # one group at a time: peak memory N^3, not (C + 1) N^3
                d = dist[g]
                hinge = ops.relu(d[:, :, None] - d[:, None, :] + self.margin)  # [anchor, positive, negative]
                hinge = hinge * pos_f[g][:, :, None] * neg_f[g][:, None, :]
                active = ops.sum(ops.cast(hinge > 0, dist.dtype))
                losses.append(ops.sum(hinge) / ops.maximum(active, 1.0))
            return ops.stack(losses), present
        big = ops.stop_gradient(ops.max(dist)) + 1.0  # outside any valid distance, so masked entries never win
        hardest_pos = ops.max(dist * pos_f, axis=2)
        hardest_neg = ops.min(ops.where(neg, dist, big), axis=2)
        hinge = ops.relu(hardest_pos - hardest_neg + self.margin) * has
        return ops.sum(hinge, axis=1) / ops.maximum(ops.sum(has, axis=1), 1.0), present

    @staticmethod
    def _weighted_mean(values, weight):
        return ops.sum(values * weight) / ops.maximum(ops.sum(weight), 1.0)

    def _mining_weight(self, hinge, d_ap, d_an, onehot):
        same = ops.matmul(onehot, ops.transpose(onehot))  # [B, B]: 1 where same condition
        if self.mining == "batch_hard":
            # rank[i] = how many triplets of i's condition are harder than i (ties
            # broken by position, so exactly ceil(fraction * n) are kept).
            h_i = ops.expand_dims(hinge, 1)
            h_j = ops.expand_dims(hinge, 0)
            idx = ops.arange(ops.shape(hinge)[0])
            earlier = ops.expand_dims(idx, 0) < ops.expand_dims(idx, 1)  # [i, j]: j < i
            harder = ops.logical_or(h_j > h_i, ops.logical_and(ops.equal(h_j, h_i), earlier))
            rank = ops.sum(same * ops.cast(harder, hinge.dtype), axis=1)
            keep = ops.ceil(self.hard_fraction * ops.sum(same, axis=1))
            return ops.cast(rank < keep, hinge.dtype)
        # semi_hard
        semi = ops.cast(ops.logical_and(d_ap < d_an, d_an < d_ap + self.margin), hinge.dtype)
        active = ops.cast(hinge > 0, hinge.dtype)
        group_has_semi = ops.matmul(same, semi) > 0
        return ops.where(group_has_semi, semi, active)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(names=list(self.names), num_conditions=self.num_conditions, margin=self.margin,
                      track_weight=self.track_weight, mining=self.mining, hard_fraction=self.hard_fraction,
                      embed_norm=self.embed_norm, temperature=self.temperature, epsilon=self.epsilon)
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "MaskedTripletLoss":
        config = dict(config)
        num = config.pop("num_conditions", None)  # informational; implied by names
        if num is not None and num != len(config["names"]):
            raise ConfigError(f"MaskedTripletLoss config has num_conditions={num} but {len(config['names'])} names.")
        return cls(**config)


@keras.saving.register_keras_serializable(package="disentangled_ml")
class ConditionClassLoss(keras.layers.Layer):
    """Normalised-softmax classification of each tag condition's view against learned class proxies.

    Args:
        names: condition names (``cfg.conditions.names``), in mask-row order.
        class_counts: ``{condition: K}`` for the conditions to classify (tag conditions);
            a condition missing here gets no term.
        embedding_dim: ``D``.
        temperature: logits are cosines divided by this.
        seed: seeds the proxies' initialisation.
        **kwargs: ``keras.layers.Layer`` arguments.

    Call arguments:
        embeddings: float32 ``[N, D]`` (all crops of a batch).
        masks: float32 ``[C + 1, D]`` mask matrix (row ``s``: condition ``s``'s view).
        classes: list over ``names`` of ``[N, K_s]`` class membership (bool or 0/1), or
            ``None`` for a condition without proxies; a crop with no class is not scored.

    Returns:
        (loss, per_condition): float32 scalar ``L_class`` and ``[C]`` each condition's mean
        cross-entropy (0 where it has no proxies or no labelled crop).
    """

    def __init__(self, names: Sequence[str], class_counts: Dict[str, int], embedding_dim: int,
                 temperature: float = 0.05, seed: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = tuple(names)
        unknown = set(class_counts) - set(self.names)
        if unknown:
            raise ConfigError(f"class_counts names condition(s) {sorted(unknown)} that are not among {self.names} "
                              "(config value conditions.class_counts).")
        if temperature <= 0:
            raise ConfigError(f"temperature={temperature!r} must be > 0 (config value loss.class_temperature).")
        self.class_counts = {n: int(class_counts[n]) for n in self.names if n in class_counts}
        self.embedding_dim = int(embedding_dim)
        self.temperature = float(temperature)
        self.seed = seed
        self.proxies = {}
        for k, name in enumerate(self.names):
            if name in self.class_counts:
                init = keras.initializers.RandomNormal(stddev=1.0, seed=None if seed is None else int(seed) + k)
                self.proxies[name] = self.add_weight(shape=(self.class_counts[name], self.embedding_dim),
                                                     initializer=init, name=f"proxies_{name}")
        self.built = True

    def call(self, embeddings, masks, classes):
        total, present, per_condition = 0.0, 0.0, []
        for s, name in enumerate(self.names):
            if name not in self.proxies or classes[s] is None:
                per_condition.append(ops.zeros(()))
                continue
            m = ops.cast(masks[s], embeddings.dtype)
            view = _unit(embeddings * m)
            proxies = _unit(ops.cast(self.proxies[name], embeddings.dtype) * m)
            logits = ops.matmul(view, ops.transpose(proxies)) / self.temperature  # [N, K]
            target = ops.cast(classes[s], embeddings.dtype)
            n_labels = ops.sum(target, axis=1)
            known = ops.cast(n_labels > 0, embeddings.dtype)
            target = target / ops.maximum(n_labels, 1.0)[:, None]
            ce = -ops.sum(target * ops.log_softmax(logits, axis=1), axis=1) * known
            n_known = ops.sum(known)
            value = ops.sum(ce) / ops.maximum(n_known, 1.0)
            has = ops.cast(n_known > 0, embeddings.dtype)
            per_condition.append(value)
            total = total + value * has
            present = present + has
        return total / ops.maximum(present, 1.0), ops.stack(per_condition)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(names=list(self.names), class_counts=dict(self.class_counts), embedding_dim=self.embedding_dim,
                      temperature=self.temperature, seed=self.seed)
        return config


def _unit(x, epsilon: float = 1e-12):
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    return x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + epsilon)


def build_class_loss(cfg: Config, name: str = "class_loss"):
    """The :class:`ConditionClassLoss` of ``cfg``, or None when the term is off
    (``loss.class_weight`` 0) or no class counts are known (``conditions.class_counts``)."""
    counts = cfg.conditions.class_counts or {}
    if cfg.loss.class_weight == 0 or not counts:
        return None
    return ConditionClassLoss(cfg.conditions.names, counts, cfg.conditions.embedding_dim,
                              temperature=cfg.loss.class_temperature, seed=cfg.data.seed, name=name)


def build_triplet_loss(cfg: Config, name: str = "triplet_loss") -> MaskedTripletLoss:
    """The :class:`MaskedTripletLoss` of ``cfg``.

    The embed-norm penalty weight is ``loss.embed_norm`` for learned masks and 0
    otherwise (CSN's penalty exists to stop the masks and the embedding trading
    scale; fixed masks have no scale to trade).
    """
    return MaskedTripletLoss(
        names=cfg.conditions.names, margin=cfg.loss.margin, track_weight=cfg.loss.track_weight,
        mining=cfg.data.mining, hard_fraction=cfg.loss.hard_fraction, temperature=cfg.loss.temperature,
        embed_norm=cfg.loss.embed_norm if cfg.model.mask_mode == "learned" else 0.0, name=name)
