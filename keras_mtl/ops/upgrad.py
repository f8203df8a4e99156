"""UPGrad (Quinton & Rey 2024): the mean of the task gradients projected onto the dual cone."""

import tensorflow as tf

from keras_mtl.ops import _dual_cone
from keras_mtl.ops import _gramian as gramian_lib


def upgrad_weights(grads, mask=None, preferences=None, max_iters=None, tolerance=1e-12):
    """UPGrad weights: `sum_i p_i proj(g_i)` with `proj` onto the dual cone.

    Each task gradient `g_i` is projected onto the dual cone
    `{x : g_t . x >= 0 for all t}` of the task gradients, and the projections
    are averaged with the preference weights `p` (uniform by default):
    `A(J) = sum_i p_i J^T v_i`, `v_i = argmin_{v >= p_i e_i} v^T J J^T v`
    (Quinton & Rey 2024, eq. 5 and Proposition 1). The result conflicts with
    no task (`g_t . A >= 0` for all t), equals the weighted mean when no pair
    of gradients conflicts, and is linear under scaling of all gradients.
    The small QPs are solved together by an active-set method in float64 on
    the cosine matrix (unit directions), so rows scaled from 1e-8 to 1e8 are
    handled like unit rows: the i-th projection is `||g_i||` times that of
    `u_i = g_i / ||g_i||`.

    Zero rows and masked-out tasks constrain nothing and get weight 0 (a
    masked-out row is never read); a NaN or inf in an included row gives
    all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        preferences: optional (T,) non-negative weights `p` of the projected
            gradients. Defaults to `1 / T` over the included tasks.
        max_iters: active-set iteration cap. Defaults to `10 T + 10`.
        tolerance: relative tolerance on the cone constraints. Defaults to
            `1e-12`.

    Returns:
        A tensor (T,) of the input dtype; `weights @ grads` is the UPGrad
        direction.

    Example:

    >>> keras_mtl.ops.upgrad_weights([[1.0, 0.0], [-1.0, 1.0]]).numpy()
    array([0.75, 0.25], dtype=float32)

    Reference:
        Quinton, Rey. "Jacobian Descent for Multi-Objective Optimization".
        arXiv:2406.16232, 2024, section 4 (UPGrad).
    """
    grads = gramian_lib.as_gradient_matrix(grads)

    def solve(cosines, norms, wanted):
        prefs = _preferences(preferences, wanted)
        starts = tf.eye(gramian_lib.num_rows(grads), dtype="float64")
        betas = _dual_cone_solution(grads, cosines, norms, wanted, starts,
                                    max_iters, tolerance)
        # Projection of g_i = ||g_i|| u_i is ||g_i|| U^T beta_i; weigh by p_i.
        beta = tf.linalg.matvec(betas, prefs * norms, transpose_a=True)
        return tf.math.divide_no_nan(beta, norms)

    return gramian_lib.weigh_rows(grads, mask, solve)


def upgrad(grads, mask=None, preferences=None):
    """The UPGrad direction (d,): `upgrad_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = upgrad_weights(grads, mask=mask, preferences=preferences)
    return gramian_lib.combine(grads, weights, mask)


def _dual_cone_solution(grads, cosines, norms, wanted, starts, max_iters, tolerance):
    """The dual-cone coefficients of the unit rows for each start (see `_dual_cone`)."""
    active = tf.logical_and(wanted > 0, norms > 0)
    num_tasks = grads.shape[0]
    if max_iters is None:
        max_iters = _dual_cone.default_max_iters(num_tasks)
    betas, _ = _dual_cone.dual_cone_coefficients(
        cosines, starts, active, tf.constant(max_iters, "int32"),
        tf.constant(tolerance, "float64"),
        gramian_lib.default_rcond(grads, num_tasks or 1),
    )
    return betas


def _preferences(preferences, wanted):
    """Preference weights (T,) in float64, zero off the included tasks."""
    if preferences is None:
        return tf.math.divide_no_nan(wanted, tf.reduce_sum(wanted))
    prefs = tf.cast(preferences, "float64")
    return prefs * wanted
