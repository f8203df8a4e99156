"""MGDA (Sener & Koltun, NeurIPS 2018): the min-norm point of the task gradients."""

import tensorflow as tf

from keras_mtl.ops import _gramian as gramian_lib

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda_normalizers(grads, losses=None, normalization="none"):
    """Per-task gradient normalisers c_t (T,) of Sener & Koltun's MGDA code.

    - `"none"`: c_t = 1;
    - `"l2"`: c_t = ||g_t||;
    - `"loss"`: c_t = L_t;
    - `"loss+"`: c_t = L_t ||g_t||.

    MGDA then runs on `g_t / c_t` (a zero c_t leaves the row at zero).

    Args:
        grads: float tensor (T, d).
        losses: float tensor (T,), needed by `"loss"` and `"loss+"`.
        normalization: one of `"none"`, `"l2"`, `"loss"`, `"loss+"`.

    Returns:
        float64 tensor (T,).
    """
    check_normalization(normalization)
    grads = gramian_lib.as_gradient_matrix(grads)
    if normalization == "none":
        return tf.ones(tf.shape(grads)[:1], "float64")
    _, norms = gramian_lib.normalized_gramian(grads)
    return _normalizers_from_norms(norms, losses, normalization)


def _normalizers_from_norms(norms, losses, normalization):
    """`mgda_normalizers` given the row norms (float64)."""
    if normalization == "none":
        return tf.ones_like(norms)
    if normalization in ("loss", "loss+") and losses is None:
        raise ValueError(
            f"MGDA normalization '{normalization}' needs the task `losses`. "
            "Received: losses=None"
        )
    if normalization == "l2":
        return norms
    losses = tf.cast(losses, "float64")
    return losses if normalization == "loss" else losses * norms


def check_normalization(normalization):
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            "Invalid value received for argument `normalization`. Expected one "
            f"of {NORMALIZATIONS}. Received: normalization={normalization!r}"
        )
    return normalization


# Frank-Wolfe steps between two polishes of the support (see
# `min_norm_weights_from_gramian`).
POLISH_EVERY = 8


def min_norm_weights_from_gramian(
    gram, mask=None, max_iters=1000, tolerance=1e-10, return_iterations=False,
    initial=None,
):
    """Frank-Wolfe min-norm point of a convex hull, given its Gramian (float64).

    Solves `min_alpha alpha^T M alpha` over the simplex (restricted to the
    tasks in `mask`): starts from the best pair (the exact two-task solution
    of every pair, keeping the smallest norm, as in Sener & Koltun's solver),
    (or from `initial`, e.g. the previous train step's weights, when that
    is better), then runs pairwise Frank-Wolfe steps with exact line search: mass moves
    from the worst vertex of the support to the best vertex, which converges
    linearly on a simplex (Lacoste-Julien & Jaggi 2015), where plain
    Frank-Wolfe crawls at O(1/k). Stops when the duality gap
    `max_{alpha_r > 0} (M alpha)_r - min_r (M alpha)_r <= tolerance *
    alpha^T M alpha`: the KKT conditions of the min-norm problem hold to that
    relative tolerance.

    Badly scaled gradients (norms spanning 1e-8 to 1e8) make any first-order
    method slow, as the optimal weights then span many decades; and
    Frank-Wolfe alone needs ~10 T steps to reach a tight gap. So the support
    is polished before the first step and every `POLISH_EVERY` (8) steps:
    the exact min-norm point of the affine hull of the support (a
    (|S|+1)-square KKT solve in unit directions, as in
    `mgda_closed_form_weights`) replaces the iterate when it is non-negative
    and no worse. Once Frank-Wolfe has found the optimal support (or was
    started on it, from the previous step's weights) the next polish lands
    on the minimum and the duality gap certifies it. The stopping rule, and
    so the exactness, are those of plain Frank-Wolfe.

    Args:
        gram: float64 tensor (T, T), the Gramian `G G^T`.
        mask: optional (T,) of tasks allowed in the hull. Defaults to all.
        max_iters: iteration cap. Defaults to `1000`.
        tolerance: relative duality-gap tolerance. Defaults to `1e-10`.
        return_iterations: also return the number of Frank-Wolfe steps.
        initial: optional (T,) starting weights (a warm start). Used when
            finite, non-negative on the allowed tasks with a positive sum,
            and no worse than the best pair; otherwise ignored.

    Degenerate inputs: when an allowed task has a zero gradient (zero
    diagonal entry), every combination of the zero gradients is a min-norm
    point, and the weights are uniform over them (all allowed tasks when
    d = 0). One task gives `[1]`; T = 0 gives an empty vector. The rows and
    columns of masked-out tasks are never read (they may hold NaN); a NaN or
    inf among the allowed entries gives all-NaN weights, never an error.

    Returns:
        float64 tensor (T,) on the simplex (zeros if nothing is unmasked),
        and the int32 iteration count if `return_iterations`.
    """
    gram = tf.convert_to_tensor(gram, "float64")
    allowed = gramian_lib.task_mask(mask, tf.shape(gram)[0]) > 0
    pair = tf.logical_and(allowed[:, None], allowed[None, :])
    poisoned = tf.reduce_any(
        tf.logical_and(pair, tf.logical_not(tf.math.is_finite(gram)))
    )
    gram = tf.where(
        tf.logical_and(pair, tf.math.is_finite(gram)), gram, tf.zeros_like(gram)
    )
    if initial is None:
        initial = tf.fill(tf.shape(gram)[:1], tf.constant(-1.0, "float64"))  # unusable
    args = (
        gram,
        allowed,
        tf.constant(max_iters, "int32"),
        tf.constant(tolerance, "float64"),
        tf.cast(initial, "float64"),
    )
    num = gramian_lib.num_rows(gram)
    if isinstance(num, int) and num == 0:
        alpha, iterations = tf.zeros([0], "float64"), tf.constant(0)
    elif isinstance(num, int):
        alpha, iterations = _solve(*args)
    else:  # T unknown while tracing: it may be 0, where argmin has no answer
        alpha, iterations = tf.cond(
            num > 0,
            lambda: _solve(*args),
            lambda: (tf.zeros([0], "float64"), tf.constant(0)),
        )
    alpha = gramian_lib.poison(alpha, poisoned)
    return (alpha, iterations) if return_iterations else alpha


