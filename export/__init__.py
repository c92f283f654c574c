"""SavedModel / TFLite export and parity checks (installed as ``disentangled_ml.export``).

:func:`export_run` turns a training run into an export directory (docs/design.md,
contract 2)::

    EXPORT_DIR/
      config.json              sample rate, segment length, embedding size, condition slices,
                               mask mode, the whole frontend, model, versions, the training config
      saved_model/             signatures serving_default (audio) and log_mel (log-mel input)
      model.tflite             float32
      model_fp16.tflite        float16 weights
      model_int8.tflite        dynamic-range int8
      model_int8_full.tflite   full integer (frontend and output head float), unless disabled
      parity.json              every variant against the Keras model, and the export's wall time per stage
      README.md                what the files are and how to call them

Submodules: :mod:`.run_export` (:func:`export_run`, the stages in order),
:mod:`.savedmodel` (loading a run, the SavedModel), :mod:`.tflite` (conversion of
one variant, LiteRT runner), :mod:`.conversion` (every variant's file),
:mod:`.parity` (comparisons, triplet scoring), :mod:`.export_config` (writing and
reading ``config.json``). This package only re-exports their public names.
TensorFlow is imported only when an export is made, so
:class:`~.tflite.TFLiteEmbedder` stays usable without it.
"""

from disentangled_ml.export.export_config import FORMAT_VERSION, load_export_config
from disentangled_ml.export.parity import ParityError
from disentangled_ml.export.run_export import (
    DEFAULT_CALIBRATION_SEGMENTS, DEFAULT_MAX_TRIPLETS, DEFAULT_PARITY_SEGMENTS, export_run,
)
from disentangled_ml.export.savedmodel import ExportError

__all__ = ["export_run", "DEFAULT_CALIBRATION_SEGMENTS", "DEFAULT_PARITY_SEGMENTS", "DEFAULT_MAX_TRIPLETS",
           "FORMAT_VERSION", "ExportError", "ParityError", "load_export_config"]
