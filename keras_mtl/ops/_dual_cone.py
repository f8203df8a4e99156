"""Projection onto the dual cone of the task gradients (UPGrad, DualProj).

The dual cone of the rows of J (T, d) is `{x : J x >= 0}`: the directions that
conflict with no task. The projection of `x = J^T u` onto it is `J^T v`, with
`v = argmin_{v >= u} v^T (J J^T) v` (Quinton & Rey 2024, Proposition 1): a
small quadratic program on the T x T Gramian. Written `v = u + lambda`, it is
the non-negative least-squares problem
`min_{lambda >= 0} 1/2 lambda^T M lambda + lambda^T M u`, solved here by the
Lawson-Hanson active-set method (finite termination), in unit directions for
scale robustness, batched over several `u` at once.
"""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def dual_cone_coefficients(cosines, starts, active, max_iters, tolerance, noise):
    """Solves the dual-cone projection QP in unit directions, batched.

    With unit rows `U` (`U U^T = cosines`) and `x = U^T c`, finds
    `beta = c + mu`, `mu >= 0` (zero off `active`) minimising
    `beta^T K beta`: `U^T beta` is the projection of `x` onto
    `{y : U y >= 0}` restricted to the active rows.

    Args:
        cosines: float64 (T, T) cosine matrix `K`.
        starts: float64 (B, T): one start `c` per row.
        active: bool (T,): the constraints that count (non-zero, unmasked
            rows).
        max_iters: int32 scalar, cap on active-set iterations.
        tolerance: float64 scalar, relative optimality tolerance: at the end
            `(K beta)_t >= -tolerance * (max|c| + max|beta|)` for every
            active t.
        noise: relative rounding level of `cosines` (e.g. `10 T eps` of the
            gradients' dtype): a ridge of this size keeps the passive-set
            systems positive definite for (nearly) parallel gradients, and
            violations below it are not acted upon.

    Returns:
        float64 (B, T): `beta`, and the int32 iteration count.
    """
    num = gramian_lib.num_rows(cosines)
    batch = gramian_lib.num_rows(starts)
    act = tf.cast(active, "float64")
    k = cosines * act[:, None] * act[None, :]
    eye = tf.eye(num, dtype="float64")
    rhs = -tf.matmul(starts, k)  # -(K c), (B, T)
    scale = tf.reduce_max(tf.abs(starts), axis=1, keepdims=True)
    tolerance = tf.maximum(tf.cast(tolerance, "float64"), noise)
    ridge = tf.cast(noise, "float64")
    inf = tf.constant(float("inf"), "float64")

    def passive_solution(passive):
        p = tf.cast(passive, "float64")  # (B, T)
        mat = (
            k[None] * p[:, :, None] * p[:, None, :]
            + eye[None] * (1.0 - p)[:, :, None]
            + ridge * eye[None] * p[:, :, None]
        )
        chol = tf.linalg.cholesky(mat)
        z = tf.linalg.cholesky_solve(chol, (rhs * p)[:, :, None])[:, :, 0]
        return z * p

    def cond(it, mu, passive, done):
        return tf.logical_and(it < max_iters, tf.logical_not(tf.reduce_all(done)))

    def body(it, mu, passive, done):
        z = passive_solution(passive)
        feasible = tf.reduce_all(tf.logical_or(tf.logical_not(passive), z > 0), axis=1)
        # Feasible: accept z, then add the most violated constraint (if any).
        grad = tf.matmul(starts + z, k)  # K beta at mu = z
        candidates = tf.logical_and(active[None, :], tf.logical_not(passive))
        violation = tf.where(candidates, -grad, -inf)
        enter = tf.argmax(violation, axis=1, output_type="int32")
        worst = tf.reduce_max(violation, axis=1)
        size = scale[:, 0] + tf.reduce_max(tf.abs(starts + z), axis=1)
        optimal = tf.logical_not(worst > tolerance * size)
        entering = tf.one_hot(enter, num, on_value=True, off_value=False)
        add_passive = tf.logical_or(
            passive, tf.logical_and(entering, tf.logical_not(optimal)[:, None])
        )
        # Infeasible: move from mu towards z until a passive entry hits 0.
        blocking = tf.logical_and(passive, z <= 0)
        ratio = tf.where(blocking, tf.math.divide_no_nan(mu, mu - z), inf)
        step = tf.reduce_min(ratio, axis=1, keepdims=True)
        step = tf.where(tf.math.is_finite(step), step, tf.zeros_like(step))
        moved = mu + step * (z - mu)
        dropped = tf.logical_or(
            tf.logical_and(blocking, ratio <= step), moved <= 0
        )
        keep_passive = tf.logical_and(passive, tf.logical_not(dropped))
        moved = tf.where(keep_passive, moved, tf.zeros_like(moved))

        f = feasible[:, None]
        new_mu = tf.where(f, z, moved)
        new_passive = tf.where(f, add_passive, keep_passive)
        new_done = tf.logical_or(done, tf.logical_and(feasible, optimal))
        # Rows already done keep their state.
        new_mu = tf.where(done[:, None], mu, new_mu)
        new_passive = tf.where(done[:, None], passive, new_passive)
        return it + 1, new_mu, new_passive, new_done

    mu0 = tf.zeros_like(starts)
    passive0 = tf.zeros(tf.shape(starts), "bool")
    done0 = tf.zeros([batch], "bool")
    iters, mu, _, _ = tf.while_loop(cond, body, (tf.constant(0), mu0, passive0, done0))
    return (starts + mu) * act[None, :], iters


def default_max_iters(num_tasks):
    """Active-set iteration cap: each constraint enters and leaves a few times."""
    return 10 * max(int(num_tasks or 1), 1) + 10
