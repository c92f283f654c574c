"""Condition masks: which dimensions of the embedding each similarity condition uses.

A triplet of condition ``s`` is scored on ``m_s * f(x)`` (element-wise), where
``m_s`` is row ``s`` of the mask matrix ``[C + 1, D]`` built here. Row ``C`` (the
``track`` row) is all ones: track-regularisation triplets are scored on the whole
embedding (Lee et al. 2020).

Three modes, the paper's comparisons:

* ``"fixed"`` (default): row ``s`` is 1 on the condition's slice
  (``cfg.conditions.slices``, e.g. genre = dims 0-63) and 0 elsewhere. The
  disentangled, multidimensional space of Lee et al.
* ``"learned"``: conditional similarity networks (Veit et al., CVPR 2017). Each row
  is ``ReLU(w_s)`` for trainable ``w_s`` initialised from N(0.9, 0.7), as in the
  CSN reference code; an L1 penalty (``loss.mask_l1``) keeps them sparse.
* ``"none"``: every row is all ones, one global metric space for all conditions.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import keras
import numpy as np
from keras import ops

from disentangled_ml.config import Config, ConfigError, TRACK_CONDITION

__all__ = ["MASK_MODES", "ConditionMasks", "build_condition_masks"]

MASK_MODES = ("fixed", "learned", "none")
#: CSN's initialisation of the learned masks (Veit et al.'s code: normal_(0.9, 0.7)):
#: most entries start positive, i.e. close to the unmasked space.
LEARNED_INIT_MEAN = 0.9
LEARNED_INIT_STDDEV = 0.7


@keras.saving.register_keras_serializable(package="disentangled_ml")
class ConditionMasks(keras.layers.Layer):
    """The mask matrix ``[C + 1, D]`` for ``C`` conditions and the track row.

    Args:
        names: the condition names, in ``cfg.conditions.names`` order.
        embedding_dim: ``D``.
        mode: ``"fixed"``, ``"learned"`` or ``"none"`` (module docstring).
        slices: ``{name: (start, stop)}`` dimension ranges for ``"fixed"``;
            defaults to ``D / C`` contiguous equal slices in ``names`` order.
        mask_l1: weight of the L1 penalty on learned masks (``loss.mask_l1``);
            ignored by the other modes, whose penalty is 0.
        seed: seed of the learned masks' initialiser (None: random).
        **kwargs: ``keras.layers.Layer`` arguments.

    Call:
        ``layer(embedding)`` with float32 ``[batch, D]`` returns float32
        ``[batch, C + 1, D]``: the embedding seen through each mask (row ``C`` is the
        embedding itself). For the matrix alone use :meth:`mask_matrix`.
    """

    def __init__(self, names: Sequence[str], embedding_dim: int, mode: str = "fixed",
                 slices: Optional[Mapping[str, Sequence[int]]] = None, mask_l1: float = 0.0,
                 seed: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        names = tuple(names)
        if mode not in MASK_MODES:
            raise ConfigError(f"mask mode {mode!r} is not one of {MASK_MODES} (config value model.mask_mode).")
        if not names or len(set(names)) != len(names) or TRACK_CONDITION in names:
            raise ConfigError(f"condition names {names!r} must be distinct, non-empty and must not include "
                              f"{TRACK_CONDITION!r} (reserved for the track row).")
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim={embedding_dim!r} must be >= 1.")
        if mask_l1 < 0:
            raise ConfigError(f"mask_l1={mask_l1!r} must be >= 0 (config value loss.mask_l1).")
        self.names = names
        self.embedding_dim = int(embedding_dim)
        self.mode = mode
        self.mask_l1 = float(mask_l1)
        self.seed = seed
        self.slices = self._resolve_slices(slices)

        num = len(names)
        if mode == "learned":
            self.mask_weights = self.add_weight(
                name="mask_weights", shape=(num, self.embedding_dim),
                initializer=keras.initializers.RandomNormal(LEARNED_INIT_MEAN, LEARNED_INIT_STDDEV, seed=seed),
                trainable=True)
        else:
            self._constant = self._constant_masks()
        self.built = True  # nothing depends on the input shape

    def _resolve_slices(self, slices: Optional[Mapping[str, Sequence[int]]]) -> Dict[str, Tuple[int, int]]:
        if slices is None:
            if self.embedding_dim % len(self.names):
                raise ConfigError(f"embedding_dim={self.embedding_dim} is not a multiple of the "
                                  f"{len(self.names)} conditions; give explicit slices.")
            d = self.embedding_dim // len(self.names)
            return {n: (i * d, (i + 1) * d) for i, n in enumerate(self.names)}
        missing = [n for n in self.names if n not in slices]
        if missing:
            raise ConfigError(f"no mask slice given for condition(s) {missing}; slices has {sorted(slices)}.")
        out = {}
        for n in self.names:
            start, stop = (int(v) for v in slices[n])
            if not 0 <= start < stop <= self.embedding_dim:
                raise ConfigError(f"slice of condition {n!r} is ({start}, {stop}); expected "
                                  f"0 <= start < stop <= embedding_dim={self.embedding_dim}.")
            out[n] = (start, stop)
        return out

    def _constant_masks(self) -> np.ndarray:
        num, dim = len(self.names), self.embedding_dim
        if self.mode == "none":
            rows = np.ones((num, dim), np.float32)
        else:
            rows = np.zeros((num, dim), np.float32)
            for i, n in enumerate(self.names):
                start, stop = self.slices[n]
                rows[i, start:stop] = 1.0
        return np.concatenate([rows, np.ones((1, dim), np.float32)], axis=0)

    @property
    def num_conditions(self) -> int:
        """``C``, not counting the track row."""
        return len(self.names)

    def mask_matrix(self):
        """The masks, float32 ``[C + 1, D]``, values >= 0; row ``C`` is all ones."""
        if self.mode != "learned":
            return ops.convert_to_tensor(self._constant)
        track = ops.ones((1, self.embedding_dim), dtype=self.mask_weights.dtype)
        return ops.concatenate([ops.relu(self.mask_weights), track], axis=0)

    def penalty(self):
        """``mask_l1 * sum |m|`` over the learned condition masks (CSN); 0 otherwise.

        CSN takes the L1 norm of the mask weights; ours is the norm of the masks as
        used (after ReLU), which is the same on active entries and leaves dead
        (negative) weights alone rather than pulling them back to 0.
        """
        if self.mode != "learned" or self.mask_l1 == 0:
            return ops.convert_to_tensor(0.0)
        return self.mask_l1 * ops.sum(ops.relu(self.mask_weights))

    def call(self, embedding):
        return ops.expand_dims(embedding, 1) * ops.expand_dims(ops.cast(self.mask_matrix(), embedding.dtype), 0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_conditions + 1, self.embedding_dim)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(names=list(self.names), embedding_dim=self.embedding_dim, mode=self.mode,
                      slices={n: list(s) for n, s in self.slices.items()}, mask_l1=self.mask_l1, seed=self.seed)
        return config


def build_condition_masks(cfg: Config, name: str = "condition_masks") -> ConditionMasks:
    """The :class:`ConditionMasks` of ``cfg`` (``model.mask_mode``, ``conditions``, ``loss.mask_l1``)."""
    return ConditionMasks(names=cfg.conditions.names, embedding_dim=cfg.conditions.embedding_dim,
                          mode=cfg.model.mask_mode, slices=cfg.conditions.slices, mask_l1=cfg.loss.mask_l1,
                          seed=cfg.data.seed, name=name)
