"""Session-wide set-up: TensorFlow's environment, as the ``dml`` command sets it, before any test imports it."""

from disentangled_ml import tf_environment

tf_environment.configure()


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_tensorflow_global_seed():
    """Clear TensorFlow's global seed after every test.

    ``keras.utils.set_random_seed`` in one test would otherwise fix the op seeds of every dataset the
    next tests build: ``training_dataset(runtime_seeds=True)`` then streams the same triplets from each
    tf.data service worker (test_data_service.py failed so after test_confounded_triplets.py).
    """
    yield
    import tensorflow as tf

    tf.random.set_seed(None)
