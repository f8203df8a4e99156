"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019), the pure math."""

import tensorflow as tf


def dwa_weights(previous_losses, earlier_losses, temperature=2.0):
    """DWA task weights from the two previous (epoch-averaged) losses.

    `r_t = L_t(k-1) / L_t(k-2)` (the task's relative descending rate) and
    `w_t = T exp(r_t / temperature) / sum_i exp(r_i / temperature)`, so the
    weights sum to T and a task whose loss stalls gets more weight. A task
    with a non-positive earlier loss counts as ratio 1.

    Args:
        previous_losses: float (T,), the losses L(k-1).
        earlier_losses: float (T,), the losses L(k-2).
        temperature: softness of the softmax; the paper uses 2. Larger is
            closer to equal weights.

    Returns:
        A tensor (T,) of the input dtype, positive, summing to T.

    Example:

    >>> keras_mtl.ops.dwa_weights([1.0, 2.0], [2.0, 2.0]).numpy().round(4)
    array([0.8756, 1.1244], dtype=float32)

    Reference:
        Liu, Johns, Davison. "End-to-End Multi-Task Learning with Attention".
        CVPR 2019, eq. 7.
    """
    if not temperature > 0:
        raise ValueError(
            "Invalid value received for argument `temperature`. Expected a "
            f"number > 0. Received: temperature={temperature}"
        )
    previous = tf.convert_to_tensor(previous_losses)
    earlier = tf.cast(earlier_losses, previous.dtype)
    ratio = tf.where(earlier > 0, previous / tf.where(earlier > 0, earlier, 1.0), 1.0)
    num_tasks = tf.cast(tf.size(ratio), previous.dtype)
    return num_tasks * tf.nn.softmax(ratio / temperature)
