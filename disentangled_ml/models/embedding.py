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

__all__ = ["L2Normalize", "build_embedding_model", "add_frontend", "slice_outputs",
           "EMBEDDING_OUTPUT", "RAW_OUTPUT"]

#: Output names of the embedding model (and of the export signature, docs/design.md, contract 2).
EMBEDDING_OUTPUT = "embedding"
#: The un-normalised backbone output, for CSN's embedding-norm penalty.
RAW_OUTPUT = "raw_embedding"


@keras.saving.register_keras_serializable(package="disentangled_ml")
class L2Normalize(keras.layers.Layer):
    """``x / max(||x||, sqrt(epsilon))`` along the last axis (like ``tf.math.l2_normalize``).

    Written with ``keras.ops`` (square, sum, maximum, rsqrt, multiply), which
    convert to TFLite builtins; a layer rather than a ``Lambda`` so saved models load
    without ``safe_mode=False``.

    Args:
        epsilon: lower bound on the squared norm (keeps an all-zero vector finite).
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x):
        sq = ops.sum(ops.square(x), axis=-1, keepdims=True)
        return x * ops.rsqrt(ops.maximum(sq, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


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

        * ``"embedding"``: float32 ``[batch, embedding_dim]``, unit L2 norm;
        * ``"raw_embedding"``: float32 ``[batch, embedding_dim]``, the backbone output
          before normalisation.
    """
    frames, mels = cfg.frontend.num_frames, cfg.frontend.n_bands
    inputs = keras.Input((frames, mels), name="mel")
    raw = build_backbone(cfg)(inputs)
    embedding = L2Normalize(name=EMBEDDING_OUTPUT)(raw)
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
