"""ExcessMTL: robust task weights from excess risks (He et al., ICML 2024), the pure math."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def excess_risks(grads, grad_sq_sum=None, mask=None, epsilon=1e-7):
    """ExcessMTL's excess-risk estimates and the new squared-gradient sums.

    The excess risk `L_t(theta) - L_t(theta*)` of each task is estimated by
    a second-order expansion around the task's optimum with a diagonal
    Hessian approximated, AdaGrad-style, by the square root of the
    accumulated squared gradients: `H_t = diag(sqrt(sum_k g_t,k^2 + eps))`,
    `r_t = g_t^T H_t^-1 g_t` (section 4 of the paper; the authors' code
    accumulates this step's gradient before the estimate). Rows of excluded
    tasks keep their sums, get `r_t = 0` and are never read.

    Args:
        grads: float tensor (T, d), this step's task gradients.
        grad_sq_sum: optional float (T, d), the accumulated squared
            gradients so far. Defaults to zeros (the first step).
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        epsilon: added under the square root. Defaults to `1e-7` (the
            authors').

    Returns:
        `(risks, new_sum)`: float (T,) of the input dtype (all-NaN when an
        included row is not finite) and the new sums (T, d).

    Reference:
        He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao. "Robust Multi-Task
        Learning with Excess Risks". ICML 2024.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if grad_sq_sum is None:
        grad_sq_sum = tf.zeros_like(grads)
    grad_sq_sum = tf.cast(grad_sq_sum, grads.dtype)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    keep = wanted > 0
    square = clean * clean
    new_sum = tf.where(keep[:, None], grad_sq_sum + square, grad_sq_sum)
    risks = tf.reduce_sum(square / tf.sqrt(new_sum + epsilon), axis=1)
    risks = tf.where(keep, risks, tf.zeros_like(risks))
    return gramian_lib.poison(risks, poisoned), new_sum


def excess_mtl_weights(weights, risks, initial_risks=None, step_size=1e-2, mask=None):
    """ExcessMTL's exponentiated-gradient step on the task weights.

    `w_t <- w_t exp(eta r_t / r_t^0)`, then renormalised (Algorithm 1 of the
    paper): tasks whose excess risk, relative to its first estimate `r^0`
    (which makes the estimates of tasks with different loss scales
    comparable), is largest gain weight; tasks that are already fitted (or
    only noisy: their loss is high but their excess risk low) do not. The
    step is taken in log space (stable for any risk scale) and the included
    tasks keep their total weight, so with all tasks included the weights
    keep summing to what they summed to (T in the balancer). Excluded tasks
    keep their weight and are never read.

    Args:
        weights: float (T,), the current weights (> 0).
        risks: float (T,), this step's excess-risk estimates (`excess_risks`).
        initial_risks: optional float (T,), each task's first estimate; the
            ratio is 0 where it is 0. Defaults to no normalisation.
        step_size: `eta >= 0`. Defaults to `1e-2` (the authors').
        mask: optional bool/float (T,): tasks to include. Defaults to all.

    Returns:
        The new weights, float (T,) of `weights`' dtype.

    Example:

    >>> keras_mtl.ops.excess_mtl_weights([1.0, 1.0], [2.0, 0.0], step_size=0.5).numpy()
    array([1.4621172 , 0.53788286], dtype=float32)
    """
    if not step_size >= 0:
        raise ValueError(
            "Invalid value received for argument `step_size`. Expected a number "
            f">= 0. Received: step_size={step_size!r}"
        )
    weights = tf.convert_to_tensor(weights)
    dtype = weights.dtype
    num = gramian_lib.num_rows(weights)
    keep = gramian_lib.task_mask(mask, num) > 0
    risks = tf.where(keep, tf.cast(risks, "float64"), 0.0)
    finite = tf.reduce_all(tf.math.is_finite(risks))
    if initial_risks is not None:
        initial = tf.where(keep, tf.cast(initial_risks, "float64"), 0.0)
        risks = tf.where(initial != 0, tf.math.divide_no_nan(risks, initial), 0.0)
    old = tf.where(keep, tf.cast(weights, "float64"), 0.0)
    mass = tf.reduce_sum(old)
    minus_inf = tf.fill(tf.shape(old), tf.constant(-float("inf"), "float64"))
    logits = tf.where(keep & (old > 0), tf.math.log(tf.maximum(old, 1e-300)) + step_size * risks,
                      minus_inf)
    logits = tf.where(finite, logits, tf.fill(tf.shape(old), tf.constant(float("nan"), "float64")))
    shifted = logits - tf.reduce_max(tf.where(keep & (old > 0), logits, minus_inf))
    share = tf.where(keep & (old > 0), tf.exp(shifted), 0.0)
    new = mass * tf.math.divide_no_nan(share, tf.reduce_sum(share))
    new = tf.where(finite, new, tf.fill(tf.shape(new), tf.constant(float("nan"), "float64")))
    return tf.cast(tf.where(keep | ~finite, new, tf.cast(weights, "float64")), dtype)
