"""Masked dense losses against hand-computed values."""

import numpy as np
import pytest

from keras_mtl.losses import MaskedDepthLoss
from keras_mtl.losses import NormalCosineLoss


def test_masked_depth_loss_ignores_missing_pixels():
    y_true = np.array([[[[2.0], [0.0]], [[1.0], [4.0]]]], "float32")  # (1, 2, 2, 1)
    y_pred = np.array([[[[3.0], [9.0]], [[1.0], [2.0]]]], "float32")
    # valid pixels: errors |1|, |0|, |2| -> 1.0 ; squared 1, 0, 4 -> 5/3
    assert float(MaskedDepthLoss()(y_true, y_pred)) == pytest.approx(1.0)
    assert float(MaskedDepthLoss("l2")(y_true, y_pred)) == pytest.approx(5 / 3)
    # An example without any depth contributes 0, not NaN.
    empty = np.zeros_like(y_true)
    assert float(MaskedDepthLoss()(empty, y_pred)) == 0.0
    with pytest.raises(ValueError, match="norm"):
        MaskedDepthLoss("huber")


def test_normal_cosine_loss_is_one_minus_cos_on_labelled_pixels():
    y_true = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], "float32")
    y_pred = np.array([[[2.0, 0.0, 0.0], [5.0, 5.0, 5.0], [1.0, 1.0, 0.0]]], "float32")
    expected = ((1 - 1.0) + (1 - np.cos(np.pi / 4))) / 2
    assert float(NormalCosineLoss()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
