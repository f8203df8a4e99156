"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib


def cagrad_weights(grads, c=0.4, mask=None, rescale=False, max_iters=500, tolerance=1e-9):
    """CAGrad weights: the best worst-case direction in a ball around the mean.

    `d = argmax_d min_t g_t . d` subject to `||d - g0|| <= c ||g0||`, with
    `g0` the mean gradient (eq. 3 of the paper). Through its dual
    `min_{w in simplex} F(w) = g_w . g0 + c ||g0|| ||g_w||`, `g_w = w @ grads`
    (eq. 5), the answer is `d = g0 + (c ||g0|| / ||g_w||) g_w`, so the
    returned weights are `1/T + c ||g0|| w / ||g_w||`. The dual is solved in
    float64 on the Gramian by pairwise Frank-Wolfe steps with exact (closed
    form) line search from the uniform `w`, until the duality gap
    `max_{w_t > 0} g_t . d - min_t g_t . d <= tolerance * max_t |g_t . d|`
    (at the optimum every task in the support of `w` has the same, smallest,
    projection on `d`). `c = 0` gives the mean gradient; `d` always lies on
    the sphere `||d - g0|| = c ||g0||` (or is `g0` when `g_w = 0`).

    Zero rows and masked-out tasks are left out of the dual (they cannot
    conflict); masked-out tasks are also left out of the mean, and their
    rows are never read. A NaN or inf in an included row gives all-NaN
    weights.

    Args:
        grads: float tensor (T, d), one task gradient per row.
        c: radius of the ball around the mean, relative to `||g0||`. The
            paper uses 0.4 on NYUv2 and Cityscapes. Defaults to `0.4`.
        mask: optional bool/float (T,): tasks to include. Defaults to all.
        rescale: divide the result by `1 + c^2`, as the authors' code does
            (its `rescale=1`). Defaults to `False` (eq. 3 as written).
        max_iters: Frank-Wolfe iteration cap. Defaults to `500`.
        tolerance: relative duality-gap tolerance. Defaults to `1e-9`.

    Returns:
        A tensor (T,) of the input dtype; `weights @ grads` is `d`.

    Example:

    >>> w = keras_mtl.ops.cagrad_weights([[1.0, 0.0], [0.0, 1.0]], c=0.0)
    >>> w.numpy()
    array([0.5, 0.5], dtype=float32)

    Reference:
        Liu, Liu, Jin, Stone, Liu. "Conflict-Averse Gradient Descent for
        Multi-task Learning". NeurIPS 2021, section 3 and Algorithm 1.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    if not c >= 0:
        raise ValueError(
            "Invalid value received for argument `c`. Expected a number >= 0. "
            f"Received: c={c!r}"
        )

    def solve(cosines, norms, wanted):
        gram = norms[:, None] * cosines * norms[None, :]
        mean = tf.math.divide_no_nan(wanted, tf.reduce_sum(wanted))
        allowed = tf.logical_and(wanted > 0, tf.linalg.diag_part(gram) > 0)
        radius = c * tf.sqrt(tf.maximum(
            tf.reduce_sum(mean * tf.linalg.matvec(gram, mean)), 0.0))
        if c == 0:
            weights = mean
        else:
            w = cagrad_dual(gram, mean, radius, allowed, max_iters, tolerance)
            gw_norm = tf.sqrt(tf.maximum(tf.reduce_sum(w * tf.linalg.matvec(gram, w)), 0.0))
            weights = mean + tf.math.divide_no_nan(radius, gw_norm) * w
        return weights / (1.0 + c**2) if rescale else weights

    return gramian_lib.weigh_rows(grads, mask, solve)


def cagrad(grads, c=0.4, mask=None, rescale=False):
    """The CAGrad direction (d,): `cagrad_weights(grads) @ grads`."""
    grads = gramian_lib.as_gradient_matrix(grads)
    weights = cagrad_weights(grads, c=c, mask=mask, rescale=rescale)
    return gramian_lib.combine(grads, weights, mask)


def cagrad_dual(gram, mean, radius, allowed, max_iters=500, tolerance=1e-9):
    """argmin over the simplex (on `allowed`) of `w^T M b + r sqrt(w^T M w)`.

    Pairwise Frank-Wolfe in float64: mass moves from the support task with
    the largest `g_t . d` to the task with the smallest, by the exact
    minimiser of the objective along that edge (a closed form: the objective
    is a line plus `r` times the norm of an affine function of the step).
    Entries are picked with one-hot products (no dynamic indexing), so the
    loop compiles under XLA.

    Returns:
        float64 (T,): the dual weights `w` (zeros if nothing is allowed).
    """
    gram = tf.convert_to_tensor(gram, "float64")
    mean = tf.convert_to_tensor(mean, "float64")
    radius = tf.cast(radius, "float64")
    num = gramian_lib.num_rows(gram)
    inf = tf.constant(float("inf"), "float64")
    fa = tf.cast(allowed, "float64")
    w0 = tf.math.divide_no_nan(fa, tf.reduce_sum(fa))
    m_mean = tf.linalg.matvec(gram, mean)

    def projections(w):
        m_w = tf.linalg.matvec(gram, w)
        gw_norm = tf.sqrt(tf.maximum(tf.reduce_sum(w * m_w), 0.0))
        return m_w, gw_norm, m_mean + tf.math.divide_no_nan(radius, gw_norm) * m_w

    def vertices(w, proj):
        s = tf.argmin(tf.where(allowed, proj, inf), output_type="int32")
        a = tf.argmax(tf.where(w > 0, proj, -inf), output_type="int32")
        one_s = tf.one_hot(s, num, dtype="float64")
        one_a = tf.one_hot(a, num, dtype="float64")
        return one_s, one_a, tf.reduce_sum(proj * (one_a - one_s))

    def cond(it, w, moving):
        _, _, proj = projections(w)
        _, _, gap = vertices(w, proj)
        scale = tf.reduce_max(tf.where(allowed, tf.abs(proj), 0.0))
        return tf.logical_and(
            tf.logical_and(it < max_iters, moving), gap > tolerance * scale
        )

    def body(it, w, moving):
        m_w, gw_norm, proj = projections(w)
        one_s, one_a, _ = vertices(w, proj)
        delta = one_s - one_a
        b = tf.reduce_sum(m_mean * delta)
        d = tf.reduce_sum(m_w * delta)
        e = tf.maximum(tf.reduce_sum(delta * tf.linalg.matvec(gram, delta)), 0.0)
        mass = tf.reduce_sum(w * one_a)
        step = _edge_minimiser(b, d, e, gw_norm**2, radius, mass)
        new_w = tf.maximum(w + step * delta, 0.0)
        emptied = tf.logical_and(one_a > 0, step >= mass)
        new_w = tf.where(emptied, tf.zeros_like(new_w), new_w)
        return it + 1, new_w, step > 0

    _, w, _ = tf.while_loop(
        cond, body, (tf.constant(0), w0, tf.reduce_any(allowed)),
        maximum_iterations=max_iters,
    )
    return w


def _edge_minimiser(b, d, e, q, radius, mass):
    """Minimiser over [0, mass] of `b s + r sqrt(q + 2 d s + e s^2)` (convex).

    With `t = s + d / e` and `h = q - d^2 / e >= 0` the derivative is
    `b + r e t / sqrt(e t^2 + h)`, which increases from `b - r sqrt(e)` to
    `b + r sqrt(e)`: its root is `t = -b sqrt(h / (e (r^2 e - b^2)))` when
    `|b| < r sqrt(e)`; otherwise the objective is monotone on the edge.
    """
    tiny = tf.constant(1e-300, "float64")
    safe_e = tf.maximum(e, tiny)
    h = tf.maximum(q - d * d / safe_e, 0.0)
    denom = safe_e * (radius * radius * safe_e - b * b)
    t = -b * tf.sqrt(tf.math.divide_no_nan(h, denom))
    interior = tf.logical_and(e > 0, b * b < radius * radius * e)
    monotone = tf.where(b < 0, mass, tf.zeros_like(mass))
    step = tf.where(interior, t - d / safe_e, monotone)
    step = tf.where(e > 0, step, tf.where(b < 0, mass, tf.zeros_like(mass)))
    return tf.clip_by_value(step, 0.0, mass)
