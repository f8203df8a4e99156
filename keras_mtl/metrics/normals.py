"""Surface-normal errors: angle mean / median, % within t degrees, 1 - |cos|.

Predictions are L2-normalised per pixel before comparison; true normals are
unit vectors, and pixels whose true normal is the zero vector (no
measurement in the NYUv2 `.npy` layout) are skipped. Angles are computed as
atan2(|n x m|, n . m) in float64, accurate also near 0 degrees.
"""

import math

import keras
import tensorflow as tf


def _valid_and_unit(y_true, y_pred):
    y_true = tf.cast(tf.convert_to_tensor(y_true), "float64")
    y_pred = tf.cast(tf.convert_to_tensor(y_pred), "float64")
    y_pred = tf.reshape(y_pred, tf.shape(y_true))
    true_norm = tf.norm(y_true, axis=-1)
    valid = tf.logical_and(true_norm > 0, tf.math.is_finite(true_norm))
    y_true = tf.math.divide_no_nan(y_true, true_norm[..., None])
    y_pred = tf.math.divide_no_nan(y_pred, tf.norm(y_pred, axis=-1, keepdims=True))
    return valid, y_true, y_pred


def _angles_degrees(y_true, y_pred):
    dot = tf.reduce_sum(y_true * y_pred, axis=-1)
    cross = tf.norm(tf.linalg.cross(y_true, y_pred), axis=-1)
    return tf.atan2(cross, dot) * (180.0 / math.pi)


def _weights(valid, sample_weight):
    weights = tf.cast(valid, "float64")
    if sample_weight is not None:
        sw = tf.cast(tf.convert_to_tensor(sample_weight), "float64")
        while sw.shape.rank < weights.shape.rank:
            sw = sw[..., None]
        weights = weights * tf.broadcast_to(sw, tf.shape(weights))
    return weights


