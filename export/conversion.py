"""The ``.tflite`` files of an export: each variant converted from the SavedModel, checked and described.

:func:`convert_variants` runs :func:`~disentangled_ml.export.tflite.convert_variant`
for every variant, falls back to a frozen copy of the SavedModel when LiteRT returns
NaN (docs/design.md), checks each file's signature and describes it for
``config.json``. TensorFlow is imported by the conversion functions only.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from disentangled_ml.export.savedmodel import ExportError, LoadedRun

log = logging.getLogger(__name__)

__all__ = ["convert_variants", "INT8_FULL_FLOAT_ISLANDS"]

#: What stays float in ``model_int8_full.tflite`` (config.json's ``int8_full.float_islands``).
INT8_FULL_FLOAT_ISLANDS = [
    "frontend: frame, window, DFT (two matmuls), power, mel and pitch matrices, log, standardisation",
    "onset branch (if any): spectral flux and its autocorrelation",
    "output head: L2 normalisation and condition outputs"]


def convert_variants(run: LoadedRun, saved_model_dir: str, out_dir: str, variants: Sequence[Any],
                     output_names: Sequence[str], calibration: Callable[[], Tuple[np.ndarray, Dict[str, Any]]],
                     lap: Callable[[str], None]) -> Tuple[Dict[str, Any], Dict[str, Any], bool]:
    """Convert ``saved_model_dir`` into each of ``variants`` and write the files to ``out_dir``.

    Args:
        run: the loaded run (frontend, frontend layer name).
        saved_model_dir: the export's SavedModel.
        out_dir: the export directory (``<variant.filename>`` files are written there).
        variants: :class:`~disentangled_ml.export.tflite.TFLiteVariant` s, in conversion order
            (float32 first: the full-integer model reuses its float graph).
        output_names: the outputs every file's signature must have (``embedding`` and the conditions).
        calibration: ``() -> (segments float32 [n, segment_samples], description)``, called
            once, for the full-integer variant only.
        lap: ``lap(stage)`` records the wall time since the previous stage
            (``calibration_audio``, ``convert_<variant>``).

    Returns:
        ``(files, int8_full_info, frozen)``: ``{file name: description}`` for config.json,
        the full-integer model's calibration and float islands ({} when not converted), and
        whether the files came from a frozen copy of the SavedModel.

    Raises:
        ExportError: a conversion failed, a file returns NaN even from frozen variables,
            or a signature lacks an output.
    """
    from disentangled_ml.export import savedmodel as sm
    from disentangled_ml.export import tflite as tfl
    from disentangled_ml.features import frontend_matmul_weights

    fe = run.config.frontend
    files: Dict[str, Any] = {}
    int8_full_info: Dict[str, Any] = {}
    calib_info = None
    float_content: Optional[bytes] = None
    tflite_source = saved_model_dir  # replaced by a frozen copy if LiteRT returns NaN
    for v in variants:
        log.info("converting %s", v.filename)
        kwargs: Dict[str, Any] = {}
        if v.name == "int8_full":
            calib, calib_info = calibration()
            lap("calibration_audio")

            def representative(calib=calib):
                for row in calib:
                    yield {sm.AUDIO_INPUT: row[None, :]}
            kwargs = {"representative": representative, "input_samples": fe.segment_samples,
                      "float_node_pattern": sm.frontend_node_pattern(run.frontend_layer_name)}
        if v.name == "int8_full" and float_content is not None:
            kwargs["float_model"] = float_content
        if v.name == "int8":
            kwargs["frontend_weights"] = frontend_matmul_weights(fe)
        try:
            result = tfl.convert_variant(tflite_source, v.name, **kwargs)
            if v.name == "float32" and not tfl.outputs_finite(result["content"], fe.segment_samples):
                # docs/design.md: a variable left as a resource makes LiteRT return NaN; freeze and redo.
                log.warning("model.tflite returns NaN/inf under LiteRT; converting from a frozen copy of the "
                            "SavedModel (variables folded into constants) instead.")
                tflite_source = tfl.freeze_saved_model(saved_model_dir, os.path.join(out_dir, ".frozen_saved_model"))
                result = tfl.convert_variant(tflite_source, v.name, **kwargs)
                if not tfl.outputs_finite(result["content"], fe.segment_samples):
                    raise ExportError("model.tflite returns NaN/inf under LiteRT even from frozen variables.")
        except tfl.TFLiteConversionError as e:
            raise ExportError(str(e)) from None
        if v.name == "float32":
            float_content = result["content"]
        path = os.path.join(out_dir, v.filename)
        with open(path, "wb") as f:
            f.write(result["content"])
        try:
            sigs = tfl.check_signature(path, output_names)
        except ValueError as e:
            raise ExportError(f"{path}: {e}") from None
        files[v.filename] = {"variant": v.name, "weights": v.weights, "compute": v.compute,
                             "quantization": v.quantization, "size_bytes": os.path.getsize(path),
                             "signatures": sigs, "ops_by_dtype": tfl.op_dtypes(path)}
        if v.name == "int8_full":
            int8_full_info = {"calibration": calib_info, "float_islands": list(INT8_FULL_FLOAT_ISLANDS),
                              "float_nodes": len(result["float_nodes"]),
                              "degenerate_nodes_kept_float": result["extra_float_nodes"]}
            files[v.filename]["calibration"] = calib_info
        lap(f"convert_{v.name}")

    frozen = tflite_source != saved_model_dir
    shutil.rmtree(os.path.join(out_dir, ".frozen_saved_model"), ignore_errors=True)
    return files, int8_full_info, frozen
