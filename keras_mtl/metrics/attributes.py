"""Binary multi-attribute precision, recall and F-score, averaged over attributes.

Each attribute a keeps its own true-positive, false-positive and
false-negative counts over every batch since the last reset;
P_a = TP/(TP+FP), R_a = TP/(TP+FN), F_a = 2 P_a R_a / (P_a + R_a) (0 where
undefined), and the metric is the mean over attributes, as in the CelebA
table of Maximum Roaming.
"""

import keras
import tensorflow as tf

_STATISTICS = ("precision", "recall", "fscore")


@keras.saving.register_keras_serializable(package="keras_mtl")
class AttributeScore(keras.metrics.Metric):
    """Precision, recall or F-score of binary attributes, averaged over attributes.

    Args:
        num_attributes: number of binary attributes A in the task's output.
        statistic: one of `"precision"`, `"recall"`, `"fscore"`. Defaults to
            `"fscore"`.
        from_logits: whether `y_pred` holds logits (threshold 0) or
            probabilities (threshold `threshold`). Defaults to `True`.
        threshold: probability threshold when `from_logits=False`. Defaults
            to `0.5`.
        name: metric name. Defaults to `"attribute_<statistic>"`.

    Example:

    >>> m = AttributeScore(2, "precision")
    >>> m.update_state([[1, 0], [1, 1]], [[3., 2.], [-1., 4.]])
    >>> float(m.result())  # attribute 0: 1/1, attribute 1: 1/2
    0.75

    Reference:
        Pascal et al., "Maximum Roaming Multi-Task Learning", AAAI 2021
        (Table 1, precision / recall / F-score over 40 CelebA attributes).
    """

    def __init__(self, num_attributes, statistic="fscore", from_logits=True, threshold=0.5, name=None, dtype=None):
        if statistic not in _STATISTICS:
            raise ValueError(
                f"Invalid value received for argument `statistic`. Expected one "
                f"of {_STATISTICS}. Received: statistic={statistic!r}"
            )
        if not isinstance(num_attributes, int) or num_attributes < 1:
            raise ValueError(
                "Invalid value received for argument `num_attributes`. Expected "
                f"an integer >= 1. Received: num_attributes={num_attributes}"
            )
        super().__init__(name=name or f"attribute_{statistic}", dtype=dtype)
        self.num_attributes = num_attributes
        self.statistic = statistic
        self.from_logits = from_logits
        self.threshold = threshold
        self.counts = self.add_variable(
            shape=(3, num_attributes), initializer="zeros", dtype="float64", name="counts"
        )  # rows: TP, FP, FN

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch: `y_true` {0, 1} (B, A), `y_pred` scores (B, A)."""
        y_true = tf.reshape(tf.cast(tf.convert_to_tensor(y_true), "float64"), (-1, self.num_attributes))
        y_pred = tf.reshape(tf.cast(tf.convert_to_tensor(y_pred), "float64"), (-1, self.num_attributes))
        cut = 0.0 if self.from_logits else self.threshold
        predicted = tf.cast(y_pred > cut, "float64")
        positive = tf.cast(y_true > 0.5, "float64")
        weights = tf.ones_like(positive)
        if sample_weight is not None:
            sw = tf.cast(tf.convert_to_tensor(sample_weight), "float64")
            if sw.shape.rank == 1:
                sw = sw[:, None]
            weights = weights * tf.broadcast_to(sw, tf.shape(weights))
        tp = tf.reduce_sum(predicted * positive * weights, 0)
        fp = tf.reduce_sum(predicted * (1 - positive) * weights, 0)
        fn = tf.reduce_sum((1 - predicted) * positive * weights, 0)
        self.counts.assign_add(tf.stack([tp, fp, fn]))

    def result(self):
        tp, fp, fn = self.counts[0], self.counts[1], self.counts[2]
        precision = tf.math.divide_no_nan(tp, tp + fp)
        recall = tf.math.divide_no_nan(tp, tp + fn)
        if self.statistic == "precision":
            value = precision
        elif self.statistic == "recall":
            value = recall
        else:
            value = tf.math.divide_no_nan(2 * precision * recall, precision + recall)
        return tf.cast(tf.reduce_mean(value), "float32")

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def get_config(self):
        return {
            **super().get_config(),
            "num_attributes": self.num_attributes,
            "statistic": self.statistic,
            "from_logits": self.from_logits,
            "threshold": self.threshold,
        }


def AttributePrecision(num_attributes, **kwargs):
    """`AttributeScore(num_attributes, "precision", ...)`."""
    return AttributeScore(num_attributes, "precision", **kwargs)


def AttributeRecall(num_attributes, **kwargs):
    """`AttributeScore(num_attributes, "recall", ...)`."""
    return AttributeScore(num_attributes, "recall", **kwargs)


def AttributeFScore(num_attributes, **kwargs):
    """`AttributeScore(num_attributes, "fscore", ...)`."""
    return AttributeScore(num_attributes, "fscore", **kwargs)