class _NormalPixelMean(keras.metrics.Metric):
    """Mean over valid pixels of a per-pixel quantity of (true, predicted) normals."""

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="count")

    def _pixel_value(self, y_true, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true`, `y_pred` float (B, H, W, 3) normal maps."""
        valid, y_true, y_pred = _valid_and_unit(y_true, y_pred)
        weights = _weights(valid, sample_weight)
        value = tf.where(valid, self._pixel_value(y_true, y_pred), 0.0)
        self.total.assign_add(tf.reduce_sum(value * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.total, self.count), "float32")

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="keras_mtl")
class NormalMeanAngle(_NormalPixelMean):
    """Mean angle, in degrees, between predicted and true normals.

    Args:
        name: metric name. Defaults to `"normal_mean_angle"`.

    Example:

    >>> m = NormalMeanAngle()
    >>> m.update_state([[[0., 0., 1.], [0., 0., 1.]]], [[[0., 0., 2.], [0., 1., 0.]]])
    >>> float(m.result())  # (0 + 90) / 2
    45.0

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Table 3, Mean Err.).
    """

    def __init__(self, name="normal_mean_angle", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _pixel_value(self, y_true, y_pred):
        return _angles_degrees(y_true, y_pred)


@keras.saving.register_keras_serializable(package="keras_mtl")
class NormalWithinAngle(_NormalPixelMean):
    """Percentage of valid pixels whose angle error is below `threshold` degrees.

    Args:
        threshold: angle in degrees; the papers use 11.25, 22.5 and 30.
            Defaults to `11.25`.
        name: metric name. Defaults to `"normal_within_<threshold>"`.

    Example:

    >>> m = NormalWithinAngle(30.0)
    >>> m.update_state([[[0., 0., 1.], [0., 0., 1.]]], [[[0., 0., 2.], [0., 1., 0.]]])
    >>> float(m.result())
    50.0

    Reference:
        Maninis et al., "Attentive Single-Tasking of Multiple Tasks", CVPR
        2019 (normals, % within t degrees).
    """

    def __init__(self, threshold=11.25, name=None, dtype=None):
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 180:
            raise ValueError(
                "Invalid value received for argument `threshold`. Expected an "
                f"angle in degrees in (0, 180]. Received: threshold={threshold}"
            )
        self.threshold = float(threshold)
        super().__init__(name=name or f"normal_within_{threshold:g}", dtype=dtype)

    def _pixel_value(self, y_true, y_pred):
        return 100.0 * tf.cast(_angles_degrees(y_true, y_pred) < self.threshold, "float64")

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@keras.saving.register_keras_serializable(package="keras_mtl")
class NormalCosineError(_NormalPixelMean):
    """Mean of 1 - |cos(angle)| between predicted and true normals.

    Args:
        name: metric name. Defaults to `"normal_cosine_error"`.

    Example:

    >>> m = NormalCosineError()
    >>> m.update_state([[[0., 0., 1.], [1., 0., 0.]]], [[[0., 0., -1.], [1., 1., 0.]]])
    >>> round(float(m.result()), 4)  # (0 + (1 - 1/sqrt(2))) / 2
    0.1464

    Reference:
        Chen et al., "GradNorm", ICML 2018 (Tables 1-2, Normals Err. 1 - |cos|).
    """

    def __init__(self, name="normal_cosine_error", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _pixel_value(self, y_true, y_pred):
        return 1.0 - tf.abs(tf.reduce_sum(y_true * y_pred, axis=-1))


@keras.saving.register_keras_serializable(package="keras_mtl")
class NormalMedianAngle(keras.metrics.Metric):
    """Median angle, in degrees, between predicted and true normals.

    The angles of all valid pixels seen since the last reset go into a
    histogram of `bin_width`-degree bins on [0, 180] (constant memory); the
    median is the mean of the centres of the bins holding the two middle
    values (one for an odd count), within `bin_width / 2` of the exact
    median.

    Args:
        bin_width: histogram resolution in degrees. Defaults to `0.01`.
        name: metric name. Defaults to `"normal_median_angle"`.

    Example:

    >>> m = NormalMedianAngle()
    >>> m.update_state([[[0., 0., 1.]] * 3], [[[0., 0., 1.], [0., 1., 1.], [0., 1., 0.]]])
    >>> round(float(m.result()))  # median of (0, 45, 90)
    45

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Table 3, Med. Err.).
    """

    def __init__(self, bin_width=0.01, name="normal_median_angle", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(bin_width, (int, float)) or not 0 < bin_width <= 180:
            raise ValueError(
                "Invalid value received for argument `bin_width`. Expected a "
                f"float in (0, 180]. Received: bin_width={bin_width}"
            )
        self.bin_width = float(bin_width)
        self.num_bins = int(math.ceil(180.0 / self.bin_width))
        self.histogram = self.add_variable(
            shape=(self.num_bins,), initializer="zeros", dtype="float64", name="histogram"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true`, `y_pred` float (B, H, W, 3) normal maps."""
        valid, y_true, y_pred = _valid_and_unit(y_true, y_pred)
        weights = _weights(valid, sample_weight)
        angles = _angles_degrees(y_true, y_pred)
        index = tf.cast(tf.floor(angles / self.bin_width), "int32")
        index = tf.clip_by_value(tf.where(valid, index, 0), 0, self.num_bins - 1)
        self.histogram.assign_add(
            tf.math.unsorted_segment_sum(
                tf.reshape(weights, [-1]), tf.reshape(index, [-1]), self.num_bins
            )
        )

    def result(self):
        cumulative = tf.cumsum(self.histogram)
        total = cumulative[-1]
        half = total / 2.0
        # The two middle values (equal for an odd count): the first bins where
        # the cumulative count reaches, and where it exceeds, half the total.
        lower = tf.reduce_sum(tf.cast(cumulative < half, "int32"))
        upper = tf.reduce_sum(tf.cast(cumulative <= half, "int32"))
        last = self.num_bins - 1
        centres = tf.cast(tf.minimum(tf.stack([lower, upper]), last), "float64") + 0.5
        median = tf.reduce_mean(centres) * self.bin_width
        return tf.cast(tf.where(total > 0, median, 0.0), "float32")

    def reset_state(self):
        self.histogram.assign(tf.zeros_like(self.histogram))

    def get_config(self):
        return {**super().get_config(), "bin_width": self.bin_width}
