"""Depth errors over valid pixels: absolute, relative and root-mean-square.

Depth maps mark missing measurements with 0 (NYUv2 / Cityscapes `.npy`
layout); those pixels are skipped. Each metric sums over every valid pixel of
every batch since the last reset and divides by the number of valid pixels.
"""

import keras
import tensorflow as tf


class _ValidPixelMean(keras.metrics.Metric):
    """Mean of a per-pixel error over pixels whose true depth is valid."""

    def __init__(self, invalid_value=0.0, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.invalid_value = invalid_value
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="count")

    def _pixel_error(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true`, `y_pred` float (B, H, W[, 1]) depth maps."""
        y_true = tf.cast(tf.convert_to_tensor(y_true), "float64")
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), "float64")
        y_pred = tf.reshape(y_pred, tf.shape(y_true))
        valid = tf.math.is_finite(y_true)
        if self.invalid_value is not None:
            valid = tf.logical_and(valid, y_true != self.invalid_value)
        weights = tf.cast(valid, "float64")
        if sample_weight is not None:
            sw = tf.cast(tf.convert_to_tensor(sample_weight), "float64")
            while sw.shape.rank < weights.shape.rank:
                sw = sw[..., None]
            weights = weights * tf.broadcast_to(sw, tf.shape(weights))
        safe_true = tf.where(valid, y_true, 1.0)
        error = tf.where(valid, self._pixel_error(safe_true, y_pred), 0.0)
        self.total.assign_add(tf.reduce_sum(error * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.total, self.count), "float32")

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "invalid_value": self.invalid_value}


@keras.saving.register_keras_serializable(package="keras_mtl")
class DepthAbsError(_ValidPixelMean):
    """Mean absolute depth error |d_pred - d| over valid pixels.

    Args:
        invalid_value: true-depth value marking a missing measurement; `None`
            keeps every finite pixel. Defaults to `0.0`.
        name: metric name. Defaults to `"depth_abs_error"`.

    Example:

    >>> m = DepthAbsError()
    >>> m.update_state([[1., 2., 0.]], [[1.5, 1., 9.]])
    >>> float(m.result())
    0.75

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Tables 2-3, Abs. Err.).
    """

    def __init__(self, invalid_value=0.0, name="depth_abs_error", dtype=None):
        super().__init__(invalid_value, name=name, dtype=dtype)

    def _pixel_error(self, y_true, y_pred):
        return tf.abs(y_pred - y_true)


@keras.saving.register_keras_serializable(package="keras_mtl")
class DepthRelError(_ValidPixelMean):
    """Mean relative depth error |d_pred - d| / d over valid pixels.

    Args:
        invalid_value: see `DepthAbsError`. Defaults to `0.0`.
        name: metric name. Defaults to `"depth_rel_error"`.

    Example:

    >>> m = DepthRelError()
    >>> m.update_state([[1., 2., 0.]], [[1.5, 1., 9.]])
    >>> float(m.result())
    0.5

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Tables 2-3, Rel. Err.).
    """

    def __init__(self, invalid_value=0.0, name="depth_rel_error", dtype=None):
        super().__init__(invalid_value, name=name, dtype=dtype)

    def _pixel_error(self, y_true, y_pred):
        return tf.abs(y_pred - y_true) / tf.abs(y_true)


@keras.saving.register_keras_serializable(package="keras_mtl")
class DepthRMSE(_ValidPixelMean):
    """Root-mean-square depth error over valid pixels (metres for NYUv2).

    sqrt(sum (d_pred - d)^2 / N_valid), the squares pooled over all batches.

    Args:
        invalid_value: see `DepthAbsError`. Defaults to `0.0`.
        name: metric name. Defaults to `"depth_rmse"`.

    Example:

    >>> m = DepthRMSE()
    >>> m.update_state([[1., 2., 0.]], [[1.5, 1., 9.]])
    >>> round(float(m.result()), 4)  # sqrt((0.25 + 1) / 2)
    0.7906

    Reference:
        Chen et al., "GradNorm", ICML 2018 (Table 1, Depth RMS Err.).
    """

    def __init__(self, invalid_value=0.0, name="depth_rmse", dtype=None):
        super().__init__(invalid_value, name=name, dtype=dtype)

    def _pixel_error(self, y_true, y_pred):
        return tf.square(y_pred - y_true)

    def result(self):
        return tf.cast(tf.sqrt(tf.math.divide_no_nan(self.total, self.count)), "float32")