def _solve(gram, allowed, max_iters, tolerance, initial):
    # Eager calls run the loop as one compiled graph (an eager while loop is
    # slow); inside a traced function (a train step, XLA) it is inlined.
    solve = _frank_wolfe_graph if tf.executing_eagerly() else _frank_wolfe
    return solve(gram, allowed, max_iters, tolerance, initial)


def _warm_start(gram, allowed, alpha, initial):
    """`initial` (restricted to the allowed tasks) if usable and no worse than `alpha`."""
    start = tf.where(allowed, initial, tf.zeros_like(initial))
    total = tf.reduce_sum(start)
    usable = tf.logical_and(
        tf.reduce_all(tf.math.is_finite(start)),
        tf.logical_and(tf.reduce_all(start >= 0.0), total > 0.0),
    )
    start = tf.where(usable, start / tf.where(usable, total, 1.0), alpha)
    cosines, norms = _unit_form(gram)
    better = _scaled_objective(cosines, norms, start) <= _scaled_objective(
        cosines, norms, alpha
    )
    return tf.where(tf.logical_and(usable, better), start, alpha)


def _frank_wolfe(gram, allowed, max_iters, tolerance, initial):
    """Best pair (or warm start), then pairwise Frank-Wolfe with periodic support polish."""
    alpha = _best_pair(gram, allowed)
    num = gramian_lib.num_rows(gram)
    if isinstance(num, int) and num <= 2:
        # The best pair is the exact answer: only the polish (the same
        # point, solved in unit directions, accurate for badly scaled rows).
        iters = tf.constant(0)
        if num == 2:
            alpha = _polish(gram, allowed, alpha)
    else:
        alpha = _warm_start(gram, allowed, alpha, initial)
        alpha = _polish(gram, allowed, alpha)
        alpha, iters = _pairwise_loop(gram, allowed, alpha, max_iters, tolerance)
    alpha = tf.where(allowed, alpha, 0.0)
    alpha = tf.math.divide_no_nan(alpha, tf.reduce_sum(alpha))
    zero = tf.cast(
        tf.logical_and(allowed, tf.linalg.diag_part(gram) <= 0), "float64"
    )
    on_zero = tf.math.divide_no_nan(zero, tf.reduce_sum(zero))
    return tf.where(tf.reduce_sum(zero) > 0, on_zero, alpha), iters


def _scaled_objective(cosines, norms, alpha):
    """alpha^T M alpha computed as beta^T K beta, beta = alpha * norms.

    The products alpha_t ||g_t|| stay of comparable size even when the norms
    span many decades, so this is accurate where the plain quadratic form
    loses everything to rounding.
    """
    beta = alpha * norms
    return tf.reduce_sum(beta * tf.linalg.matvec(cosines, beta))


