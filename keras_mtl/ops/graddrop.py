"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib
from keras_mtl.ops.pcgrad import random_scores


def graddrop(grads, seed=None, leak=0.0, mask=None, return_kept=False):
    """GradDrop's combined gradient (d,): one gradient sign kept per coordinate.

    Section 3 of the paper: per coordinate, the Gradient Positive Sign
    Purity `P = 1/2 (1 + sum_i g_i / sum_i |g_i|)` is in [0, 1]; with one
    uniform draw `U` per coordinate, task i's component is kept when
    `P > U` and `g_i > 0`, or `P < U` and `g_i < 0`: all positive components
    survive with probability P, all negative ones otherwise, so every
    coordinate of the result has one consistent sign. The update is
    `sum_i (l_i + (1 - l_i) M_i) g_i` with the leak `l_i` (0: pure GradDrop,
    1: the plain sum). The paper applies it to the gradients at a shared
    activation (`mode="features"` of the balancer), element by element.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        seed: None (global TF generator), an int, or a shape-(2,) int tensor
            such as `(seed, step)`: the draws `U` are then a deterministic
            function of it.
        leak: scalar or (T,) leak `l_i` in [0, 1]. Defaults to `0.0`.
        mask: optional (T,): tasks to include; the others contribute nothing.
        return_kept: also return the share of each task's gradient mass
            `sum |kept g_i| / sum |g_i|` (T,), float32.

    Returns:
        A tensor (d,) of the input dtype (and the kept shares).

    Example:

    >>> keras_mtl.ops.graddrop([[1.0, -2.0], [3.0, -1.0]], seed=0).numpy()
    array([ 4., -3.], dtype=float32)

    Reference:
        Chen, Ngiam, Huang, Luong, Kretzschmar, Chai, Anguelov. "Just Pick a
        Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout".
        NeurIPS 2020, Algorithm 1.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    wanted = gramian_lib.task_mask(mask, tf.shape(grads)[0]) > 0
    grads_in = tf.where(wanted[:, None], grads, tf.zeros_like(grads))
    g = tf.cast(grads_in, "float64")
    purity = 0.5 * (1.0 + tf.math.divide_no_nan(tf.reduce_sum(g, 0), tf.reduce_sum(tf.abs(g), 0)))
    draws = random_scores(tf.shape(grads)[1:], seed)
    keep = tf.logical_or(
        tf.logical_and(purity[None, :] > draws[None, :], g > 0),
        tf.logical_and(purity[None, :] < draws[None, :], g < 0),
    )
    leak = tf.cast(tf.broadcast_to(tf.cast(leak, "float64"), tf.shape(g)[:1]), "float64")
    factor = leak[:, None] + (1.0 - leak[:, None]) * tf.cast(keep, "float64")
    out = tf.cast(tf.reduce_sum(factor * g, 0), grads.dtype)
    if not return_kept:
        return out
    kept = tf.math.divide_no_nan(
        tf.reduce_sum(tf.abs(factor * g), 1), tf.reduce_sum(tf.abs(g), 1)
    )
    return out, tf.cast(kept, "float32")
