"""Shared test set-up: quiet TensorFlow, seeded runs, small toy data."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def toy_t2():
    """A small T=2 toy problem with sigma = (1, 100): (train, test, problem)."""
    from keras_mtl.data.toy import toy_datasets

    return toy_datasets(sigmas=(1.0, 100.0), train_size=512, test_size=256,
                        batch_size=64, seed=0)
