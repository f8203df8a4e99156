"""FairGrad: alpha-fair resource allocation between tasks (Ban & Ji, ICML 2024)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib

_RIDGE = 1e-10
_BACKTRACKS = 30


def fairgrad_weights(grads, alpha=2.0, mask=None, max_iters=100, tolerance=1e-10):
    """FairGrad weights: the positive solution of `G G^T w = w^(-1/alpha)`.

    The update `d = w @ grads` maximises the alpha-fair utility
    `sum_t (g_t . d)^(1-alpha) / (1-alpha)` (log for alpha = 1) of the
    tasks' first-order loss decreases `g_t . d`; its optimality condition is
    `(g_t . d) = w_t^(-1/alpha)` for every task (the paper's eq. 9). `alpha = 1`
    is Nash-MTL's equation (proportional fairness), `alpha -> infinity` tends
    to max-min fairness. The weights minimise the strictly convex
    `1/2 w^T M w - sum_t h(w_t)` with `h' = w^(-1/alpha)`; solved in the graph
    by Newton steps taken multiplicatively (`w * exp(t dw / w)`, positive for
    every t) with a backtracking line search on every task's relative
    residual (30 halvings evaluated at once), in float64 and unit directions
    (`w_t = beta_t / ||g_t||`, so `(K beta)_t = ||g_t||^(1/alpha - 1)
    beta_t^(-1/alpha)` with the cosine matrix `K`). The authors use SciPy's
    `least_squares` instead. A ridge `1e-10 I` on `K` (raised to the
    rounding level of lower-precision inputs) keeps the weights finite at
    Pareto-stationary points.

    Zero rows and masked-out tasks get weight 0 (a masked-out row is never
    read); a NaN or inf in an included row gives all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        alpha: fairness level, > 0. Defaults to `2.0` (the authors' runs on
            CelebA and QM9).
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        max_iters: Newton iteration cap. Defaults to `100`.
        tolerance: stop when every task's equation holds to this relative
            residual. Defaults to `1e-10`.

    Returns:
        A tensor (T,) of the input dtype, positive on the included non-zero
        rows.

    Example:

    >>> keras_mtl.ops.fairgrad_weights([[1.0, 0.0], [0.0, 2.0]], alpha=1.0).numpy().round(4)
    array([1. , 0.5], dtype=float32)

    Reference:
        Ban, Ji. "Fair Resource Allocation in Multi-Task Learning". ICML 2024,
        section 4.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if not alpha > 0:
        raise ValueError(
            "Invalid value received for argument `alpha`. Expected a number > 0. "
            f"Received: alpha={alpha!r}"
        )
    ridge = max(_RIDGE, gramian_lib.default_rcond(grads, grads.shape[0] or 1))

    def solve(cosines, norms, wanted):
        active = wanted * tf.cast(norms > 0, "float64")
        safe_norms = tf.where(active > 0, norms, tf.ones_like(norms))
        coeff = tf.pow(safe_norms, 1.0 / alpha - 1.0) * active
        beta = _solve(cosines, coeff, active, float(alpha), ridge, max_iters, tolerance)
        return tf.math.divide_no_nan(beta, norms) * active

    return gramian_lib.weigh_rows(grads, mask, solve)


def fairgrad(grads, alpha=2.0, mask=None):
    """The FairGrad direction (d,): `fairgrad_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = fairgrad_weights(grads, alpha=alpha, mask=mask)
    return gramian_lib.combine(grads, weights, mask)


def _solve(cosines, coeff, active, alpha, ridge, max_iters, tolerance):
    """Positive beta with (K + ridge) beta = coeff * beta^(-1/alpha) on `active`.

    Newton steps on `f(beta) = 1/2 beta^T K beta - sum_t coeff_t h(beta_t)`;
    the line search and the stopping rule use the residual of every task's
    equation relative to its own scale `s_t = coeff_t^(alpha/(alpha+1))`
    (the solution of the diagonal system), `R = grad f / s`: the Newton
    direction of f decreases `||R||^2` at the rate `-2 ||R||^2`, and tasks
    whose gradient norms differ by many decades converge alike (an Armijo
    rule on f itself would not see the small tasks). It stops when every
    equation holds to `tolerance`, relative to its right-hand side.
    """
    num = gramian_lib.num_rows(cosines)
    eye = tf.eye(num, dtype="float64")
    k = cosines * active[:, None] * active[None, :] + ridge * eye
    on = active > 0
    safe_coeff = tf.where(on, coeff, tf.ones_like(coeff))
    scale = tf.pow(safe_coeff, alpha / (alpha + 1.0))

    def residual(beta):  # beta (..., T) -> relative residual (..., T)
        safe = tf.where(on, beta, tf.ones_like(beta))
        grad = tf.linalg.matvec(k, beta) - coeff * tf.pow(safe, -1.0 / alpha)
        return tf.where(on, grad / scale, tf.zeros_like(grad))

    def newton(beta):
        safe = tf.where(on, beta, tf.ones_like(beta))
        grad = residual(beta) * scale
        curv = coeff / alpha * tf.pow(safe, -1.0 / alpha - 1.0)
        hess = k * active[:, None] * active[None, :] + tf.linalg.diag(
            curv * active + (1.0 - active)
        )
        # Jacobi-scaled solve: the diagonal spans many decades when the
        # weights do, the scaled matrix has a unit diagonal.
        d = tf.math.rsqrt(tf.linalg.diag_part(hess))
        scaled = hess * d[:, None] * d[None, :]
        y = tf.linalg.cholesky_solve(tf.linalg.cholesky(scaled), (d * grad)[:, None])[:, 0]
        return -d * y

    def cond(it, beta, size):
        return tf.logical_and(it < max_iters, size > tolerance)

    def body(it, beta, size):
        step = newton(beta)
        merit = tf.reduce_sum(tf.square(residual(beta)))
        # Multiplicative steps beta * exp(t step / beta): the Newton step to
        # first order, positive for every t, and able to shrink an entry by
        # many decades at once (a weight can sit far below its own scale).
        ts = tf.pow(tf.constant(0.5, "float64"), tf.range(_BACKTRACKS, dtype="float64"))
        rate = tf.where(on, step / tf.where(on, beta, tf.ones_like(beta)), tf.zeros_like(beta))
        trials = beta[None, :] * tf.exp(tf.clip_by_value(ts[:, None] * rate[None, :], -60.0, 60.0))
        trial_merit = tf.reduce_sum(tf.square(residual(trials)), axis=-1)
        ok = trial_merit <= (1.0 - 2e-4 * ts) * merit
        first = tf.argmax(tf.cast(ok, "int32"), output_type="int32")
        t = tf.where(
            tf.reduce_any(ok),
            tf.reduce_sum(ts * tf.one_hot(first, _BACKTRACKS, dtype="float64")),
            ts[-1],
        )
        new = beta * tf.exp(tf.clip_by_value(t * rate, -60.0, 60.0))
        return it + 1, new, relative_error(new)

    def relative_error(beta):  # max_t |lhs_t / rhs_t - 1|
        safe = tf.where(on, beta, tf.ones_like(beta))
        rhs = coeff * tf.pow(safe, -1.0 / alpha)
        ratio = tf.math.divide_no_nan(tf.linalg.matvec(k, beta), rhs) - 1.0
        return tf.reduce_max(tf.where(on, tf.abs(ratio), tf.zeros_like(ratio)))

    beta0 = tf.where(on, scale, tf.ones_like(coeff))
    _, beta, _ = tf.while_loop(
        cond, body,
        (tf.constant(0), beta0, relative_error(beta0)),
    )
    return beta * active
