"""Geometric loss strategy, GLS (Chennupati et al., CVPR-W 2019), the pure math."""

import tensorflow as tf

_FLOOR = 1e-12


def _present(losses, present):
    if present is None:
        return tf.ones_like(losses)
    return tf.cast(present, losses.dtype)


def _floored(losses, present):
    """Losses floored at 1e-12, and 1 for absent tasks (never read: NaN-safe)."""
    return tf.where(present > 0, tf.maximum(losses, _FLOOR), tf.ones_like(losses))


def gls_loss(losses, present=None):
    """The geometric mean of the task losses, over the present tasks.

    `L = (prod_t L_t)^(1/T)`, computed as `exp(mean_t log L_t)` so many tasks
    neither overflow nor underflow. Losses are floored at 1e-12 (log of 0).
    Its gradient is `(L / T) sum_t grad L_t / L_t` (Liu et al. 2021, appendix
    C.5): each loss weighted by its reciprocal, times L / T.

    Args:
        losses: float (T,) of positive task losses.
        present: optional float (T,) of 1 for the tasks in the batch, 0 for
            the others (which are left out of the mean, and never read: a NaN
            loss there changes nothing). Defaults to all.

    Returns:
        A scalar of the input dtype (0 when no task is present).

    Example:

    >>> float(keras_mtl.ops.gls_loss([1.0, 4.0]))
    2.0

    Reference:
        Chennupati, Sistu, Yogamani, Rawashdeh. "MultiNet++: Multi-Stream
        Feature Aggregation and Geometric Loss Strategy for Multi-Task
        Learning". CVPR Workshops 2019.
    """
    losses = tf.convert_to_tensor(losses)
    present = _present(losses, present)
    count = tf.reduce_sum(present)
    logs = tf.math.log(_floored(losses, present)) * present
    mean_log = tf.math.divide_no_nan(tf.reduce_sum(logs), count)
    return tf.where(count > 0, tf.exp(mean_log), tf.zeros_like(mean_log))


def gls_weights(losses, present=None):
    """The effective weights of GLS on the raw losses: `w_t = L / (T L_t)`.

    `sum_t w_t grad L_t` equals the gradient of `gls_loss`; absent tasks get 0.

    Example:

    >>> keras_mtl.ops.gls_weights([1.0, 4.0]).numpy()
    array([1.  , 0.25], dtype=float32)
    """
    losses = tf.convert_to_tensor(losses)
    present = _present(losses, present)
    count = tf.reduce_sum(present)
    total = gls_loss(losses, present)
    return tf.math.divide_no_nan(total * present, count * _floored(losses, present))
