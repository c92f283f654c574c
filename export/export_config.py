"""The export directory's description: ``EXPORT_DIR/config.json`` and ``README.md`` (docs/design.md, contract 2).

:func:`build_export_config` makes the ``config.json`` dict of an export (the
condition entries come from :class:`~disentangled_ml.condition_views.ConditionViews`),
:func:`write_export_config` writes it with the README, and
:func:`load_export_config` reads and checks it; every reader of an export (the
evaluation, ``dml embed`` / ``dml similar``) goes through the latter.

numpy only; TensorFlow is asked only for its version, when an export is made.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Dict, Mapping

from disentangled_ml.condition_views import ConditionViews
from disentangled_ml.export.savedmodel import ExportError, LoadedRun

__all__ = ["FORMAT_VERSION", "CONDITION_OUTPUTS_NOTE", "build_export_config", "write_export_config",
           "load_export_config", "readme"]

#: Version of the export directory layout written to config.json.
FORMAT_VERSION = 1
#: config.json's "condition_outputs_note": what a condition output is, per mask mode.
CONDITION_OUTPUTS_NOTE = {
    "fixed": "its slice of the embedding",
    "learned": "the whole embedding multiplied by the condition's learned mask (condition_masks)",
    "none": "the whole embedding: one global space (mask_mode none)",
}


def load_export_config(export_dir: str) -> Dict[str, Any]:
    """Read and check ``EXPORT_DIR/config.json``.

    Raises:
        ExportError: missing/invalid file, or an export whose parity check failed.
    """
    path = os.path.join(export_dir, "config.json")
    if not os.path.isfile(path):
        raise ExportError(f"{path} does not exist; is {export_dir} an export directory (dml export)?")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    for key in ("sample_rate", "segment_seconds", "embedding_dim", "conditions"):
        if key not in cfg:
            raise ExportError(f"{path} has no {key!r}; it is not an export config (docs/design.md, contract 2).")
    if cfg.get("parity_passed") is False:
        raise ExportError(f"{export_dir} failed its parity check (see {export_dir}/parity.json); re-export it.")
    return cfg


def build_export_config(run: LoadedRun, *, signatures: Mapping[str, Any], files: Mapping[str, Any],
                        int8_full_info: Mapping[str, Any], frozen: bool, parity_passed: bool) -> Dict[str, Any]:
    """The ``config.json`` dict of an export of ``run``.

    Args:
        run: the loaded training run (:func:`~disentangled_ml.export.savedmodel.load_run`).
        signatures: the SavedModel's signatures
            (:func:`~disentangled_ml.export.savedmodel.write_saved_model`).
        files: ``{file name: description}`` of the SavedModel and each ``.tflite`` file.
        int8_full_info: the full-integer model's calibration and float islands ({} when not written).
        frozen: the ``.tflite`` files were converted from a frozen copy of the SavedModel.
        parity_passed: every enforced variant matched Keras.

    Returns:
        The dict, in the key order written: the audio interface, ``conditions``
        (``{name: [start, stop]}``), ``condition_names``, ``mask_mode``, the frontend,
        model, versions, the training config, signatures, files, and for learned masks
        ``condition_masks`` last.
    """
    import tensorflow as tf

    from disentangled_ml import __version__
    from disentangled_ml.models.embedding import normalisation_groups

    cfg, fe, wf = run.config, run.config.frontend, run.waveform_model
    views = ConditionViews.from_config(cfg, run.masks).to_export_config()
    mode = views["mask_mode"]
    config: Dict[str, Any] = {
        "format": "disentangled_ml.export", "format_version": FORMAT_VERSION,
        "sample_rate": fe.sample_rate, "segment_seconds": fe.segment_seconds,
        "segment_samples": fe.segment_samples, "num_frames": fe.num_frames, "n_mels": fe.n_mels,
        "n_bands": fe.n_bands, "n_pitch_bands": fe.n_pitch_bands,
        "embedding_dim": cfg.conditions.embedding_dim, "conditions": views["conditions"],
        "condition_names": list(views["conditions"]),
        "mask_mode": mode, "condition_outputs_note": CONDITION_OUTPUTS_NOTE[mode],
        # 1: the embedding has unit norm; G > 1: each of G equal slices has norm 1/sqrt(G) (model.slice_norm)
        "normalisation_groups": normalisation_groups(cfg),
        # resolved: the pitch decimation factor in use, where the training config may say null (auto)
        "frontend": {**dataclasses.asdict(fe.resolved()), "mel_fmax": fe.mel_fmax, "center": False,
                     "window": "hann (periodic)", "mel_scale": "slaney", "compression": "log10(1 + log_multiplier * S)",
                     "standardisation": "(x - norm_mean) / norm_std",
                     "pitch_filterbank": "madmom LogarithmicFilterbank (A4 = 440 Hz, unit-area triangles, merged "
                                         "duplicates) on a pitch_n_fft periodic-Hann STFT of the waveform zero-padded "
                                         "by (pitch_n_fft - n_fft) / 2 at each end, same hop; 0 bands per octave = "
                                         "none; pitch_decimation d > 1: that waveform low-passed (Kaiser FIR, 60 dB "
                                         "down from sample_rate / d - pitch_fmax) and kept at every d-th sample, then "
                                         "a pitch_n_fft / d STFT with hop / d, power times d ** power"},
        "model": {"name": wf.name, "backbone": cfg.model.backbone, "width": cfg.model.width,
                  "parameters": int(wf.count_params()), "source": run.model_path},
        "package": {"name": "disentangled_ml", "version": __version__},
        "version": __version__,
        "tensorflow": tf.__version__,
        "training_config_hash": cfg.hash(),
        "training_config": cfg.to_dict(),
        "signatures": signatures,
        "files": files,
        "int8_full": int8_full_info or None,
        "tflite_from_frozen_variables": frozen,
        "parity_passed": parity_passed,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if "condition_masks" in views:
        config["condition_masks"] = views["condition_masks"]
    return config


def write_export_config(out_dir: str, config: Mapping[str, Any]) -> None:
    """Write ``config`` as ``OUT_DIR/config.json`` and its :func:`readme` as ``OUT_DIR/README.md``."""
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(readme(config))


def readme(config: Mapping[str, Any]) -> str:
    """The export's ``README.md``: what the files are and how to call them."""
    conds = ", ".join(f"`{n}` {v}" for n, v in config["conditions"].items())
    lines = [
        "# disentangled_ml export",
        "",
        f"Input: mono waveform, float32 `[batch, {config['segment_samples']}]` in [-1, 1] at "
        f"{config['sample_rate']} Hz ({config['segment_seconds']} s). The frontend (log-mel, then pitch bands) "
        "is inside every model.",
        f"Outputs: `embedding` float32 `[batch, {config['embedding_dim']}]` (unit L2 norm) and one output per "
        f"condition ({config['condition_outputs_note']}). Condition dimensions: {conds}.",
        "Similarity: Euclidean distance on a condition's output (or the whole embedding).",
        "",
        "- `saved_model/`: signatures `serving_default` (input `audio`) and `log_mel` (input `log_mel`, "
        "`[batch, frames, n_bands]`, the frontend's output: `n_mels` mel bands then `n_pitch_bands` pitch bands).",
    ]
    for name, f in config["files"].items():
        if name.endswith(".tflite"):
            lines.append(f"- `{name}`: {f['quantization']} ({f['size_bytes']} bytes).")
    lines += [
        "- `parity.json`: every variant against the Keras model (max |diff|, min cosine, triplet accuracy), "
        "and the export's wall time per stage (`timing`).",
        "",
        "TFLite: use the signature runner, which maps the names above to tensors "
        "(`Interpreter(model_path).get_signature_runner()(audio=x)`); runs with `ai-edge-litert` alone.",
        "In `model_int8_full.tflite` the STFT, power spectrum, mel filterbank and log stay float32 between "
        "QUANTIZE/DEQUANTIZE ops, as does the L2-normalised output head; the convolutions run in int8.",
        "",
    ]
    return "\n".join(lines)
