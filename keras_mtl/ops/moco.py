"""MoCo: tracked multi-objective gradients (Fernando et al., ICLR 2023), the pure math."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def simplex_projection(values, mask=None):
    """Euclidean projection of `values` onto the probability simplex.

    `argmin_{x >= 0, sum x = 1} ||x - v||` over the included entries (0 for
    the others, which are never read), by the sort-and-threshold algorithm:
    `x = max(v - theta, 0)` with the threshold `theta` that makes `x` sum to 1.
    A NaN or inf in an included entry gives all-NaN values.

    Args:
        values: float (T,).
        mask: optional bool/float (T,): entries to include. Defaults to all.

    Returns:
        float64 (T,).
    """
    values = tf.cast(values, "float64")
    num = gramian_lib.num_rows(values)
    keep = gramian_lib.task_mask(mask, num) > 0
    poisoned = tf.reduce_any(tf.logical_and(keep, tf.logical_not(tf.math.is_finite(values))))
    values = tf.where(keep & tf.math.is_finite(values), values, tf.zeros_like(values))
    count = tf.reduce_sum(tf.cast(keep, "int32"))
    minus_inf = tf.fill(tf.shape(values), tf.constant(-float("inf"), "float64"))
    ranks = tf.range(1, num + 1)
    valid = ranks <= count
    ordered = tf.where(valid, tf.sort(tf.where(keep, values, minus_inf), direction="DESCENDING"),
                       0.0)
    sums = tf.cumsum(ordered)
    j = tf.cast(ranks, "float64")
    support = tf.logical_and(valid, ordered - (sums - 1.0) / j > 0)
    size = tf.reduce_max(tf.where(support, j, 0.0))
    theta = tf.math.divide_no_nan(tf.reduce_sum(tf.where(j == size, sums, 0.0)) - 1.0, size)
    out = tf.where(keep, tf.maximum(values - theta, 0.0), 0.0)
    return gramian_lib.poison(out, poisoned)


def moco_weights(grads, weights=None, gamma=0.1, rho=0.0, mask=None):
    """MoCo's task weights: one projected gradient step on the simplex.

    `lambda <- Pi_simplex(lambda - gamma (Y Y^T + rho I) lambda)` (eq. 3.4
    of the paper, `Y = grads`, the tracked task gradients): a step on the
    min-norm objective `1/2 ||Y^T lambda||^2 + rho/2 ||lambda||^2` of MGDA,
    so that iterating it with fixed `Y` converges to the (regularised) MGDA
    weights. The update direction is `lambda @ grads`. The Gramian is taken
    in float64 (scale-robust).

    Excluded tasks are left out of the step and the simplex and get 0; the
    included part of `weights` is renormalised to sum to 1 first (uniform
    when it sums to 0). A NaN or inf in an included row gives all-NaN
    weights.

    Args:
        grads: float tensor (T, d), the tracked gradients `Y`, one per row.
        weights: optional float (T,), the current `lambda`. Defaults to
            uniform.
        gamma: step size (a number or a scalar tensor). Defaults to `0.1`
            (the authors' value at step 1).
        rho: regularisation `rho >= 0`. Defaults to `0.0` (the authors').
        mask: optional bool/float (T,): tasks to include. Defaults to all.

    Returns:
        A tensor (T,) of the input dtype, on the simplex of the included tasks.

    Example:

    >>> keras_mtl.ops.moco_weights([[1.0, 0.0], [0.0, 3.0]], gamma=0.1).numpy()
    array([0.7, 0.3], dtype=float32)

    Reference:
        Fernando, Shen, Liu, Chaudhury, Murugesan, Chen. "Mitigating
        Gradient Bias in Multi-objective Learning: A Provably Convergent
        Approach". ICLR 2023, Algorithm 1.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if any(isinstance(v, (int, float)) and not v >= 0 for v in (gamma, rho)):
        raise ValueError(
            "Invalid values received for arguments `gamma` and `rho`. Expected "
            f"numbers >= 0. Received: gamma={gamma!r}, rho={rho!r}"
        )
    if grads.shape[0] == 0:  # no task: nothing to combine
        return tf.zeros([0], grads.dtype)
    num = gramian_lib.num_rows(grads)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    gram = gramian_lib.gramian(clean)
    if weights is None:
        start = wanted
    else:
        start = tf.where(wanted > 0, tf.cast(weights, "float64"), 0.0)
    mass = tf.reduce_sum(start)
    start = tf.where(mass > 0, tf.math.divide_no_nan(start, mass),
                     tf.math.divide_no_nan(wanted, tf.reduce_sum(wanted)))
    eye = tf.eye(num, dtype="float64")
    gamma = tf.cast(gamma, "float64")
    step = start - gamma * tf.linalg.matvec(gram + rho * eye, start)
    new = simplex_projection(step, wanted)
    return tf.cast(gramian_lib.poison(new, poisoned), grads.dtype)


def moco(grads, weights=None, gamma=0.1, rho=0.0, mask=None):
    """The MoCo direction (d,): `moco_weights(grads, weights) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    new = moco_weights(grads, weights, gamma=gamma, rho=rho, mask=mask)
    return gramian_lib.combine(grads, new, mask)


def moco_track(tracked, grads, counts, beta=0.5, beta_sigma=0.5, mask=None):
    """MoCo's gradient tracking: `y_t <- y_t - beta_k (y_t - g_t)` (one step).

    Each task's estimate `y_t` of its true gradient moves towards this
    step's stochastic gradient with the decaying rate
    `beta_k = beta / k^beta_sigma` (`k = counts_t`, the steps the task took
    part in, this one included): with `beta_k -> 0` the estimates' bias
    vanishes, the paper's remedy for the biased stochastic MGDA direction
    (eq. 3.3). Rows of excluded tasks keep their estimate and are never
    read.

    Args:
        tracked: float (T, d), the estimates `y` (zeros before the first step).
        grads: float (T, d), this step's task gradients.
        counts: (T,) steps each task took part in, this one included.
        beta: rate. Defaults to `0.5` (the authors').
        beta_sigma: decay exponent of the rate. Defaults to `0.5`.
        mask: optional bool/float (T,): tasks to update. Defaults to all.

    Returns:
        The new estimates, float (T, d) of `tracked`'s dtype.
    """
    tracked = tf.convert_to_tensor(tracked)
    grads = tf.cast(gramian_lib.as_gradient_matrix(grads), tracked.dtype)
    keep = gramian_lib.task_mask(mask, gramian_lib.num_rows(grads)) > 0
    counts = tf.maximum(tf.cast(counts, tracked.dtype), 1.0)
    rate = beta / tf.pow(counts, beta_sigma)
    clean = tf.where(keep[:, None], grads, tf.zeros_like(grads))
    return tf.where(keep[:, None], tracked - rate[:, None] * (tracked - clean), tracked)
