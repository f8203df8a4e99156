"""Aligned-MTL: independent component alignment (Senushkin et al., CVPR 2023)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def aligned_mtl_weights(grads, mask=None, preferences=None, rcond=None):
    """Aligned-MTL weights: combine the gradients of an aligned, stable system.

    Algorithm 1 of the paper: with the Gramian `M = G G^T = V diag(lambda) V^T`
    (eigenvalues below `rcond * max(lambda)` dropped, rank R), the balance
    matrix `B = sqrt(lambda_R) V diag(lambda^-1/2) V^T` makes the aligned
    system `B^T G` (rows `sum_s B_st g_s`) orthogonal with every singular
    value equal to `sqrt(lambda_R)`, the smallest one of G: condition number
    1. The weights are `alpha = B p` with preference weights `p` (uniform
    `1 / T` by default, as TorchJD), and `alpha @ grads = p @ (B^T G)`.

    The eigendecomposition is of the float64 Gramian. The method is not
    scale invariant (scaling one task rescales the whole system), and rows
    whose squared norms span more than ~1/eps (e.g. 1e-8 vs 1e8) lose the
    small ones below the rank cut-off, as in the authors' code.

    Zero rows and masked-out tasks get weight 0 (a masked-out row is never
    read); a NaN or inf in an included row gives all-NaN weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        preferences: optional (T,) task preference weights `p`. Defaults to
            `1 / T` over the included tasks.
        rcond: relative eigenvalue cut-off. Defaults to `10 * T * eps` of the
            input dtype.

    Returns:
        A tensor (T,) of the input dtype.

    Example:

    >>> keras_mtl.ops.aligned_mtl_weights([[2.0, 0.0], [0.0, 1.0]]).numpy()
    array([0.25, 0.5 ], dtype=float32)

    Reference:
        Senushkin, Patakin, Kuznetsov, Konushin. "Independent Component
        Alignment for Multi-Task Learning". CVPR 2023, Algorithm 1.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    num_tasks = grads.shape[0]
    if rcond is None:
        rcond = gramian_lib.default_rcond(grads, num_tasks or 1)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    if preferences is None:
        prefs = tf.math.divide_no_nan(wanted, tf.reduce_sum(wanted))
    else:
        prefs = tf.cast(preferences, "float64") * wanted
    balance = aligned_mtl_balance(clean, mask=mask, rcond=rcond)
    weights = tf.linalg.matvec(balance, prefs)
    return tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype)


def aligned_mtl_balance(grads, mask=None, rcond=None):
    """The balance matrix B (T, T), float64, of Algorithm 1 (see above).

    All zeros when every included row is zero (nothing to align).
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    num_tasks = grads.shape[0]
    if rcond is None:
        rcond = gramian_lib.default_rcond(grads, num_tasks or 1)
    clean, wanted, poisoned = gramian_lib.included_rows(grads, mask)
    gram = gramian_lib.gramian(clean)
    values, vectors = tf.linalg.eigh(gram)
    top = tf.reduce_max(values)
    keep = values > rcond * top
    safe = tf.where(keep, values, tf.ones_like(values))
    smallest = tf.reduce_min(tf.where(keep, values, tf.fill(tf.shape(values), top)))
    scale = tf.where(keep, tf.sqrt(tf.maximum(smallest, 0.0) / safe), tf.zeros_like(values))
    balance = tf.matmul(vectors * scale[None, :], vectors, transpose_b=True)
    return gramian_lib.poison(balance, poisoned)


def aligned_mtl(grads, mask=None, preferences=None):
    """The Aligned-MTL direction (d,): `aligned_mtl_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = aligned_mtl_weights(grads, mask=mask, preferences=preferences)
    return gramian_lib.combine(grads, weights, mask)
