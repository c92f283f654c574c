"""Evaluation: triplet accuracy per condition, disentanglement, retrieval, baselines.

* :mod:`.metrics`: pure numpy metrics (triplet accuracy and its Wilson interval, the
  exact McNemar test of two embedders on the same triplets, disentanglement matrix,
  precision@k / mAP, relevance from the label rules).
* :mod:`.baselines`: MFCC-VQ (the paper's baseline), MFCC statistics, the untrained
  network.
* :mod:`.embedders`: a trained Keras model or an export (docs/design.md, contract 2)
  behind one call, waveform crops -> embeddings.
* :mod:`.runner`: :func:`evaluate` / :func:`evaluate_many` (one pass over the split's
  audio for every embedder) and :func:`evaluate_run` (a training run directory).
* :mod:`.report`: ``metrics.json``, ``accuracy.png``, ``disentanglement.png`` (and
  ``disentanglement_confounded.png``), text table.
* :mod:`.triplet_file`: a CSV of audio triplets (e.g. human-rated) scored with a run or an
  export (``dml evaluate DIR --triplets FILE``).

Only the metrics are imported eagerly; the rest (TensorFlow, librosa, matplotlib)
load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from disentangled_ml.evaluation.metrics import (  # noqa: F401
    disentanglement_matrix, mcnemar_test, project, relevance_matrix, retrieval_metrics, triplet_accuracy,
    triplet_correct, wilson_interval,
)

_LAZY = {
    "evaluate": "runner", "evaluate_many": "runner", "evaluate_run": "runner", "EmbedderSpec": "runner",
    "DecodedAudio": "runner", "condition_views": "runner", "segment_starts": "runner",
    "EvaluationError": "embedders", "KerasEmbedder": "embedders", "SavedModelEmbedder": "embedders",
    "load_embedder": "embedders",
    "MFCCVQ": "baselines", "MFCCStats": "baselines", "untrained_embedder": "baselines",
    "training_crops": "baselines",
    "write_report": "report", "format_table": "report",
    "evaluate_triplet_file": "triplet_file", "score_triplet_file": "triplet_file",
    "load_triplet_model": "triplet_file", "read_triplet_file": "triplet_file",
}

__all__ = ["triplet_accuracy", "triplet_correct", "disentanglement_matrix", "retrieval_metrics", "relevance_matrix",
           "project", "wilson_interval", "mcnemar_test", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"disentangled_ml.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'disentangled_ml.evaluation' has no attribute {name!r}")
