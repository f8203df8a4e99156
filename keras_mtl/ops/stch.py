"""Smooth Tchebycheff scalarisation, STCH (Lin et al., ICML 2024), the pure math."""

import tensorflow as tf


def stch_loss(losses, nadir, mu=1.0, present=None, epsilon=1e-20):
    """The smooth Tchebycheff loss `T mu log sum_t exp(log(L_t / z_t + eps) / mu)`.

    A smooth maximum, with smoothing `mu`, of the log losses normalised by
    the nadir point `z` (the authors' multi-task version: the mean losses of
    the warm-up's last epoch), scaled by the number of tasks T as in their
    code. As `mu -> 0` it tends to `T max_t log(L_t / z_t)`, the Tchebycheff
    scalarisation; its gradient is `T sum_t softmax(log(L_t/z_t)/mu)_t
    grad L_t / (L_t + eps z_t)`, so the worst task (relative to its nadir)
    gets the most weight. The maximum is subtracted inside the exponential
    for stability (a constant, which does not change the gradient).

    Args:
        losses: float (T,), positive task losses.
        nadir: float (T,), positive normalisers `z_t`.
        mu: smoothing, > 0. Defaults to `1.0`.
        present: optional float (T,) of 1 for the included tasks.
        epsilon: added inside the logarithm. Defaults to `1e-20`.

    Returns:
        A scalar tensor.

    Example:

    >>> float(keras_mtl.ops.stch_loss([1.0, 4.0], [1.0, 1.0], mu=1e-3))  # ~ 2 log 4
    2.772...

    Reference:
        Lin, Zhang, Yang, Zhang, Zhang. "Smooth Tchebycheff Scalarization
        for Multi-Objective Optimization". ICML 2024, section 3 and the
        multi-task experiments.
    """
    losses = tf.convert_to_tensor(losses)
    nadir = tf.cast(nadir, losses.dtype)
    if present is None:
        present = tf.ones_like(losses)
    keep = tf.cast(present, losses.dtype) > 0
    ratio = tf.math.divide_no_nan(tf.maximum(losses, 0.0), nadir)
    logs = tf.math.log(ratio + epsilon) / mu
    logs = tf.where(keep, logs, tf.fill(tf.shape(logs), tf.constant(-float("inf"), logs.dtype)))
    top = tf.stop_gradient(tf.reduce_max(logs))
    top = tf.where(tf.math.is_finite(top), top, tf.zeros_like(top))
    value = mu * (tf.math.log(tf.reduce_sum(tf.exp(logs - top))) + top)
    count = tf.reduce_sum(tf.cast(keep, losses.dtype))
    return tf.where(count > 0, count * value, tf.zeros_like(value))
