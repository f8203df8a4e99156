"""Dense-prediction losses that ignore unlabelled pixels.

The NYUv2 / Cityscapes layouts mark missing depth with 0 and missing normals
with zero vectors (see `keras_mtl.data`); Keras' MSE / MAE would train the
network to predict 0 there. These losses average over labelled pixels only
(MTAN's and the IMTL / Maximum Roaming code's convention).
"""

import keras
import tensorflow as tf


def _masked_mean(values, mask):
    """Per-example mean of `values` over `mask` (B, ...) -> (B,); 0 if empty."""
    mask = tf.cast(mask, values.dtype)
    axes = list(range(1, len(values.shape)))
    total = tf.reduce_sum(values * mask, axis=axes)
    count = tf.reduce_sum(mask, axis=axes)
    return tf.math.divide_no_nan(total, count)


@keras.saving.register_keras_serializable(package="keras_mtl")
class MaskedDepthLoss(keras.losses.Loss):
    """L1 (default) or squared depth error over pixels whose label is valid.

    A pixel is valid when its label differs from `ignore_value` (0: no depth
    measured). Each example's loss is its mean over valid pixels.

    Args:
        norm: "l1" (Maximum Roaming, IMTL, MTAN) or "l2" (GradNorm's squared
            loss). Defaults to "l1".
        ignore_value: label value of missing depth. Defaults to `0.0`.
    """

    def __init__(self, norm="l1", ignore_value=0.0, name="masked_depth_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if norm not in ("l1", "l2"):
            raise ValueError(
                "Invalid value received for argument `norm`. Expected 'l1' or "
                f"'l2'. Received: norm={norm!r}"
            )
        self.norm = norm
        self.ignore_value = float(ignore_value)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        diff = y_pred - y_true
        err = tf.abs(diff) if self.norm == "l1" else tf.square(diff)
        return _masked_mean(err, tf.not_equal(y_true, self.ignore_value))

    def get_config(self):
        return {**super().get_config(), "norm": self.norm, "ignore_value": self.ignore_value}


@keras.saving.register_keras_serializable(package="keras_mtl")
class NormalCosineLoss(keras.losses.Loss):
    """1 - cos(angle) between predicted and true normals, labelled pixels only.

    Predictions are L2-normalised over the last axis first; pixels whose
    label is the zero vector (no normal) are ignored. GradNorm's "cosine
    similarity" normals loss, 1 - |cos| in its tables, IMTL's 1 - cos.
    """

    def __init__(self, name="normal_cosine_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        pred = tf.math.l2_normalize(y_pred, axis=-1)
        cos = tf.reduce_sum(pred * y_true, axis=-1)
        valid = tf.reduce_sum(tf.abs(y_true), axis=-1) > 0
        return _masked_mean(1.0 - cos, valid)
