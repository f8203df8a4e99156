"""Random loss weighting, RLW (Lin et al., TMLR 2022), the pure math."""

import tensorflow as tf

from keras_mtl.ops.pcgrad import _seed_pair

DISTRIBUTIONS = ("normal", "uniform", "dirichlet", "bernoulli", "constrained_bernoulli")


def rlw_weights(num_tasks, seed=None, present=None, distribution="normal"):
    """Random task weights drawn afresh each step, summing to 1 over the present tasks.

    The samplings of the paper (section 3):

    - `"normal"` (the paper's recommended variant): `softmax(z)`,
      `z ~ N(0, I)`;
    - `"uniform"`: `softmax(z)`, `z ~ U(0, 1)`;
    - `"dirichlet"`: `w ~ Dir(1, ..., 1)`, uniform on the simplex (drawn as
      normalised `Exp(1)` variables);
    - `"bernoulli"`: every task is kept with probability 1/2 and the kept
      tasks share the weight equally; the all-dropped draw is excluded (the
      number kept is drawn from Binomial(T, 1/2) conditioned on >= 1, then a
      uniformly random subset of that size);
    - `"constrained_bernoulli"`: one task, uniformly at random, gets weight 1.

    Absent tasks get weight 0 and never enter the draw (0 everywhere when no
    task is present).

    Args:
        num_tasks: T.
        seed: None (global TF generator), an int, or a shape-(2,) int tensor
            such as `(seed, step)` for a deterministic draw.
        present: optional float (T,) of 1 for the tasks in the batch.
        distribution: one of `"normal"` (default), `"uniform"`,
            `"dirichlet"`, `"bernoulli"`, `"constrained_bernoulli"`.

    Returns:
        float32 tensor (T,).

    Example:

    >>> w = keras_mtl.ops.rlw_weights(3, seed=(0, 7))
    >>> float(tf.reduce_sum(w))
    1.0

    Reference:
        Lin, Ye, Xu, Shi, Zhang. "Reasonable Effectiveness of Random
        Weighting: A Litmus Test for Multi-Task Learning". TMLR 2022.
    """
    check_distribution(distribution)
    shape = [num_tasks]
    if present is None:
        present = tf.ones(shape)
    present = tf.cast(present, "float32")
    keep = present > 0
    if distribution in ("normal", "uniform"):
        z = _draw(distribution, shape, seed)
        z = tf.where(keep, z, tf.fill(shape, float("-inf")))
        weights = tf.nn.softmax(z)
    elif distribution == "dirichlet":
        u = _draw("uniform", shape, seed)
        weights = _normalised(-tf.math.log1p(-u), keep)
    else:
        u = _draw("uniform", [num_tasks + 1], seed)
        scores = tf.where(keep, u[:num_tasks], tf.fill(shape, 2.0))
        rank = tf.argsort(tf.argsort(scores))
        if distribution == "constrained_bernoulli":
            count = tf.constant(1)
        else:
            count = _kept_count(tf.reduce_sum(present), num_tasks, u[num_tasks])
        weights = _normalised(tf.cast(rank < count, "float32"), keep)
    weights = tf.where(keep, weights, 0.0)
    return tf.where(tf.math.is_finite(weights), weights, 0.0)


def check_distribution(distribution):
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            "Invalid value received for argument `distribution`. Expected one "
            f"of {DISTRIBUTIONS}. Received: distribution={distribution!r}"
        )
    return distribution


def _draw(distribution, shape, seed):
    if seed is None:
        draw = tf.random.normal if distribution == "normal" else tf.random.uniform
        return draw(shape)
    draw = (
        tf.random.stateless_normal
        if distribution == "normal"
        else tf.random.stateless_uniform
    )
    return draw(shape, seed=_seed_pair(seed))


def _normalised(values, keep):
    values = tf.where(keep, values, 0.0)
    return tf.math.divide_no_nan(values, tf.reduce_sum(values))


def _kept_count(present_count, num_tasks, u):
    """k ~ Binomial(n, 1/2) conditioned on k >= 1, by inverse CDF of `u`."""
    n = present_count
    k = tf.range(1, num_tasks + 1, dtype="float32")
    log_binom = tf.math.lgamma(n + 1.0) - tf.math.lgamma(k + 1.0) - tf.math.lgamma(
        tf.maximum(n - k, 0.0) + 1.0
    )
    log_binom = tf.where(k <= n, log_binom, float("-inf"))
    cdf = tf.cumsum(tf.nn.softmax(log_binom))
    return 1 + tf.reduce_sum(tf.cast(cdf < u, "int32"))
