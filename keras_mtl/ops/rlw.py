"""Random loss weighting, RLW (Lin et al., TMLR 2022), the pure math."""

import tensorflow as tf

from keras_mtl.ops.pcgrad import _seed_pair

DISTRIBUTIONS = ("normal", "uniform")


def rlw_weights(num_tasks, seed=None, present=None, distribution="normal"):
    """Random task weights `softmax(z)` with `z` drawn afresh each step.

    The default draws `z ~ N(0, I)` (the paper's recommended variant); with
    `distribution="uniform"`, `z ~ U(0, 1)`. Absent tasks get weight 0 and the
    softmax runs over the present ones, so the weights sum to 1 (0 when no
    task is present).

    Args:
        num_tasks: T.
        seed: None (global TF generator), an int, or a shape-(2,) int tensor
            such as `(seed, step)` for a deterministic draw.
        present: optional float (T,) of 1 for the tasks in the batch.
        distribution: `"normal"` or `"uniform"`.

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
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            "Invalid value received for argument `distribution`. Expected one "
            f"of {DISTRIBUTIONS}. Received: distribution={distribution!r}"
        )
    shape = [num_tasks]
    if seed is None:
        draw = tf.random.normal if distribution == "normal" else tf.random.uniform
        z = draw(shape)
    else:
        draw = (
            tf.random.stateless_normal
            if distribution == "normal"
            else tf.random.stateless_uniform
        )
        z = draw(shape, seed=_seed_pair(seed))
    if present is None:
        present = tf.ones(shape)
    present = tf.cast(present, "float32")
    z = tf.where(present > 0, z, tf.fill(shape, float("-inf")))
    weights = tf.nn.softmax(z)
    weights = tf.where(present > 0, weights, 0.0)
    return tf.where(tf.math.is_finite(weights), weights, 0.0)
