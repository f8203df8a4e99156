"""Gramians of task-gradient matrices, computed in a scale-robust way."""

import tensorflow as tf


def as_gradient_matrix(grads, name="grads"):
    """Checks that `grads` is a float matrix (T, d) and returns it as a tensor."""
    grads = tf.convert_to_tensor(grads)
    if not grads.dtype.is_floating:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float "
            f"tensor of shape (T, d). Received: dtype={grads.dtype.name}"
        )
    if grads.shape.rank != 2:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a tensor "
            f"of rank 2, shape (T, d), one row per task. Received: "
            f"shape={grads.shape}"
        )
    return grads


def normalized_gramian(grads):
    """Returns `(cosines, norms)` of the rows of `grads`, both in float64.

    `cosines[s, t] = u_s . u_t` with `u_t = g_t / ||g_t||` (0 for a zero row)
    and `norms[t] = ||g_t||`, so the Gramian is
    `G G^T = norms[:, None] * cosines * norms[None, :]`. Every row is divided
    by its largest absolute entry before any product is taken, so rows scaled
    anywhere in the float range neither overflow nor underflow, and the
    cosines do not depend on the row scales.

    Args:
        grads: float tensor (T, d), one gradient per row.

    Example:

    >>> k, n = keras_mtl.ops.normalized_gramian([[3.0, 0.0], [1e8, 1e8]])
    >>> k.numpy().round(4)
    array([[1.    , 0.7071],
           [0.7071, 1.    ]])
    >>> n.numpy()
    array([3.00000000e+00, 1.41421356e+08])
    """
    grads = as_gradient_matrix(grads)
    # The floor at 0 keeps zero-dimensional rows (d = 0) at peak 0, not -inf.
    peak = tf.maximum(tf.reduce_max(tf.abs(grads), axis=1, keepdims=True), 0.0)
    scaled = tf.math.divide_no_nan(grads, peak)
    inner = tf.matmul(scaled, scaled, transpose_b=True)
    inner = tf.cast(inner, "float64")
    sq = tf.maximum(tf.linalg.diag_part(inner), 0.0)
    unit = tf.sqrt(sq)
    cosines = tf.math.divide_no_nan(inner, unit[:, None] * unit[None, :])
    cosines = 0.5 * (cosines + tf.transpose(cosines))
    norms = unit * tf.cast(peak[:, 0], "float64")
    return cosines, norms


def gramian(grads):
    """The Gramian `G G^T` (T, T) of the task gradients, in float64."""
    cosines, norms = normalized_gramian(grads)
    return norms[:, None] * cosines * norms[None, :]


def symmetric_pinv(matrix, rcond):
    """Moore-Penrose pseudo-inverse of a symmetric matrix, by eigendecomposition.

    Eigenvalues with `|lambda| <= rcond * max|lambda|` are treated as zero, so
    rank-deficient and ill-conditioned systems give finite, minimum-norm
    answers. `tf.linalg.eigh` compiles under XLA (`jit_compile=True`), where
    the SVD behind `tf.linalg.pinv` is not needed. A matrix with a NaN or inf
    entry gives an all-NaN result: it never reaches `eigh`, whose CPU kernel
    would raise "Self-adjoint eigen decomposition was not successful".
    """
    finite = tf.reduce_all(tf.math.is_finite(matrix))
    matrix = tf.where(finite, matrix, tf.zeros_like(matrix))
    values, vectors = tf.linalg.eigh(matrix)
    limit = rcond * tf.reduce_max(tf.abs(values))
    keep = tf.abs(values) > limit
    safe = tf.where(keep, values, tf.ones_like(values))
    inverse = tf.where(keep, 1.0 / safe, tf.zeros_like(values))
    pinv = tf.matmul(vectors * inverse[None, :], vectors, transpose_b=True)
    return tf.where(finite, pinv, tf.fill(tf.shape(pinv), _nan(pinv.dtype)))


def default_rcond(grads, num_tasks):
    """Relative eigenvalue cut-off: 10 * T * machine epsilon of the input."""
    eps = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1.2e-7}.get(
        grads.dtype.name, 2.3e-16
    )
    return 10.0 * max(int(num_tasks), 1) * eps


def task_mask(mask, num_tasks):
    """`mask` as a float64 vector (T,), all ones when None."""
    if mask is None:
        return tf.ones([num_tasks], "float64")
    return tf.cast(tf.cast(mask, "bool"), "float64")


def num_rows(tensor):
    """The number of rows: a Python int when static, else a scalar tensor.

    A static count keeps `tf.one_hot` depths and loop-variable shapes static,
    which `tf.while_loop` needs when T = 1 (a (1,) shape broadcast against an
    unknown depth would become (None,)).
    """
    return tensor.shape[0] if tensor.shape[0] is not None else tf.shape(tensor)[0]


