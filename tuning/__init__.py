"""Hyperparameter search over lambda and margin with keras-tuner (installed as disentangled_ml.tuning)."""
