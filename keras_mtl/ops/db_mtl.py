"""DB-MTL: dual-balancing multi-task learning (Lin et al., 2023), the pure math."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def row_norms(grads):
    """Euclidean norms (T,) of the rows of `grads`, in float64, scale-robust.

    Each row is divided by its largest absolute entry before squaring, so rows
    anywhere in the float range neither overflow nor underflow.
    """
    grads = tf.convert_to_tensor(grads)
    peak = tf.maximum(tf.reduce_max(tf.abs(grads), axis=1), 0.0)
    scaled = tf.math.divide_no_nan(grads, peak[:, None])
    unit = tf.sqrt(tf.cast(tf.reduce_sum(scaled * scaled, axis=1), "float64"))
    return unit * tf.cast(peak, "float64")


def db_mtl_weights(grads, mask=None):
    """DB-MTL's gradient-magnitude balance: `alpha_t = max_s ||g_s|| / ||g_t||`.

    `alpha @ grads` sums the task gradients after each is rescaled to the
    largest norm among them, so every task contributes
    a gradient of the same magnitude and none is neglected (the paper's
    gradient-magnitude balance). The balancer applies it to its EMA of the
    log-loss gradients (`db_mtl_ema`).

    Zero rows and masked-out tasks get weight 0 (a masked-out row is never
    read). A NaN or inf in an included row gives all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        mask: optional bool/float (T,): tasks to include. Defaults to all.

    Returns:
        A tensor (T,) of the input dtype.

    Example:

    >>> keras_mtl.ops.db_mtl_weights([[3.0, 4.0], [0.0, 0.5]]).numpy()
    array([ 1., 10.], dtype=float32)

    Reference:
        Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok. "Dual-Balancing for
        Multi-Task Learning". arXiv:2308.12029, 2023, section 3.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if grads.shape[0] == 0:  # no task: nothing to combine
        return tf.zeros([0], grads.dtype)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    norms = row_norms(clean) * wanted
    weights = tf.math.divide_no_nan(tf.reduce_max(norms), norms)
    return tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype)


def db_mtl(grads, mask=None):
    """The DB-MTL direction (d,): `db_mtl_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    return gramian_lib.combine(grads, db_mtl_weights(grads, mask=mask), mask)


def db_mtl_ema(buffer, grads, losses, counts, beta=0.9, beta_sigma=0.0, mask=None,
               epsilon=1e-8):
    """DB-MTL's loss-scale balance and gradient EMA (one step).

    The loss-scale balance trains on `log(L_t + eps)`, whose gradient is
    `g_t / (L_t + eps)` (`grads` hold the raw `g_t = dL_t/dtheta`). Each
    task's buffer follows it by an exponential moving average with the
    decaying rate `beta_k = beta / k^beta_sigma` (`k = counts_t`, the number
    of steps the task took part in, this one included):
    `buffer_t <- g_t / (L_t + eps) + beta_k (buffer_t - g_t / (L_t + eps))`,
    as in the authors' code. Rows of excluded tasks keep their buffer and
    are never read.

    Args:
        buffer: float (T, d), the EMA buffers (zeros before the first step).
        grads: float (T, d), this step's raw task gradients.
        losses: float (T,), this step's task losses (>= 0).
        counts: (T,) steps each task took part in, this one included (>= 1
            for the included tasks).
        beta: EMA rate. Defaults to `0.9` (the authors').
        beta_sigma: decay exponent of the rate. Defaults to `0.0` (constant
            rate, the authors' default).
        mask: optional bool/float (T,): tasks to update. Defaults to all.
        epsilon: added to the losses inside the logarithm. Defaults to `1e-8`.

    Returns:
        The new buffer, float (T, d) of the buffer's dtype.
    """
    buffer = tf.convert_to_tensor(buffer)
    grads = tf.cast(gramian_lib.as_gradient_matrix(grads), buffer.dtype)
    num = gramian_lib.num_rows(grads)
    keep = gramian_lib.task_mask(mask, num) > 0
    losses = tf.cast(losses, buffer.dtype)
    counts = tf.maximum(tf.cast(counts, buffer.dtype), 1.0)
    rate = beta / tf.pow(counts, beta_sigma)
    clean = tf.where(keep[:, None], grads, tf.zeros_like(grads))
    log_grads = clean / (tf.maximum(tf.where(keep, losses, 0.0), 0.0) + epsilon)[:, None]
    new = log_grads + rate[:, None] * (buffer - log_grads)
    return tf.where(keep[:, None], new, buffer)