def _unit_form(gram):
    norms = tf.sqrt(tf.maximum(tf.linalg.diag_part(gram), 0.0))
    cosines = tf.math.divide_no_nan(gram, norms[:, None] * norms[None, :])
    return cosines, norms


def _polish(gram, allowed, alpha):
    """The exact min-norm point on the support of `alpha`, when it is better."""
    cosines, norms = _unit_form(gram)
    support = tf.cast(tf.logical_and(allowed, alpha > 0), "float64")
    candidate = _affine_min_norm(cosines, norms, support, rcond=1e-13)
    valid = tf.logical_and(
        tf.reduce_all(candidate >= -1e-12),
        tf.reduce_all(tf.math.is_finite(candidate)),
    )
    candidate = tf.maximum(candidate, 0.0)
    candidate = tf.math.divide_no_nan(candidate, tf.reduce_sum(candidate))
    better = _scaled_objective(cosines, norms, candidate) <= _scaled_objective(
        cosines, norms, alpha
    )
    keep = tf.logical_and(
        tf.logical_and(valid, better), tf.reduce_sum(support) > 1.0
    )
    return tf.where(keep, candidate, alpha)


def _best_pair(gram, allowed):
    """The smallest of the exact two-task min-norm points over all pairs."""
    num = gramian_lib.num_rows(gram)
    diag = tf.linalg.diag_part(gram)
    inf = tf.constant(float("inf"), "float64")
    # gamma on task i, 1 - gamma on task j.
    den = diag[:, None] + diag[None, :] - 2.0 * gram
    gamma = tf.where(
        den > 0,
        tf.clip_by_value(
            tf.math.divide_no_nan(diag[None, :] - gram, den), 0.0, 1.0
        ),
        tf.ones_like(den),
    )
    value = (
        gamma**2 * diag[:, None]
        + 2.0 * gamma * (1.0 - gamma) * gram
        + (1.0 - gamma) ** 2 * diag[None, :]
    )
    pair_ok = tf.logical_and(allowed[:, None], allowed[None, :])
    value = tf.where(pair_ok, value, inf)
    best = tf.argmin(tf.reshape(value, [-1]), output_type="int32")
    one_i = tf.one_hot(best // num, num, dtype="float64")
    one_j = tf.one_hot(best % num, num, dtype="float64")
    g_ij = tf.reduce_sum(one_i[:, None] * gamma * one_j[None, :])
    return g_ij * one_i + (1.0 - g_ij) * one_j


def _pairwise_loop(gram, allowed, alpha, max_iters, tolerance):
    """Pairwise Frank-Wolfe steps with exact line search from `alpha`.

    Entries are picked with one-hot products rather than dynamic indexing,
    which XLA would otherwise turn into compile-time constants (and recompile
    the train step at every call).
    """
    num = gramian_lib.num_rows(gram)
    inf = tf.constant(float("inf"), "float64")
    abs_gram = tf.abs(gram)
    any_allowed = tf.reduce_any(allowed)

    def vertices(alpha, m_alpha):
        s = tf.argmin(tf.where(allowed, m_alpha, inf), output_type="int32")
        a = tf.argmax(tf.where(alpha > 0, m_alpha, -inf), output_type="int32")
        one_s = tf.one_hot(s, num, dtype="float64")
        one_a = tf.one_hot(a, num, dtype="float64")
        gap = tf.reduce_sum(m_alpha * (one_a - one_s))
        return one_s, one_a, gap

    def cond(it, alpha, m_alpha, moving):
        one_s, one_a, gap = vertices(alpha, m_alpha)
        norm2 = tf.reduce_sum(alpha * m_alpha)
        # Rounding noise of (M alpha)_s and (M alpha)_a: below it the gap is
        # meaningless (e.g. when 0 lies in the hull and norm2 -> 0).
        noise = 64 * 2.2e-16 * tf.reduce_sum(
            (one_s + one_a)[:, None] * abs_gram * alpha[None, :]
        )
        return tf.logical_and(
            tf.logical_and(it < max_iters, tf.logical_and(moving, any_allowed)),
            gap > tolerance * norm2 + noise,
        )

    def body(it, alpha, m_alpha, moving):
        one_s, one_a, gap = vertices(alpha, m_alpha)
        delta = one_s - one_a
        curv = tf.reduce_sum(delta[:, None] * gram * delta[None, :])
        mass = tf.reduce_sum(alpha * one_a)
        step = tf.where(
            curv > 0, tf.minimum(tf.math.divide_no_nan(gap, curv), mass), mass
        )
        step = tf.maximum(step, 0.0)
        new_alpha = tf.maximum(alpha + step * delta, 0.0)
        # The away vertex may be emptied exactly; rounding must not leave dust.
        emptied = tf.logical_and(one_a > 0, step >= mass)
        new_alpha = tf.where(emptied, tf.zeros_like(new_alpha), new_alpha)
        moved = step > 0
        new_alpha = tf.cond(
            tf.equal((it + 1) % POLISH_EVERY, 0),
            lambda: _polish(gram, allowed, new_alpha),
            lambda: new_alpha,
        )
        new_m_alpha = tf.linalg.matvec(gram, new_alpha)
        return it + 1, new_alpha, new_m_alpha, moved

    iters, alpha, _, _ = tf.while_loop(
        cond,
        body,
        (tf.constant(0), alpha, tf.linalg.matvec(gram, alpha), tf.constant(True)),
    )
    return alpha, iters


_frank_wolfe_graph = tf.function(_frank_wolfe, reduce_retracing=True)


def mgda_weights(
    grads,
    losses=None,
    normalization="none",
    mask=None,
    max_iters=1000,
    tolerance=1e-10,
    initial=None,
    return_alpha=False,
):
    """MGDA weights: the min-norm point of the convex hull of the task gradients.

    `alpha = argmin ||sum_t alpha_t g_t||^2` over `alpha_t >= 0`,
    `sum_t alpha_t = 1` (Sener & Koltun, Algorithm 2, eq. 3), solved by
    Frank-Wolfe on the Gramian in float64 from the best pair, to a tight
    duality-gap tolerance (see `min_norm_weights_from_gramian`). The combined
    gradient `g = alpha @ grads` satisfies `g . g_t >= ||g||^2 >= 0` for every
    task: a common descent direction, zero only at a Pareto-stationary point.

    With a `normalization` other than `"none"`, the min-norm point is taken
    over the normalised gradients `g_t / c_t` (`mgda_normalizers`) and the
    returned weights are `alpha_t / c_t`, so that `weights @ grads` is that
    min-norm point. (Sener & Koltun's code instead multiplies the raw losses
    by `alpha_t`; the two agree for `"none"`.) The rows are taken at face
    value: the Gramian is formed from max-abs-rescaled rows and rebuilt in
    float64, so rows scaled from 1e-8 to 1e8 stay accurate.

    Edge cases: one task gives `[1]` (with `"none"`: the gradient itself);
    no task (a (0, d) matrix) gives an empty vector, as a fully masked input
    gives zeros: there is nothing to weigh, and `weights @ grads` is the zero
    vector. Zero gradients (also d = 0) are min-norm points: the weights are
    uniform over the included zero rows. Masked-out rows and losses are never
    read (they may hold NaN); a NaN or inf in an included row (or, with the
    `"loss"` normalisations, loss) gives all-NaN weights, never an error.

    Args:
        grads: float tensor (T, d): feature-level gradients `dL_t/dz` (the
            paper's MGDA-UB) or shared-parameter gradients.
        losses: float tensor (T,), for the `"loss"` / `"loss+"` normalisations.
        normalization: `"none"` (default), `"l2"`, `"loss"` or `"loss+"`.
        mask: optional (T,): tasks to include; the others get weight 0.
        max_iters: Frank-Wolfe iteration cap. Defaults to `1000`.
        tolerance: relative duality-gap tolerance. Defaults to `1e-10`.
        initial: optional (T,) warm start of the min-norm weights on the
            simplex (the `alpha` returned by a previous call, e.g. the
            previous train step's); see `min_norm_weights_from_gramian`.
            It changes the number of iterations, never the stopping rule.
        return_alpha: also return `alpha` (T,) float64, the simplex weights
            of the (normalised) min-norm problem, to warm-start the next call.

    Returns:
        A tensor (T,) of the input dtype, non-negative (and `alpha` if
        `return_alpha`).

    Example:

    >>> keras_mtl.ops.mgda_weights([[1.0, 0.0], [2.0, 1.0]]).numpy()
    array([1., 0.], dtype=float32)

    Reference:
        Sener, Koltun. "Multi-Task Learning as Multi-Objective Optimization".
        NeurIPS 2018.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    check_normalization(normalization)
    cosines, norms, wanted, poisoned = gramian_lib.included_gramian(grads, mask)
    if losses is not None and normalization in ("loss", "loss+"):
        losses = tf.cast(losses, "float64")
        poisoned = tf.logical_or(
            poisoned,
            tf.reduce_any(
                tf.logical_and(wanted > 0, tf.logical_not(tf.math.is_finite(losses)))
            ),
        )
        losses = tf.where(
            tf.logical_and(wanted > 0, tf.math.is_finite(losses)),
            losses,
            tf.ones_like(losses),
        )
    scale = _normalizers_from_norms(norms, losses, normalization)
    norms = tf.math.divide_no_nan(norms, scale)
    gram = norms[:, None] * cosines * norms[None, :]
    alpha = min_norm_weights_from_gramian(
        gram, mask=wanted, max_iters=max_iters, tolerance=tolerance, initial=initial
    )
    weights = tf.math.divide_no_nan(alpha, scale)
    weights = tf.cast(gramian_lib.poison(weights, poisoned), grads.dtype)
    return (weights, alpha) if return_alpha else weights


def mgda_closed_form_weights(grads, mask=None, rcond=None):
    """Min-norm point of the affine hull of the task gradients (no alpha >= 0).

    The relaxed MGDA of Liu et al. (ICLR 2021, appendix C.2):
    `min ||sum_t alpha_t g_t||` subject to `sum_t alpha_t = 1` only, whose
    solution is `alpha_{2:T} = g_1 D^T (D D^T)^{-1}` with
    `D = [g_1 - g_t]_t`. **The weights may be negative**: without the
    `alpha >= 0` constraint the point can leave the convex hull (two
    gradients (1, 0) and (2, 1) give alpha = (1.5, -0.5)).

    Solved robustly from the KKT system of the equivalent problem in unit
    directions: with `alpha_t = beta_t r_t`, `r = (1/||g_t||) / ||1/||g||||`,
    `[[K, r], [r^T, 0]] [beta; -mu] = [0; 1]` (`K` the cosine matrix), by a
    float64 pseudo-inverse. It is scale-robust, and for rank-deficient
    gradients (identical rows, more tasks than dimensions) it returns the
    minimum-norm solution of the (always consistent) KKT system, a true
    minimiser. A zero gradient row is itself the minimum (norm 0): the weights
    are then uniform over the zero rows (all included rows when d = 0). One
    task gives `[1]`, T = 0 an empty vector. Masked-out rows are never read
    (they may hold NaN); a NaN or inf in an included row gives all-NaN
    weights, never an error.

    Args:
        grads: float tensor (T, d).
        mask: optional (T,): tasks to include; the others get weight 0.
        rcond: relative eigenvalue cut-off. Defaults to `10 * T * eps`.

    Returns:
        A tensor (T,) of the input dtype, summing to 1.

    Example:

    >>> keras_mtl.ops.mgda_closed_form_weights([[1.0, 0.0], [2.0, 1.0]]).numpy()
    array([ 1.5, -0.5], dtype=float32)

    Reference:
        Liu et al. "Towards Impartial Multi-task Learning". ICLR 2021,
        section 4 and appendix C.2.
    """
    grads = gramian_lib.as_gradient_matrix(grads)
    num_tasks = grads.shape[0]
    if rcond is None:
        rcond = gramian_lib.default_rcond(grads, (num_tasks or 1) + 1)
    cosines, norms, wanted, poisoned = gramian_lib.included_gramian(grads, mask)
    zero = wanted * tf.cast(norms <= 0, "float64")
    alpha = _affine_min_norm(cosines, norms, wanted - zero, rcond)
    on_zero = tf.math.divide_no_nan(zero, tf.reduce_sum(zero))
    alpha = tf.where(tf.reduce_sum(zero) > 0, on_zero, alpha)
    return tf.cast(gramian_lib.poison(alpha, poisoned), grads.dtype)


def _affine_min_norm(cosines, norms, active, rcond):
    """min ||sum_t alpha_t g_t|| s.t. sum alpha = 1 over `active` (float64)."""
    num = tf.shape(cosines)[0]
    inv = tf.math.divide_no_nan(active, norms)
    r = tf.math.divide_no_nan(inv, tf.norm(inv))
    k = cosines * active[:, None] * active[None, :] + tf.linalg.diag(1.0 - active)
    top = tf.concat([k, r[:, None]], axis=1)
    bottom = tf.concat([r[None, :], tf.zeros([1, 1], "float64")], axis=1)
    kkt = tf.concat([top, bottom], axis=0)
    rhs = tf.one_hot(num, num + 1, dtype="float64")
    solution = tf.linalg.matvec(gramian_lib.symmetric_pinv(kkt, rcond), rhs)
    alpha = solution[:num] * r
    return tf.math.divide_no_nan(alpha, tf.reduce_sum(alpha))
