"""IMTL: impartial multi-task learning (Liu et al., ICLR 2021), the pure math."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def imtl_g_weights(grads, mask=None, rcond=None):
    """IMTL-G scaling factors: the combined gradient projects equally on every task.

    Finds `alpha` (T,) with `sum(alpha) = 1` such that `g = alpha @ grads`
    satisfies `g . u_1 = g . u_2 = ... = g . u_T` with `u_t = g_t / ||g_t||`
    (the paper's eq. 1, closed form eq. 2 / eq. 12).

    Computed in the equivalent scale-invariant form: writing
    `g = sum_t beta_t u_t`, the conditions read `K beta = c 1` with the cosine
    matrix `K = [u_s . u_t]`, so `beta = pinv(K) 1` and
    `alpha_t = (beta_t / ||g_t||) / sum_tau (beta_tau / ||g_tau||)`. When `K`
    is invertible this is exactly the paper's `g_1 U^T (D U^T)^{-1}` (and the
    Gramian form `pinv(G G^T) sqrt(diag(G G^T))`, normalised). We use the
    cosine form because `K` does not change when a task's loss is scaled by
    any `k_t > 0` (Theorem 2), so rows scaled from 1e-8 to 1e8 give the same
    `K`, while `G G^T` would span 32 decades; the pseudo-inverse (eigenvalues
    below `rcond * max` dropped, float64) keeps identical, parallel or
    linearly dependent gradients finite: the least-squares, minimum-norm
    `beta`.

    Degenerate inputs: a task with a zero gradient (or masked out) gets weight
    0, since the projection on it is undefined; if no task has a non-zero
    gradient (also when d = 0) the weights are uniform over the unmasked
    tasks. One task gives `[1]`; no task (T = 0) gives an empty vector. A
    masked-out row is never read (it may hold NaN); a NaN or inf in an
    included row gives all-NaN weights, never an error. In the
    measure-zero case `sum_t beta_t / ||g_t|| = 0`, where no `alpha` summing
    to 1 exists, the weights are normalised by `sum_t |beta_t| / ||g_t||`
    instead. Weights may be negative (the paper does not constrain them; it
    reports they stay positive in practice, Fig. 4).

    Args:
        grads: float tensor (T, d): one task gradient per row (feature-level
            `dL_t/dz` flattened, or the shared-parameter gradients).
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        rcond: relative eigenvalue cut-off of the pseudo-inverse. Defaults to
            `10 * T * eps` of the input dtype.

    Returns:
        A tensor (T,) of the input dtype; `weights @ grads` is the IMTL-G
        combined gradient.

    Example:

    >>> keras_mtl.ops.imtl_g_weights([[1.0, 0.0], [0.0, 2.0]]).numpy()
    array([0.6666667 , 0.33333334], dtype=float32)

    Reference:
        Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. "Towards Impartial
        Multi-task Learning". ICLR 2021, section 3.1 and appendix B.1.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    num_tasks = grads.shape[0]
    if rcond is None:
        rcond = gramian_lib.default_rcond(grads, num_tasks or 1)
    cosines, norms, wanted, poisoned = gramian_lib.included_gramian(grads, mask)
    active = wanted * tf.cast(norms > 0, "float64")
    cosines = cosines * active[:, None] * active[None, :]
    beta = tf.linalg.matvec(gramian_lib.symmetric_pinv(cosines, rcond), active)
    raw = tf.math.divide_no_nan(beta, norms) * active
    total = tf.reduce_sum(raw)
    size = tf.reduce_sum(tf.abs(raw))
    denom = tf.where(tf.abs(total) > 1e-9 * size, total, size)
    weights = tf.math.divide_no_nan(raw, denom)
    uniform = tf.math.divide_no_nan(wanted, tf.reduce_sum(wanted))
    weights = tf.where(size > 0, weights, uniform)
    return tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype)


def imtl_g(grads, mask=None, rcond=None):
    """The IMTL-G combined gradient (d,): `imtl_g_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = imtl_g_weights(grads, mask=mask, rcond=rcond)
    return gramian_lib.combine(grads, weights, mask)


def imtl_l_loss(losses, log_scales):
    """IMTL-L scaled losses `e^{s_t} L_t - s_t` (T,), eq. 6 of the paper.

    Minimising over `s_t` drives the scaled loss `e^{s_t} L_t` to 1:
    `d/ds (e^s L - s) = e^s L - 1` vanishes at `s* = -log L` (convex in `s`).

    Args:
        losses: float tensor (T,) of positive raw task losses.
        log_scales: float tensor (T,), the learned scales `s_t`.

    Example:

    >>> keras_mtl.ops.imtl_l_loss([2.0, 0.5], [0.0, 0.0]).numpy()
    array([2. , 0.5], dtype=float32)

    Reference:
        Liu et al. "Towards Impartial Multi-task Learning". ICLR 2021,
        section 3.2.
    """
    losses = tf.convert_to_tensor(losses)
    log_scales = tf.cast(log_scales, losses.dtype)
    return tf.exp(log_scales) * losses - log_scales


def imtl_l_optimal_log_scales(losses):
    """The minimiser `s* = -log L_t` of `e^s L_t - s`, i.e. `e^{s*} L_t = 1`."""
    return -tf.math.log(tf.convert_to_tensor(losses))
