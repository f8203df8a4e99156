"""Gradient Vaccine (Wang et al., ICLR 2021): adaptive gradient similarity targets."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib
from keras_mtl.ops.pcgrad import pcgrad_task_orders


def gradvac_weights(grads, targets, seed=None, orders=None, mask=None):
    """GradVac as task weights, and the similarities it measured.

    Algorithm 2 of the paper: for each task i, `g_i' = g_i`; for the other
    tasks j in random order, `phi_ij = cos(g_i', g_j)`; if
    `phi_ij < phi_hat_ij` (the target),
    `g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) /
    (||g_j|| sqrt(1 - phi_hat^2)) g_j`, which sets `cos(g_i', g_j)` to
    `phi_hat_ij` exactly. The update is `sum_i g_i'`. With all targets 0 it
    is PCGrad. The balancer keeps the targets as an EMA of the measured
    `phi_ij` (`phi_hat <- (1 - beta) phi_hat + beta phi`).

    Runs on coefficients in unit directions (`g_i' = sum_k b_ik u_k`, the
    cosine matrix gives every dot product), in float64: `T^2` scalar steps
    after one Gramian.

    Args:
        grads: float tensor (T, d).
        targets: float (T, T) similarity targets `phi_hat` (row i, column j).
        seed: None, an int or a shape-(2,) int tensor for the random orders.
        orders: optional int (T, T) visiting orders (see
            `keras_mtl.ops.pcgrad_task_orders`); overrides `seed`.
        mask: optional (T,): tasks to include; the others are neither
            adjusted nor adjusted towards, get weight 0 and are never read.
            A NaN or inf in an included row gives all-NaN weights.

    Returns:
        `(weights, similarities)`: weights (T,) of the input dtype with
        `weights @ grads` the GradVac update, and the float64 (T, T) matrix
        of the measured `phi_ij` (0 for excluded or zero rows, and on the
        diagonal).

    Reference:
        Wang, Tsvetkov, Firat, Cao. "Gradient Vaccine: Investigating and
        Improving Multi-task Optimization in Massively Multilingual Models".
        ICLR 2021, Algorithm 2.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if grads.shape[0] == 0:  # no task: nothing to combine
        return tf.zeros([0], grads.dtype), tf.zeros([0, 0], "float64")
    num = gramian_lib.num_rows(grads)
    cosines, norms, wanted, poisoned = gramian_lib.included_gramian(grads, mask)
    active = tf.logical_and(wanted > 0, norms > 0)
    targets = tf.clip_by_value(tf.cast(targets, "float64"), -1.0, 1.0)
    if orders is None:
        orders = pcgrad_task_orders(num, seed)
    orders = tf.convert_to_tensor(orders, "int32")
    rows = tf.range(num)
    act = tf.cast(active, "float64")

    def body(k, coef, measured):
        j = orders[:, k]
        one_j = tf.one_hot(j, num, dtype="float64")
        dots = tf.reduce_sum(tf.matmul(coef, cosines) * one_j, axis=1)  # g_i' . u_j
        norm_i = tf.sqrt(tf.maximum(tf.reduce_sum(tf.matmul(coef, cosines) * coef, axis=1), 0.0))
        phi = tf.clip_by_value(tf.math.divide_no_nan(dots, norm_i), -1.0, 1.0)
        target = tf.reduce_sum(targets * one_j, axis=1)
        pair = tf.logical_and(
            tf.logical_and(active, tf.reduce_sum(act * one_j, axis=1) > 0),
            tf.logical_and(j != rows, norm_i > 0),
        )
        adjust = tf.logical_and(pair, phi < target)
        root_t = tf.sqrt(tf.maximum(1.0 - target * target, 0.0))
        step = norm_i * tf.math.divide_no_nan(
            target * tf.sqrt(tf.maximum(1.0 - phi * phi, 0.0)) - phi * root_t, root_t
        )
        coef = coef + tf.where(adjust, step, 0.0)[:, None] * one_j
        measured = measured + tf.where(pair, phi, 0.0)[:, None] * one_j
        return k + 1, coef, measured

    start = tf.linalg.diag(norms * act)
    _, coef, measured = tf.while_loop(
        lambda k, coef, measured: k < num,
        body,
        (tf.constant(0), start, tf.zeros_like(start)),
    )
    weights = tf.math.divide_no_nan(tf.reduce_sum(coef, axis=0), norms) * act
    return tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype), measured
