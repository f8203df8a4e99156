"""DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib
from keras_mtl.ops.upgrad import _dual_cone_solution
from keras_mtl.ops.upgrad import _preferences


def dualproj_weights(grads, mask=None, preferences=None, max_iters=None, tolerance=1e-12):
    """DualProj weights: the weighted mean gradient projected onto the dual cone.

    `A(J) = J^T v` with `v = argmin_{v >= p} v^T J J^T v` (Quinton & Rey
    2024, Proposition 1, with `p` the preference weights, uniform by
    default): the closest vector to `p^T J` that conflicts with no task
    (`g_t . A >= 0` for all t). When the mean already conflicts with no task
    it is returned unchanged. Solved by an active-set method in float64 on
    the cosine matrix (see `keras_mtl.ops.upgrad_weights`).

    Zero rows and masked-out tasks constrain nothing and get weight 0 (a
    masked-out row is never read); a NaN or inf in an included row gives
    all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        preferences: optional (T,) non-negative weights `p` of the averaged
            gradient. Defaults to `1 / T` over the included tasks.
        max_iters: active-set iteration cap. Defaults to `10 T + 10`.
        tolerance: relative tolerance on the cone constraints. Defaults to
            `1e-12`.

    Returns:
        A tensor (T,) of the input dtype; `weights @ grads` is the DualProj
        direction.

    Example:

    >>> keras_mtl.ops.dualproj_weights([[1.0, 0.0], [-1.0, 1.0]]).numpy()
    array([1. , 0.5], dtype=float32)

    Reference:
        Quinton, Rey. "Jacobian Descent for Multi-Objective Optimization".
        arXiv:2406.16232, 2024, appendix (DualProj).
    """
    grads = gramian_lib.as_gradient_matrix(grads)

    def solve(cosines, norms, wanted):
        # p^T J = U^T (p * ||g||): the start in unit directions.
        starts = (_preferences(preferences, wanted) * norms)[None, :]
        betas = _dual_cone_solution(grads, cosines, norms, wanted, starts,
                                    max_iters, tolerance)
        return tf.math.divide_no_nan(betas[0], norms)

    return gramian_lib.weigh_rows(grads, mask, solve)


def dualproj(grads, mask=None, preferences=None):
    """The DualProj direction (d,): `dualproj_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = dualproj_weights(grads, mask=mask, preferences=preferences)
    return gramian_lib.combine(grads, weights, mask)
