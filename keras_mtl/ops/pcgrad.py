"""PCGrad: gradient surgery (Yu et al., NeurIPS 2020)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def _seed_pair(seed):
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank == 0:
        return tf.stack([tf.cast(seed, "int64"), tf.constant(0, "int64")])
    if seed.shape.rank != 1 or seed.shape[0] != 2:
        raise ValueError(
            "Invalid value received for argument `seed`. Expected None, an "
            f"integer or a shape-(2,) integer tensor. Received: seed={seed}"
        )
    return tf.cast(seed, "int64")


def random_scores(shape, seed=None):
    """Uniform [0, 1) numbers: stateless (deterministic) when `seed` is given.

    `seed` is None (the global TF generator), an int, or a shape-(2,) integer
    tensor such as `(seed, step)`, which the balancers use so that every
    replica of a distributed step draws the same numbers.
    """
    if seed is None:
        return tf.random.uniform(shape, dtype="float64")
    return tf.random.stateless_uniform(shape, seed=_seed_pair(seed), dtype="float64")


def pcgrad_task_orders(num_tasks, seed=None):
    """The random visiting orders of PCGrad: an int32 matrix (T, T).

    Row `i` is a random permutation of the tasks; task `i` projects its
    gradient on the others in that order (skipping itself), as in
    Algorithm 1 ("for g_j in B \\ g_i in random order").
    """
    scores = random_scores([num_tasks, num_tasks], seed)
    return tf.cast(tf.argsort(scores, axis=1), "int32")


def pcgrad_weights(grads, seed=None, orders=None, mask=None):
    """PCGrad written as task weights: `pcgrad(grads) = weights @ grads`.

    Every projected gradient `g_i^PC` stays in the span of the task gradients,
    so the algorithm runs on coefficients: `g_i^PC = c_i @ grads` and each
    dot product `g_i^PC . g_j = (c_i M)_j` with the Gramian `M = G G^T`
    (float64). Cost: one Gramian (T^2 d) plus T^3 scalar work, instead of
    T^2 products of length d; the weights are `sum_i c_i` (the IMTL paper's
    `1 (I + C N)`, eq. 33).

    Args:
        grads: float tensor (T, d).
        seed: None, an int or a shape-(2,) int tensor for the random orders.
        orders: optional int (T, T) orders (see `pcgrad_task_orders`);
            overrides `seed`.
        mask: optional (T,): tasks to include. The others get weight 0, are
            never projected on, and their rows are never read (they may hold
            NaN). The orders are drawn over all T tasks either way, so the
            included tasks see the same relative orders as when the
            excluded rows are zero.

    Returns:
        A tensor (T,) of the input dtype: 1 for a single task, empty for
        T = 0, all ones when d = 0 (nothing conflicts), all NaN when an
        included row holds a NaN or inf.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    num = gramian_lib.num_rows(grads)
    if isinstance(num, int) and num == 0:  # XLA cannot slice an empty order
        return tf.zeros([0], grads.dtype)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    gram = gramian_lib.gramian(clean)
    if orders is None:
        orders = pcgrad_task_orders(num, seed)
    orders = tf.convert_to_tensor(orders, "int32")
    diag = tf.linalg.diag_part(gram)
    rows = tf.range(num)

    def body(k, coef):
        j = orders[:, k]  # the task each row i projects on at step k
        dots = tf.reduce_sum(coef * tf.gather(gram, j), axis=1)  # g_i^PC . g_j
        conflict = tf.logical_and(dots < 0, j != rows)
        factor = tf.where(
            conflict, tf.math.divide_no_nan(dots, tf.gather(diag, j)), 0.0
        )
        coef = coef - factor[:, None] * tf.one_hot(j, num, dtype="float64")
        return k + 1, coef

    _, coef = tf.while_loop(
        lambda k, coef: k < num,
        body,
        (tf.constant(0), tf.eye(num, dtype="float64")),
    )
    weights = tf.reduce_sum(coef, axis=0) * wanted
    return tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype)


def pcgrad(grads, seed=None, mask=None):
    """PCGrad's combined gradient (d,): the SUM of the projected gradients.

    For each task i (Algorithm 1 of the paper): `g_i^PC = g_i`; for the other
    tasks j in random order, if `g_i^PC . g_j < 0` then
    `g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j`. Returns `sum_i g_i^PC` (the
    paper's update, not the mean). Two conflicting gradients give a result
    with a non-negative inner product with both; non-conflicting gradients
    are summed unchanged. Zero gradients are never projected on.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        seed: None (global TF generator), an int, or a shape-(2,) int tensor
            such as `(seed, step)`: the random task orders are then a
            deterministic function of it.
        mask: optional (T,): tasks to include (see `pcgrad_weights`); the
            others' rows are never read.

    Returns:
        A tensor (d,) of the input dtype: the gradient itself for one task,
        zeros for T = 0.

    Example:

    >>> keras_mtl.ops.pcgrad([[1.0, 0.0], [-1.0, 1.0]], seed=0).numpy()
    array([0.5, 1.5], dtype=float32)

    Reference:
        Yu, Kumar, Gupta, Levine, Hausman, Finn. "Gradient Surgery for
        Multi-Task Learning". NeurIPS 2020.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = pcgrad_weights(grads, seed=seed, mask=mask)
    return gramian_lib.combine(grads, weights, mask)
