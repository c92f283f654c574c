"""SavedModel / TFLite export and parity checks (installed as disentangled_ml.export)."""