def included_rows(grads, mask=None):
    """The rows of the tasks in `mask`, made safe for the Gramian.

    Returns `(clean, wanted, poisoned)`: `clean` is `grads` with the rows of
    the excluded tasks, and of the included tasks holding a NaN or inf, set
    to 0 by `tf.where` (an excluded row's NaN never meets a multiplication by
    0, so it cannot influence anything); `wanted` is the float64 mask (T,);
    `poisoned` is a bool scalar, true when an included row is not finite.
    The ops return all-NaN weights then (see `poison`), so that a caller's
    non-finite check sees it; they never raise.
    """
    wanted = task_mask(mask, tf.shape(grads)[0])
    finite = tf.reduce_all(tf.math.is_finite(grads), axis=1)
    keep = tf.logical_and(wanted > 0, finite)
    clean = tf.where(keep[:, None], grads, tf.zeros_like(grads))
    poisoned = tf.reduce_any(tf.logical_and(wanted > 0, tf.logical_not(finite)))
    return clean, wanted, poisoned


# Squared row norms in this range take `included_gramian`'s one-product
# path: every partial sum of a float32 product is then bounded by 1e30
# (Cauchy-Schwarz), far from overflow, and what underflows is below
# 1e-18 of the row's own squared norm even for 1e8 entries.
_DIRECT_RANGE = (1e-20, 1e30)


def included_gramian(grads, mask=None):
    """`(cosines, norms, wanted, poisoned)` of the rows included by `mask`.

    The same values as `normalized_gramian(included_rows(grads, mask)[0])`
    (with `wanted` and `poisoned` of `included_rows`), in one pass over
    `grads` when it can: the product `grads grads^T` is taken directly, and
    when every included row's squared norm is finite and inside
    `_DIRECT_RANGE` the cosines and norms come from it (excluded rows only
    touch their own row and column of the product, which are dropped: a NaN
    there is never read). Otherwise (a NaN or inf row, a row so large or so
    small that float products could overflow or underflow, a zero row, a
    16-bit input) it falls back to the rescaling path of `normalized_gramian`
    on `included_rows`. The fallback is exact in the same sense; the direct
    path saves the passes that check, mask, measure and rescale every row.

    Args:
        grads: float tensor (T, d).
        mask: optional (T,) of the tasks to include. Defaults to all.
    """
    grads = as_gradient_matrix(grads)

    def rescaled():
        clean, _, poisoned = included_rows(grads, mask)
        cosines, norms = normalized_gramian(clean)
        return cosines, norms, poisoned

    wanted = task_mask(mask, tf.shape(grads)[0])
    if grads.dtype not in (tf.float32, tf.float64):  # 16-bit products overflow early
        cosines, norms, poisoned = rescaled()
        return cosines, norms, wanted, poisoned
    included = wanted > 0
    product = tf.matmul(grads, grads, transpose_b=True)
    squares = tf.linalg.diag_part(product)
    low, high = _DIRECT_RANGE
    in_range = tf.logical_and(squares >= low, squares <= high)  # False for NaN
    direct = tf.reduce_all(tf.logical_or(tf.logical_not(included), in_range))

    def from_product():
        pair = tf.logical_and(included[:, None], included[None, :])
        inner = tf.where(pair, tf.cast(product, "float64"), tf.zeros_like(product, "float64"))
        unit = tf.sqrt(tf.maximum(tf.linalg.diag_part(inner), 0.0))
        cosines = tf.math.divide_no_nan(inner, unit[:, None] * unit[None, :])
        cosines = 0.5 * (cosines + tf.transpose(cosines))
        return cosines, unit, tf.constant(False)

    cosines, norms, poisoned = tf.cond(direct, from_product, rescaled)
    return cosines, norms, wanted, poisoned


def poison(values, poisoned):
    """`values` replaced by NaN when `poisoned`."""
    return tf.where(poisoned, tf.fill(tf.shape(values), _nan(values.dtype)), values)


def weigh_rows(grads, mask, solve):
    """The frame of the Gramian-based weightings: checks, masking, NaN rows.

    `solve(cosines, norms, wanted)` gets the float64 cosine matrix and row
    norms of the included rows (see `normalized_gramian`, `included_rows`)
    and the float64 task mask, and returns float64 weights (T,). With no
    task the weights are empty; with a NaN or inf in an included row they
    are all NaN; otherwise they come back in the input's dtype.
    """
    grads = as_gradient_matrix(grads)
    if grads.shape[0] == 0:  # no task: nothing to combine
        return tf.zeros([0], grads.dtype)
    cosines, norms, wanted, poisoned = included_gramian(grads, mask)
    weights = solve(cosines, norms, wanted)
    return tf.cast(poison(weights, poisoned), grads.dtype)


def combine(grads, weights, mask=None):
    """`weights @ grads` (d,) without reading the rows excluded by `mask`."""
    if mask is not None:
        keep = task_mask(mask, tf.shape(grads)[0]) > 0
        grads = tf.where(keep[:, None], grads, tf.zeros_like(grads))
    return tf.linalg.matvec(grads, weights, transpose_a=True)


def _nan(dtype):
    return tf.constant(float("nan"), dtype)
