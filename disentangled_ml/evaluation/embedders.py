"""Embedders: anything that maps waveform crops to embeddings, behind one call.

An *embedder* is a callable ``f(waveforms) -> embeddings`` with waveforms
float32 ``[b, segment_samples]`` in [-1, 1] at the run's sample rate and
embeddings float ``[b, D]``. The evaluation only ever calls that, so a trained
Keras model, an export (docs/design.md, contract 2), a baseline or a test's fake all
score the same way.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from disentangled_ml.config import Config

__all__ = ["KerasEmbedder", "SavedModelEmbedder", "load_embedder", "read_export_config", "EvaluationError",
           "EMBEDDING_KEY"]

#: Output name carrying the embedding (docs/design.md, contract 2).
EMBEDDING_KEY = "embedding"


class EvaluationError(RuntimeError):
    """The evaluation cannot run; the message names the file or value and what to do."""


def _select_embedding(out: Any, who: str) -> np.ndarray:
    if isinstance(out, dict):
        if EMBEDDING_KEY not in out:
            raise EvaluationError(f"{who} returns outputs {sorted(out)}, none called {EMBEDDING_KEY!r} "
                                  "(docs/design.md, contract 2).")
        out = out[EMBEDDING_KEY]
    return np.asarray(out, dtype=np.float32)


class KerasEmbedder:
    """A Keras model ``waveform [b, samples] -> {"embedding": [b, D]}`` (or a bare tensor).

    Args:
        model: a ``keras.Model``, e.g. the run's ``embedding.keras`` or
            ``build_embedding_model(cfg, waveform_input=True)``.
        batch_size: crops per forward pass (larger inputs are split).
    """

    def __init__(self, model: Any, batch_size: int = 64) -> None:
        self.model = model
        self.batch_size = int(batch_size)

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        x = np.asarray(waveforms, dtype=np.float32)
        outs = [_select_embedding(self.model.predict_on_batch(x[i:i + self.batch_size]), f"model {self.model.name}")
                for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs, axis=0)


class SavedModelEmbedder:
    """An export's ``saved_model/`` through its ``serving_default`` signature.

    The signature takes one float32 ``[batch, samples]`` waveform input (whatever it is
    called; ``model.export`` names it after the Keras input, e.g. ``audio``) and
    returns a dict with ``"embedding"`` (docs/design.md, contract 2).

    Args:
        path: the ``saved_model`` directory.
        batch_size: crops per call.

    Raises:
        EvaluationError: no ``serving_default`` signature, or not one float32 rank-2 input.
    """

    def __init__(self, path: str, batch_size: int = 64) -> None:
        import tensorflow as tf

        self.path = path
        self.batch_size = int(batch_size)
        try:
            self._loaded = tf.saved_model.load(path)
        except Exception as e:  # TF raises several types for unreadable SavedModels
            raise EvaluationError(f"{path}: cannot be loaded as a SavedModel ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}).") from e
        sigs = getattr(self._loaded, "signatures", {})
        if "serving_default" not in sigs:
            raise EvaluationError(f"{path}: has no 'serving_default' signature (found {sorted(sigs)}); "
                                  "re-export it as docs/design.md, contract 2, describes.")
        self._fn = sigs["serving_default"]
        _, kwargs = self._fn.structured_input_signature
        if len(kwargs) != 1:
            raise EvaluationError(f"{path}: serving_default takes inputs {sorted(kwargs)}; the contract is one "
                                  "float32 waveform [batch, samples].")
        (self.input_name, spec), = kwargs.items()
        if spec.dtype != tf.float32 or spec.shape.rank != 2:
            raise EvaluationError(f"{path}: serving_default input {self.input_name!r} is {spec.dtype.name} "
                                  f"{spec.shape}; the contract is float32 [batch, samples].")
        self.input_samples: Optional[int] = spec.shape[1]
        self._tf = tf

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        x = np.asarray(waveforms, dtype=np.float32)
        outs = []
        for i in range(0, len(x), self.batch_size):
            out = self._fn(**{self.input_name: self._tf.constant(x[i:i + self.batch_size])})
            outs.append(_select_embedding({k: v.numpy() for k, v in out.items()}, f"SavedModel {self.path}"))
        return np.concatenate(outs, axis=0)


def read_export_config(export_dir: str) -> Dict[str, Any]:
    """``EXPORT_DIR/config.json`` as a dict, or ``{}`` when the file is absent."""
    path = os.path.join(export_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EvaluationError(f"{path} is not valid JSON: {e}") from e


def load_embedder(path: str, batch_size: int = 64, config: Optional[Config] = None) -> Tuple[Any, str, Dict[str, Any]]:
    """Load a model to evaluate from a ``.keras`` file or an export directory.

    An export directory is recognised by its ``saved_model/`` folder (docs/design.md,
    contract 2); a ``saved_model`` folder itself is accepted too.

    Args:
        path: ``RUN_DIR/embedding.keras``, another ``.keras`` file (a training
            checkpoint such as ``RUN_DIR/best.keras`` too), ``EXPORT_DIR`` or
            ``EXPORT_DIR/saved_model``.
        batch_size: crops per forward pass.
        config: the run's config, for the frontend of a mel-input ``.keras`` model.

    Returns:
        ``(embedder, kind, export_config)``: kind is ``"keras"`` or ``"saved_model"``;
        export_config is the export's ``config.json`` (``{}`` for a Keras file).

    Raises:
        EvaluationError: the path does not exist or is neither form.
    """
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "saved_model")):
            return SavedModelEmbedder(os.path.join(path, "saved_model"), batch_size), "saved_model", \
                read_export_config(path)
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return SavedModelEmbedder(path, batch_size), "saved_model", read_export_config(os.path.dirname(path))
        raise EvaluationError(f"{path}: a folder without saved_model/; give a .keras file or an export "
                              "directory (docs/design.md, contract 2).")
    if not os.path.isfile(path):
        raise EvaluationError(f"{path}: no such model file; train a run first (dml train) or give --model.")
    import keras

    import disentangled_ml.features  # noqa: F401 - registers the frontend layer for deserialisation
    try:
        import disentangled_ml.models.embedding  # noqa: F401 - registers the model's custom layers
        import disentangled_ml.models.backbones  # noqa: F401
        import disentangled_ml.models.masks  # noqa: F401
    except ImportError:  # an older tree without them can still load plain Keras models
        pass
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:
        raise EvaluationError(f"{path}: cannot be loaded as a Keras model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300]}).") from e
    return KerasEmbedder(_with_waveform_input(model, config, path), batch_size), "keras", {}


def _with_waveform_input(model: Any, config: Optional[Config], path: str) -> Any:
    """A waveform-input view of ``model``.

    ``RUN_DIR/embedding.keras`` already takes audio; a training checkpoint
    (``best.keras``, ``checkpoints/last.keras``: a ``TripletModel``) or a mel-input
    embedding model gets the log-mel frontend of its config in front.
    """
    from disentangled_ml.models.embedding import add_frontend
    from disentangled_ml.models.trainer import TripletModel

    if isinstance(model, TripletModel):
        return add_frontend(model.cfg, model.embedding_model)
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else ()
    if len(shape) == 3:  # [batch, frames, mels]: a mel-input embedding model
        if config is None:
            raise EvaluationError(f"{path} takes log-mel patches {shape}, not audio; evaluate it with the config it "
                                  "was trained with.")
        return add_frontend(config, model)
    return model
