"""The embedding model: log-mel (or waveform) -> backbone -> L2-normalised embedding.

This is the network every later stage uses: the trainer wraps it, the export puts the
mel frontend in front of it (:func:`add_frontend`) and names the outputs, and
:func:`slice_outputs` cuts the per-condition sub-spaces out of the embedding.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import keras
from keras import ops

from disentangled_ml.condition_views import ConditionViews
from disentangled_ml.config import Config, ConfigError
from disentangled_ml.models.backbones import build_backbone

__all__ = ["L2Normalize", "normalisation_groups", "build_embedding_model", "add_frontend", "slice_outputs",
           "EMBEDDING_OUTPUT", "RAW_OUTPUT"]

#: Output names of the embedding model (and of the export signature, docs/design.md, contract 2).
EMBEDDING_OUTPUT = "embedding"
#: The un-normalised backbone output, for CSN's embedding-norm penalty.
RAW_OUTPUT = "raw_embedding"


@keras.saving.register_keras_serializable(package="disentangled_ml")
class L2Normalize(keras.layers.Layer):
    """``x / max(||x||, sqrt(epsilon))`` along the last axis (like ``tf.math.l2_normalize``),
    or, with ``groups > 1``, each of ``groups`` equal parts of it scaled to norm ``1/sqrt(groups)``.

    Either way the whole vector has unit norm. With groups, every condition's slice lives on a
    sphere of the same radius (0.5 for four conditions), so a slice's distances, and the triplet
    margin measured in them, mean the same in every condition, and one condition cannot take the
    norm the others need (``model.slice_norm``, :mod:`disentangled_ml.config`).

    Written with ``keras.ops`` (reshape, square, sum, maximum, rsqrt, multiply), which
    convert to TFLite builtins; a layer rather than a ``Lambda`` so saved models load
    without ``safe_mode=False``.

    Args:
        epsilon: lower bound on the squared norm (keeps an all-zero vector finite).
        groups: equal parts of the last axis normalised separately (1: the whole vector).
    """

    def __init__(self, epsilon: float = 1e-12, groups: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.groups = int(groups)
        if self.groups < 1:
            raise ValueError(f"L2Normalize: groups={groups} must be >= 1.")

    def call(self, x):
        if self.groups == 1:
            sq = ops.sum(ops.square(x), axis=-1, keepdims=True)
            return x * ops.rsqrt(ops.maximum(sq, self.epsilon))
        dim = x.shape[-1]
        parts = ops.reshape(x, (-1, self.groups, dim // self.groups))
        sq = ops.sum(ops.square(parts), axis=-1, keepdims=True)
        # the same x * rsqrt(max(sum(x^2), eps)) as above, so TFLite fuses it into L2_NORMALIZATION
        # over each group; the constant radius comes after
        parts = parts * ops.rsqrt(ops.maximum(sq, self.epsilon))
        return ops.reshape(parts * (1.0 / self.groups ** 0.5), (-1, dim))

    def build(self, input_shape):
        dim = input_shape[-1]
        if self.groups > 1 and (dim is None or dim % self.groups):
            raise ValueError(f"L2Normalize: {dim} features do not split into {self.groups} equal groups.")
        super().build(input_shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update(epsilon=self.epsilon, groups=self.groups)
        return config


def normalisation_groups(cfg: Config) -> int:
    """Parts of the embedding normalised separately: one per condition with ``model.slice_norm``
    and fixed slices, else 1 (learned masks and ``none`` share the whole vector)."""
    if cfg.model.slice_norm and cfg.model.mask_mode == "fixed":
        return len(cfg.conditions.names)
    return 1


def build_embedding_model(cfg: Config, waveform_input: bool = False, name: str = "embedding_model") -> keras.Model:
    """Build the embedding network of ``cfg`` (fresh weights).

    Args:
        cfg: the project configuration (frontend shape, ``model.*``,
            ``conditions.embedding_dim``).
        waveform_input: take raw audio and compute the log-mel inside the model
            (:class:`disentangled_ml.features.LogMelSpectrogram`), as the export does.
        name: the Keras model name.

    Returns:
        keras.Model with input

        * ``"mel"``: float32 ``[batch, num_frames, n_bands]`` (log-mel, then pitch bands), or with
          ``waveform_input`` ``"audio"``: float32 ``[batch, segment_samples]`` in [-1, 1]
          at ``frontend.sample_rate`` Hz;

        and dict outputs

        * ``"embedding"``: float32 ``[batch, embedding_dim]``, unit L2 norm (with
          ``model.slice_norm`` and fixed masks, each condition's slice has norm
          ``1/sqrt(conditions)``);
        * ``"raw_embedding"``: float32 ``[batch, embedding_dim]``, the backbone output
          before normalisation.
    """
    frames, mels = cfg.frontend.num_frames, cfg.frontend.n_bands
    inputs = keras.Input((frames, mels), name="mel")
    raw = build_backbone(cfg)(inputs)
    embedding = L2Normalize(groups=normalisation_groups(cfg), name=EMBEDDING_OUTPUT)(raw)
    model = keras.Model(inputs, {EMBEDDING_OUTPUT: embedding, RAW_OUTPUT: raw}, name=name)
    if waveform_input:
        return add_frontend(cfg, model, name=name)
    return model


def add_frontend(cfg: Config, embedding_model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """Put the log-mel frontend in front of a mel-input embedding model.

    The returned model shares ``embedding_model``'s layers (and so its trained
    weights); use it to export a trained network with the waveform contract.

    Args:
        cfg: the configuration ``embedding_model`` was built with.
        embedding_model: a model from :func:`build_embedding_model` (mel input).
        name: the new model's name (default: ``embedding_model.name + "_audio"``).

    Returns:
        keras.Model: input ``"audio"`` float32 ``[batch, segment_samples]``, the same
        dict outputs as ``embedding_model``.
    """
    from disentangled_ml.features import LogMelSpectrogram  # the frontend is only needed here

    expected = (None, cfg.frontend.num_frames, cfg.frontend.n_bands)
    if tuple(embedding_model.input_shape) != expected:
        raise ConfigError(f"add_frontend: the embedding model takes {embedding_model.input_shape}, but the "
                          f"config's frontend gives {expected}; build both from the same Config.")
    audio = keras.Input((cfg.frontend.segment_samples,), name="audio")
    mel = LogMelSpectrogram.from_frontend(cfg.frontend, name="log_mel")(audio)
    return keras.Model(audio, embedding_model(mel), name=name or f"{embedding_model.name}_audio")


def slice_outputs(cfg: Config, embedding, masks=None) -> Dict[str, Any]:
    """The per-condition views of an embedding: ``{condition: tensor}``.

    The views are :class:`disentangled_ml.condition_views.ConditionViews`'s.

    Args:
        cfg: the configuration (``conditions``, ``model.mask_mode``).
        embedding: ``[batch, embedding_dim]`` (numpy array, tensor or symbolic
            ``KerasTensor``).
        masks: the ``[C + 1, D]`` mask matrix; required for ``mask_mode="learned"``.

    Returns:
        dict in ``cfg.conditions.names`` order:

        * ``"fixed"``: ``embedding[:, start:stop]``, ``[batch, slice_dim]`` (the
          export contract: distances are Euclidean on a condition's slice);
        * ``"none"``: the whole embedding for every condition;
        * ``"learned"``: ``embedding * masks[c]``, ``[batch, embedding_dim]``.

    Raises:
        ConfigError: ``"learned"`` without ``masks`` (or with a misshapen matrix).
    """
    return ConditionViews.from_config(cfg, masks).apply_all(embedding)
