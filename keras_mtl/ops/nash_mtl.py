"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib

# Least ridge on the cosine matrix: bounds the weights when 0 is in the cone
# of the gradients (a Pareto-stationary point, where no positive solution
# exists). It is raised to the rounding level of the input dtype.
_RIDGE = 1e-10


def nash_mtl_weights(grads, mask=None, normalize=False, max_iters=100, tolerance=1e-10):
    """Nash-MTL weights: the positive solution of `G G^T alpha = 1 / alpha`.

    The Nash bargaining solution of the paper (Claim 3.1): the update
    `d = alpha @ grads` with `alpha > 0` such that every task's share
    `alpha_t (g_t . d)` equals 1 (so `||d||^2 = T`). It is the unique
    minimiser of the strictly convex, self-concordant
    `f(alpha) = 1/2 alpha^T M alpha - sum_t log alpha_t` (`M = G G^T`), whose
    stationarity condition is the paper's equation. Solved in the graph by
    damped Newton steps `alpha -= H^-1 grad f / (1 + lambda)` (`lambda` the
    Newton decrement), which stay positive and converge quadratically, in
    float64 and in unit directions: writing `alpha_t = beta_t / ||g_t||`,
    the equation is `K beta = 1 / beta` with the cosine matrix `K`, so rows
    scaled from 1e-8 to 1e8 cost nothing. (The authors solve a sequence of
    convex programs with cvxpy instead.) A tiny ridge on `K` (`1e-10 I`, or
    `10 T eps` of a lower-precision input dtype, so that rounding cannot make
    `K` indefinite) keeps the weights finite at Pareto-stationary points (0
    in the cone of the gradients, e.g. opposite gradients), where no positive
    solution exists.

    Zero rows and masked-out tasks get weight 0 (`alpha_t (g_t . d) = 1` is
    impossible for them; a masked-out row is never read). A NaN or inf in an
    included row gives all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        normalize: solve `(M / ||M||_F) alpha = 1 / alpha` instead, as the
            authors' code does (the same direction, `||M||_F^{1/2}` times
            longer). Defaults to `False` (the paper's equation).
        max_iters: Newton iteration cap. Defaults to `100`.
        tolerance: stop when the Newton decrement is below it. Defaults to
            `1e-10`.

    Returns:
        A tensor (T,) of the input dtype, positive on the included non-zero
        rows.

    Example:

    >>> keras_mtl.ops.nash_mtl_weights([[1.0, 0.0], [0.0, 2.0]]).numpy().round(4)
    array([1. , 0.5], dtype=float32)

    Reference:
        Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya.
        "Multi-Task Learning as a Bargaining Game". ICML 2022, section 3.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    ridge = max(_RIDGE, gramian_lib.default_rcond(grads, grads.shape[0] or 1))

    def solve(cosines, norms, wanted):
        active = wanted * tf.cast(norms > 0, "float64")
        beta = nash_unit_solution(cosines, active, max_iters, tolerance, ridge)
        if normalize:
            gram = norms[:, None] * cosines * norms[None, :]
            beta = beta * tf.sqrt(tf.norm(gram))
        return tf.math.divide_no_nan(beta, norms) * active

    return gramian_lib.weigh_rows(grads, mask, solve)


def nash_mtl(grads, mask=None, normalize=False):
    """The Nash-MTL direction (d,): `nash_mtl_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = nash_mtl_weights(grads, mask=mask, normalize=normalize)
    return gramian_lib.combine(grads, weights, mask)


def nash_unit_solution(cosines, active, max_iters=100, tolerance=1e-10, ridge=_RIDGE):
    """Positive `beta` with `(K + ridge I) beta = 1 / beta` on `active` (float64)."""
    cosines = tf.convert_to_tensor(cosines, "float64")
    active = tf.convert_to_tensor(active, "float64")
    num = gramian_lib.num_rows(cosines)
    eye = tf.eye(num, dtype="float64")
    k = cosines * active[:, None] * active[None, :] + ridge * eye
    # Start on the ray s * 1 at its own optimum, s^2 = n / 1^T K 1.
    ones_k_ones = tf.reduce_sum(k)
    count = tf.reduce_sum(active)
    s = tf.sqrt(tf.math.divide_no_nan(count, ones_k_ones))
    s = tf.where(s > 0, s, tf.ones_like(s))
    beta0 = tf.ones([num], "float64") * s

    def newton(beta):
        grad = (tf.linalg.matvec(k, beta) - 1.0 / beta) * active
        hess = (
            k * active[:, None] * active[None, :]
            + tf.linalg.diag(active / (beta * beta) + (1.0 - active))
        )
        step = tf.linalg.cholesky_solve(tf.linalg.cholesky(hess), grad[:, None])[:, 0]
        decrement = tf.sqrt(tf.maximum(tf.reduce_sum(grad * step), 0.0))
        return step, decrement

    def cond(it, beta, decrement):
        return tf.logical_and(it < max_iters, decrement > tolerance)

    def body(it, beta, decrement):
        step, decrement = newton(beta)
        return it + 1, beta - step / (1.0 + decrement), decrement

    _, beta, _ = tf.while_loop(
        cond, body, (tf.constant(0), beta0, tf.constant(float("inf"), "float64"))
    )
    return beta * active
