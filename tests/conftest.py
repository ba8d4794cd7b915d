"""Shared fixtures: every test starts from float32, a fixed seed and a fresh Keras session."""

import os

import keras
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Orchestration around training (result files, resume, command-line parsing) does not depend on
# the backend; those tests run under the default backend only, to keep CI within its time budget.
# Training itself (fit, data_efficiency, finetune, every layer and model) is tested under all three.
default_backend_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent orchestration (files, resume, CLI); run under the default TensorFlow backend",
)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def randomize_weights(model, seed=0):
    """Gives every weight random values, so that outputs depend on all of them (the head starts at zero)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.trainable:
            value = rng.normal(0.0, 0.05, size=tuple(weight.shape))
            weight.assign(value.astype(keras.backend.standardize_dtype(weight.dtype)))
