"""Networks: backbones, condition masks, the embedding model and the triplet trainer.

Importing this package registers every custom Keras class (``disentangled_ml>...``),
so saved ``.keras`` files load with plain ``keras.saving.load_model``.
"""

import disentangled_ml.features  # noqa: F401  (registers LogMelSpectrogram for waveform models)
import disentangled_ml.losses  # noqa: F401  (registers MaskedTripletLoss)
from disentangled_ml.models.backbones import BACKBONES, build_backbone, conv_bn_relu
from disentangled_ml.models.embedding import (EMBEDDING_OUTPUT, RAW_OUTPUT, L2Normalize, add_frontend,
                                              build_embedding_model, slice_outputs)
from disentangled_ml.models.masks import MASK_MODES, ConditionMasks, build_condition_masks
from disentangled_ml.models.trainer import MeanConditionAccuracy, TripletModel, build_triplet_model

__all__ = [
    "BACKBONES", "build_backbone", "conv_bn_relu",
    "EMBEDDING_OUTPUT", "RAW_OUTPUT", "L2Normalize", "add_frontend", "build_embedding_model", "slice_outputs",
    "MASK_MODES", "ConditionMasks", "build_condition_masks",
    "MeanConditionAccuracy", "TripletModel", "build_triplet_model",
]
