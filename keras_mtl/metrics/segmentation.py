"""Semantic segmentation metrics with an ignore index: mean IoU, pixel accuracy.

Both accumulate a confusion matrix over every batch seen since the last
`reset_state()`, so the value after `evaluate` is the dataset-level score (not
a mean of per-batch scores), as in the NYUv2 / Cityscapes tables of Maximum
Roaming (Pascal et al., AAAI 2021) and GradNorm (Chen et al., ICML 2018).
"""

import keras
import tensorflow as tf


def _check_num_classes(num_classes):
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            "Invalid value received for argument `num_classes`. Expected an "
            f"integer >= 2. Received: num_classes={num_classes}"
        )


def _predicted_classes(y_pred, from_logits):
    """Class index per pixel from scores (..., C); C == 1 means binary."""
    y_pred = tf.convert_to_tensor(y_pred)
    if y_pred.shape[-1] == 1:
        threshold = 0.0 if from_logits else 0.5
        return tf.cast(y_pred[..., 0] > threshold, "int32")
    return tf.argmax(y_pred, axis=-1, output_type="int32")


def _flat_labels(y_true, y_pred_classes):
    """Integer labels with the shape of the predicted class map."""
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank == y_pred_classes.shape.rank + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    # Labels may be stored as floats (-1.0 for "unlabelled" in the .npy layout).
    return tf.cast(tf.round(tf.cast(y_true, "float32")), "int32")


def _pixel_weights(valid, sample_weight):
    weights = tf.cast(valid, "float64")
    if sample_weight is not None:
        sw = tf.cast(tf.convert_to_tensor(sample_weight), "float64")
        while sw.shape.rank < weights.shape.rank:
            sw = sw[..., None]
        weights = weights * tf.broadcast_to(sw, tf.shape(weights))
    return weights


class _ConfusionMatrixMetric(keras.metrics.Metric):
    """Accumulates a (num_classes, num_classes) confusion matrix (rows: truth)."""

    def __init__(self, num_classes, ignore_index=-1, from_logits=True, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.from_logits = from_logits
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float64",
            name="confusion_matrix",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true` int (B, H, W[, 1]), `y_pred` scores (B, H, W, C)."""
        pred = _predicted_classes(y_pred, self.from_logits)
        true = _flat_labels(y_true, pred)
        valid = tf.logical_and(true >= 0, true < self.num_classes)
        if self.ignore_index is not None:
            valid = tf.logical_and(valid, true != self.ignore_index)
        weights = _pixel_weights(valid, sample_weight)
        true = tf.where(valid, true, 0)
        pred = tf.clip_by_value(pred, 0, self.num_classes - 1)
        index = tf.reshape(true * self.num_classes + pred, [-1])
        counts = tf.math.unsorted_segment_sum(
            tf.reshape(weights, [-1]), index, self.num_classes * self.num_classes
        )
        self.confusion.assign_add(tf.reshape(counts, (self.num_classes, self.num_classes)))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
        }


@keras.saving.register_keras_serializable(package="keras_mtl")
class MeanIoU(_ConfusionMatrixMetric):
    """Mean intersection-over-union over classes, skipping ignored pixels.

    IoU_c = TP_c / (TP_c + FP_c + FN_c) from the confusion matrix accumulated
    over all batches; the mean runs over the classes that occur in the labels
    or the predictions (union > 0). Pixels whose label equals `ignore_index`
    (or lies outside [0, num_classes)) count nowhere.

    Args:
        num_classes: number of classes C (>= 2). For a binary task with one
            output channel use `num_classes=2`: the channel is thresholded.
        ignore_index: label value to skip. Defaults to `-1` (the NYUv2 /
            Cityscapes `.npy` layout).
        from_logits: whether a single-channel `y_pred` holds logits (threshold
            0) or probabilities (threshold 0.5). Multi-channel predictions use
            the argmax either way. Defaults to `True`.
        name: metric name. Defaults to `"mean_iou"`.

    Example:

    >>> m = MeanIoU(num_classes=2)
    >>> m.update_state([[0, 1, -1]], [[[2., 0.], [2., 0.], [0., 5.]]])
    >>> float(m.result())  # class 0: 1/2, class 1: 0/1
    0.25

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Tables 2-3, mIoU); Chen et al., "GradNorm", ICML 2018 (Table 1).
    """

    def __init__(self, num_classes, ignore_index=-1, from_logits=True, name="mean_iou", dtype=None):
        super().__init__(num_classes, ignore_index, from_logits, name=name, dtype=dtype)

    def result(self):
        tp = tf.linalg.diag_part(self.confusion)
        union = tf.reduce_sum(self.confusion, 0) + tf.reduce_sum(self.confusion, 1) - tp
        present = union > 0
        iou = tf.math.divide_no_nan(tp, union)
        count = tf.reduce_sum(tf.cast(present, "float64"))
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(iou), count), "float32")


@keras.saving.register_keras_serializable(package="keras_mtl")
class PixelAccuracy(_ConfusionMatrixMetric):
    """Fraction of labelled pixels whose predicted class is right.

    Args:
        num_classes: number of classes C (>= 2); see `MeanIoU`.
        ignore_index: label value to skip. Defaults to `-1`.
        from_logits: see `MeanIoU`. Defaults to `True`.
        name: metric name. Defaults to `"pixel_accuracy"`.

    Example:

    >>> m = PixelAccuracy(num_classes=2)
    >>> m.update_state([[0, 1, -1]], [[[2., 0.], [2., 0.], [0., 5.]]])
    >>> float(m.result())
    0.5

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Tables 2-3, Pix. Acc.).
    """

    def __init__(self, num_classes, ignore_index=-1, from_logits=True, name="pixel_accuracy", dtype=None):
        super().__init__(num_classes, ignore_index, from_logits, name=name, dtype=dtype)

    def result(self):
        correct = tf.reduce_sum(tf.linalg.diag_part(self.confusion))
        total = tf.reduce_sum(self.confusion)
        return tf.cast(tf.math.divide_no_nan(correct, total), "float32")
