"""FAMO: fast adaptive multitask optimization (Liu et al., NeurIPS 2023), the pure math."""

import tensorflow as tf


def famo_task_weights(logits, losses, present=None, epsilon=1e-8):
    """FAMO's weights on the raw losses: `z_t / (c (L_t + eps))`, summing to 1.

    With `z = softmax(xi)` over the present tasks, FAMO's update direction is
    `c sum_t z_t grad log(L_t + eps)` with `c = (sum_t z_t / (L_t + eps))^-1`
    (Algorithm 1): the gradient of `sum_t w_t L_t` with these weights.

    Args:
        logits: float (T,), FAMO's task logits `xi`.
        losses: float (T,), the current task losses (>= 0).
        present: optional float (T,) of 1 for the included tasks.
        epsilon: added to the losses before the logarithm. Defaults to `1e-8`.

    Returns:
        float (T,): the weights (0 for the excluded tasks).
    """
    logits = tf.convert_to_tensor(logits)
    losses = tf.cast(losses, logits.dtype)
    z = famo_softmax(logits, present)
    ratio = z / (tf.maximum(losses, 0.0) + epsilon)
    return tf.math.divide_no_nan(ratio, tf.reduce_sum(ratio))


def famo_softmax(logits, present=None):
    """`softmax(xi)` over the present tasks, 0 for the others."""
    logits = tf.convert_to_tensor(logits)
    if present is None:
        return tf.nn.softmax(logits)
    keep = tf.cast(present, logits.dtype) > 0
    minus_inf = tf.fill(tf.shape(logits), tf.constant(-float("inf"), logits.dtype))
    z = tf.nn.softmax(tf.where(keep, logits, minus_inf))
    return tf.where(keep & tf.math.is_finite(z), z, tf.zeros_like(z))


def famo_logit_gradient(logits, previous_losses, losses, present=None, gamma=0.01,
                        epsilon=1e-8):
    """FAMO's logit gradient `J_z(xi)^T delta + gamma xi` (Algorithm 1).

    `delta_t = log(L_t^prev + eps) - log(L_t + eps)` is each task's
    log-loss decrease over the last update; with `z = softmax(xi)` its
    pull-back through the softmax is `z_t (delta_t - z . delta)`. A step
    against this gradient lowers the logits of the tasks whose loss fell
    most. `gamma xi` is the logits' L2 regularisation (the authors' Adam
    `weight_decay`). Excluded tasks get 0 and do not enter the softmax.

    Args:
        logits: float (T,) `xi`.
        previous_losses: float (T,), the losses before the update.
        losses: float (T,), the losses after it.
        present: optional float (T,) of 1 for the tasks with both losses.
        gamma: regularisation coefficient. Defaults to `0.01`.
        epsilon: added to the losses before the logarithm. Defaults to `1e-8`.

    Returns:
        float (T,).

    Example:

    >>> keras_mtl.ops.famo_logit_gradient([0.0, 0.0], [1.0, 1.0], [0.5, 1.0],
    ...                                   gamma=0.0).numpy().round(4)
    array([ 0.1733, -0.1733], dtype=float32)

    Reference:
        Liu, Feng, Stone, Liu. "FAMO: Fast Adaptive Multitask Optimization".
        NeurIPS 2023, section 3 and Algorithm 1.
    """
    logits = tf.convert_to_tensor(logits)
    dtype = logits.dtype
    def log(values):
        return tf.math.log(tf.maximum(tf.cast(values, dtype), 0.0) + epsilon)

    delta = log(previous_losses) - log(losses)
    z = famo_softmax(logits, present)
    keep = tf.ones_like(logits) if present is None else tf.cast(tf.cast(present, dtype) > 0, dtype)
    delta = delta * keep
    grad = z * (delta - tf.reduce_sum(z * delta))
    return (grad + gamma * logits) * keep
