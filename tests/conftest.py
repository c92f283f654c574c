"""Session-wide set-up: TensorFlow's environment, as the ``dml`` command sets it, before any test imports it."""

from disentangled_ml import tf_environment

tf_environment.configure()
