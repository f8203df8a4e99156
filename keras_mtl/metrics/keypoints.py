"""Facial keypoint error normalised by the inter-ocular distance, and failure rate.

For an image with true keypoints t_k and predictions p_k (k = 1..K), the
normalised error is e = mean_k ||p_k - t_k|| / ||t_left_eye - t_right_eye||.
`KeypointError` averages e over images; `KeypointFailureRate` is the fraction
of images with e > `threshold` (10% in Zhang et al. 2014 and GradNorm).
Keypoint vectors use the MTFL order (x1..xK, y1..yK) by default, as written
by `keras_mtl.data.mtfl`.
"""

import keras
import tensorflow as tf

_LAYOUTS = ("xy_blocks", "interleaved")


def _points(v, num_keypoints, layout):
    """(B, 2K) -> (B, K, 2)."""
    v = tf.cast(tf.convert_to_tensor(v), "float64")
    v = tf.reshape(v, (-1, 2 * num_keypoints))
    if layout == "xy_blocks":
        return tf.stack([v[:, :num_keypoints], v[:, num_keypoints:]], axis=-1)
    return tf.reshape(v, (-1, num_keypoints, 2))


class _NormalisedKeypointMetric(keras.metrics.Metric):
    def __init__(self, num_keypoints=5, left_eye=0, right_eye=1, layout="xy_blocks", name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        if layout not in _LAYOUTS:
            raise ValueError(
                f"Invalid value received for argument `layout`. Expected one of "
                f"{_LAYOUTS}. Received: layout={layout!r}"
            )
        for arg, value in (("left_eye", left_eye), ("right_eye", right_eye)):
            if not 0 <= value < num_keypoints:
                raise ValueError(
                    f"Invalid value received for argument `{arg}`. Expected an "
                    f"index in [0, {num_keypoints}). Received: {arg}={value}"
                )
        self.num_keypoints = num_keypoints
        self.left_eye = left_eye
        self.right_eye = right_eye
        self.layout = layout
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float64", name="count")

    def normalised_errors(self, y_true, y_pred):
        """Per-image error e, shape (B,)."""
        t = _points(y_true, self.num_keypoints, self.layout)
        p = _points(y_pred, self.num_keypoints, self.layout)
        distances = tf.norm(p - t, axis=-1)
        inter_ocular = tf.norm(t[:, self.left_eye] - t[:, self.right_eye], axis=-1)
        return tf.reduce_mean(distances, axis=-1) / inter_ocular

    def _image_value(self, errors):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true`, `y_pred` float (B, 2K) keypoint coordinates."""
        value = self._image_value(self.normalised_errors(y_true, y_pred))
        weights = tf.ones_like(value)
        if sample_weight is not None:
            weights = tf.reshape(tf.cast(sample_weight, "float64"), [-1]) * weights
        self.total.assign_add(tf.reduce_sum(value * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.total, self.count), "float32")

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "num_keypoints": self.num_keypoints,
            "left_eye": self.left_eye,
            "right_eye": self.right_eye,
            "layout": self.layout,
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class KeypointError(_NormalisedKeypointMetric):
    """Mean keypoint error normalised by the inter-ocular distance (a fraction).

    Args:
        num_keypoints: K. Defaults to `5` (MTFL: eyes, nose, mouth corners).
        left_eye: index of the left-eye keypoint. Defaults to `0`.
        right_eye: index of the right-eye keypoint. Defaults to `1`.
        layout: `"xy_blocks"` for (x1..xK, y1..yK) (MTFL files) or
            `"interleaved"` for (x1, y1, x2, y2, ...). Defaults to `"xy_blocks"`.
        name: metric name. Defaults to `"keypoint_error"`.

    Example:

    >>> m = KeypointError(num_keypoints=2)
    >>> m.update_state([[0., 10., 0., 0.]], [[3., 10., 4., 0.]])
    >>> float(m.result())  # eye errors (5 + 0) / 2, inter-ocular 10
    0.25

    Reference:
        Chen et al., "GradNorm", ICML 2018, supplementary 7.2 (Table 3);
        Zhang et al., "Facial Landmark Detection by Deep Multi-task
        Learning", ECCV 2014.
    """

    def __init__(self, num_keypoints=5, left_eye=0, right_eye=1, layout="xy_blocks", name="keypoint_error", dtype=None):
        super().__init__(num_keypoints, left_eye, right_eye, layout, name=name, dtype=dtype)

    def _image_value(self, errors):
        return errors


@keras.saving.register_keras_serializable(package="keras_mtl")
class KeypointFailureRate(_NormalisedKeypointMetric):
    """Fraction of images whose normalised keypoint error exceeds `threshold`.

    Args:
        threshold: normalised-error threshold. Defaults to `0.1` (10%).
        num_keypoints, left_eye, right_eye, layout: see `KeypointError`.
        name: metric name. Defaults to `"keypoint_failure_rate"`.

    Example:

    >>> m = KeypointFailureRate(num_keypoints=2)
    >>> m.update_state([[0., 10., 0., 0.], [0., 10., 0., 0.]],
    ...                [[0., 10., 3., 4.], [0., 10., 0., 1.]])
    >>> float(m.result())  # errors 0.35 and 0.05
    0.5

    Reference:
        Chen et al., "GradNorm", ICML 2018, supplementary 7.2 (Table 3).
    """

    def __init__(self, threshold=0.1, num_keypoints=5, left_eye=0, right_eye=1, layout="xy_blocks", name="keypoint_failure_rate", dtype=None):
        super().__init__(num_keypoints, left_eye, right_eye, layout, name=name, dtype=dtype)
        if not isinstance(threshold, (int, float)) or threshold <= 0:
            raise ValueError(
                "Invalid value received for argument `threshold`. Expected a "
                f"positive float. Received: threshold={threshold}"
            )
        self.threshold = float(threshold)

    def _image_value(self, errors):
        return tf.cast(errors > self.threshold, "float64")

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
