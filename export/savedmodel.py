"""Load a trained run and write it as a SavedModel with the mel frontend inside.

The SavedModel is the server-side half of docs/design.md, contract 2. It has two
signatures, both with explicit input and output names (clients look tensors up
by name, and auto-generated names such as ``StatefulPartitionedCall:0`` break
them):

* ``serving_default``: ``audio`` float32 ``[batch, segment_samples]`` (mono, in
  [-1, 1], at ``sample_rate`` Hz) -> outputs below;
* ``log_mel``: ``log_mel`` float32 ``[batch, num_frames, n_bands]`` (the
  compressed, standardised log-mel of :func:`disentangled_ml.features.log_mel`)
  -> the same outputs, for clients that compute features themselves.

Outputs: ``embedding`` float32 ``[batch, embedding_dim]`` (unit L2 norm) and one
output per condition, named after it (``genre``, ``mood``, ...):

* ``mask_mode="fixed"``: the condition's slice ``embedding[:, start:stop]``;
* ``"learned"``: the masked full vector ``embedding * mask`` ``[batch, D]``;
* ``"none"``: the whole embedding (one global space).

Distances are Euclidean on a condition output.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

from disentangled_ml.condition_views import ConditionViews
from disentangled_ml.config import Config, ConfigError
from disentangled_ml.run_directory import RunDirectory

log = logging.getLogger(__name__)

__all__ = ["ExportError", "LoadedRun", "load_run", "condition_heads", "write_saved_model",
           "SERVING_SIGNATURE", "MEL_SIGNATURE", "AUDIO_INPUT", "MEL_INPUT", "EMBEDDING_OUTPUT"]

SERVING_SIGNATURE = "serving_default"
MEL_SIGNATURE = "log_mel"
AUDIO_INPUT = "audio"
MEL_INPUT = "log_mel"
EMBEDDING_OUTPUT = "embedding"


class ExportError(RuntimeError):
    """The export cannot be made or failed its checks; the message names the file or value."""


@dataclass
class LoadedRun:
    """A trained network and what the export needs to know about it.

    Attributes:
        config: the run's :class:`Config` (frontend statistics filled in).
        waveform_model: ``audio [B, segment_samples] -> {"embedding", "raw_embedding"}``.
        mel_model: ``mel [B, num_frames, n_bands] -> {"embedding", "raw_embedding"}``,
            sharing ``waveform_model``'s weights.
        frontend_layer_name: name of the :class:`LogMelSpectrogram` layer inside
            ``waveform_model`` (its ops stay float in the full-integer TFLite model).
        masks: the condition mask matrix, float32 ``[C + 1, D]``.
        model_path: the ``.keras`` file the network was read from.
        run_dir: the training run directory (for a ``.keras`` file, the folder it is in), absolute.
    """

    config: Config
    waveform_model: Any
    mel_model: Any
    frontend_layer_name: str
    masks: np.ndarray
    model_path: str
    run_dir: str


def _import_keras():
    import keras

    import disentangled_ml.models  # noqa: F401 - registers every custom layer before load_model
    return keras


def _split_waveform_model(keras, model) -> Tuple[Any, str]:
    """``(mel_model, frontend_layer_name)`` of a waveform model made by ``add_frontend``."""
    from disentangled_ml.features import LogMelSpectrogram

    fronts = [l for l in model.layers if isinstance(l, LogMelSpectrogram)]
    inner = [l for l in model.layers if isinstance(l, keras.Model)]
    if len(fronts) != 1 or len(inner) != 1:
        raise ExportError(f"model {model.name!r} is not audio -> LogMelSpectrogram -> embedding model (found "
                          f"{len(fronts)} frontend layer(s) and {len(inner)} nested model(s)); export "
                          "RUN_DIR/embedding.keras or RUN_DIR/best.keras as written by dml train.")
    return inner[0], fronts[0].name


def _check_frontend(config: Config, layer_frontend, where: str) -> None:
    # resolved: the layer records the pitch decimation factor that config.json may leave to the auto rule
    layer_frontend, config_frontend = layer_frontend.resolved(), config.frontend.resolved()
    if layer_frontend != config_frontend:
        diff = {f.name: (getattr(layer_frontend, f.name), getattr(config_frontend, f.name))
                for f in dataclasses.fields(config_frontend)
                if getattr(layer_frontend, f.name) != getattr(config_frontend, f.name)}
        raise ExportError(f"{where}: the model's log-mel frontend differs from config.json "
                          f"(field: (model, config) = {diff}); export the run with the config it was trained with.")


def load_run(path: str) -> LoadedRun:
    """Load a trained network for export.

    Args:
        path: a training run directory (``dml train``: ``config.json`` plus
            ``embedding.keras`` or ``best.keras``, and ``masks.npy`` for learned
            masks), or a ``.keras`` file next to such a ``config.json``. A
            ``TripletModel`` file (``best.keras``) carries its own config.

    Returns:
        :class:`LoadedRun`.

    Raises:
        ExportError: missing files, a model of the wrong shape, or a frontend that
            does not match ``config.json``.
    """
    keras = _import_keras()
    from disentangled_ml.models.embedding import add_frontend
    from disentangled_ml.models.trainer import TripletModel

    if os.path.isdir(path):
        run_dir = RunDirectory(path)
        model_path = next((p for p in (run_dir.embedding_model_path, run_dir.best_model_path) if os.path.isfile(p)),
                          None)
        if model_path is None:
            raise ExportError(f"{path} holds neither embedding.keras nor best.keras; is it a training run "
                              "directory (dml train)? Or pass the .keras file itself.")
    elif os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ExportError(f"{path}: expected a run directory or a .keras file.")
        model_path, run_dir = path, RunDirectory(os.path.dirname(os.path.abspath(path)))
    else:
        raise ExportError(f"{path}: no such run directory or .keras file.")

    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises several types for unreadable archives
        raise ExportError(f"{model_path}: cannot be loaded as a Keras model ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300]}).") from e

    config_path = run_dir.config_path
    masks = None
    if isinstance(model, TripletModel):
        config = model.cfg
        if os.path.isfile(config_path) and Config.from_json(config_path).hash() != config.hash():
            raise ExportError(f"{model_path} was trained with a config that differs from {config_path}.")
        mel_model = model.embedding_model
        masks = keras.ops.convert_to_numpy(model.condition_masks.mask_matrix()).astype(np.float32)
        waveform_model = add_frontend(config, mel_model)
        frontend_name = "log_mel"
    else:
        if not os.path.isfile(config_path):
            raise ExportError(f"{config_path} does not exist: the export needs the run's config (frontend, "
                              "conditions); export the run directory written by dml train.")
        try:
            config = Config.from_json(config_path)
        except ConfigError as e:
            raise ExportError(str(e)) from None
        waveform_model = model
        mel_model, frontend_name = _split_waveform_model(keras, model)
        _check_frontend(config, model.get_layer(frontend_name).frontend, model_path)

    expected_in = (None, config.frontend.segment_samples)
    if tuple(waveform_model.input_shape) != expected_in:
        raise ExportError(f"{model_path}: the model takes {waveform_model.input_shape}, the config's segment is "
                          f"{expected_in}.")

    mask_path = run_dir.masks_path
    if masks is None and os.path.isfile(mask_path):
        masks = run_dir.read_masks()
    if masks is None:
        if config.model.mask_mode == "learned":
            raise ExportError(f"{mask_path} does not exist: a run with learned masks needs its mask matrix "
                              "(dml train writes it); or export best.keras, which carries the masks.")
        from disentangled_ml.models.masks import build_condition_masks

        masks = keras.ops.convert_to_numpy(build_condition_masks(config).mask_matrix()).astype(np.float32)
    c, d = len(config.conditions.names), config.conditions.embedding_dim
    if masks.ndim != 2 or masks.shape[1] != d or masks.shape[0] not in (c, c + 1):
        raise ExportError(f"{mask_path}: mask matrix of shape {masks.shape}; expected [{c + 1}, {d}].")
    return LoadedRun(config=config, waveform_model=waveform_model, mel_model=mel_model,
                     frontend_layer_name=frontend_name, masks=masks, model_path=os.path.abspath(model_path),
                     run_dir=os.path.abspath(run_dir.path))


def condition_heads(config: Config, masks: np.ndarray) -> Dict[str, Dict[str, Any]]:
    """How each condition output is cut from the embedding: the run's
    :class:`~disentangled_ml.condition_views.ConditionViews` as graph-building recipes.

    Returns:
        ``{condition: head}`` in ``config.conditions.names`` order, where head is
        ``{"kind": "slice", "start": a, "stop": b}`` (fixed masks),
        ``{"kind": "masked", "mask": float32 [D]}`` (learned) or
        ``{"kind": "whole"}`` (no masks).
    """
    views = ConditionViews.from_config(config, masks)
    heads: Dict[str, Dict[str, Any]] = {}
    for name, (start, stop) in views.slices.items():
        if views.mode == "fixed":
            heads[name] = {"kind": "slice", "start": start, "stop": stop}
        elif views.mode == "learned":
            heads[name] = {"kind": "masked", "mask": views.weight(name)}
        else:
            heads[name] = {"kind": "whole"}
    return heads


def apply_heads(embedding: Any, heads: Dict[str, Dict[str, Any]], xp: Any = np) -> Dict[str, Any]:
    """``{"embedding": e, condition: head(e)}`` with numpy (``xp=np``) or TensorFlow (``xp=tf``) ops."""
    out = {EMBEDDING_OUTPUT: embedding}
    for name, head in heads.items():
        if head["kind"] == "slice":
            out[name] = embedding[:, head["start"]:head["stop"]]
        elif head["kind"] == "masked":
            out[name] = embedding * (xp.constant(head["mask"]) if xp is not np else head["mask"])
        else:
            # A distinct tensor per output: signature outputs that alias one tensor
            # do not survive the TFLite conversion under their own names.
            out[name] = xp.identity(embedding) if xp is not np else embedding
    return out


#: Layers that stay float in the full-integer model besides the frontend: the onset branch
#: divides an autocorrelation by its lag-0 energy, a ratio of small differences of the
#: log-mel that int8 calibration ranges flatten (cosine to the float model fell below 0.9);
#: the harmony branch's pitch-class profile divides each frame's profile by its length, the same kind of ratio;
#: "embedding" is the L2Normalize head, whose per-slice form (model.slice_norm) is a reshape, an L2
#: normalisation and a constant scale rather than the one output op the quantiser left float by itself.
FLOAT_LAYERS = ("onset_autocorrelation", "pitch_class_profile", "embedding")


def frontend_node_pattern(frontend_layer_name: str) -> "re.Pattern[str]":
    """Regex matching graph node names inside the frontend layer (``.../log_mel_1/...``) or
    inside one of :data:`FLOAT_LAYERS`: the nodes the full-integer model keeps float."""
    names = "|".join(re.escape(n) for n in (frontend_layer_name,) + FLOAT_LAYERS)
    return re.compile(rf"(^|/)({names})(_\d+)?/")


def write_saved_model(run: LoadedRun, out_dir: str) -> Dict[str, Any]:
    """Write ``run`` as a SavedModel with the ``serving_default`` and ``log_mel`` signatures.

    Args:
        run: from :func:`load_run`.
        out_dir: the ``saved_model`` folder to create (must not exist).

    Returns:
        The signature description written to the export's ``config.json``:
        ``{signature: {"inputs": {name: {"dtype", "shape"}}, "outputs": {name: {...}}}}``.
    """
    import keras
    import tensorflow as tf

    fe, cfg = run.config.frontend, run.config
    heads = condition_heads(cfg, run.masks)
    waveform_model, mel_model = run.waveform_model, run.mel_model

    @tf.function(input_signature=[tf.TensorSpec([None, fe.segment_samples], tf.float32, name=AUDIO_INPUT)])
    def serve(audio):
        return apply_heads(waveform_model(audio, training=False)[EMBEDDING_OUTPUT], heads, tf)

    @tf.function(input_signature=[tf.TensorSpec([None, fe.num_frames, fe.n_bands], tf.float32, name=MEL_INPUT)])
    def from_mel(log_mel):
        return apply_heads(mel_model(log_mel, training=False)[EMBEDDING_OUTPUT], heads, tf)

    # ExportArchive (what model.export uses) tracks the Keras variables and lets us
    # add a second endpoint; the signature names come from the TensorSpec names and
    # the dict keys above.
    archive = keras.export.ExportArchive()
    archive.track(waveform_model)
    archive.add_endpoint(SERVING_SIGNATURE, serve)
    archive.add_endpoint(MEL_SIGNATURE, from_mel)
    archive.write_out(out_dir, verbose=False)

    dim = cfg.conditions.embedding_dim
    outputs = {EMBEDDING_OUTPUT: {"dtype": "float32", "shape": [None, dim]}}
    for name, head in heads.items():
        width = head["stop"] - head["start"] if head["kind"] == "slice" else dim
        outputs[name] = {"dtype": "float32", "shape": [None, width]}
    return {
        SERVING_SIGNATURE: {"inputs": {AUDIO_INPUT: {"dtype": "float32", "shape": [None, fe.segment_samples]}},
                            "outputs": outputs},
        MEL_SIGNATURE: {"inputs": {MEL_INPUT: {"dtype": "float32", "shape": [None, fe.num_frames, fe.n_bands]}},
                        "outputs": outputs},
    }
